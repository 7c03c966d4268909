#!/bin/sh
# Purge: the node's state and the credentials nodelet made (the configuration goes with dpkg's
# conffiles). Removal alone keeps them for a later install.
set -e
if [ "$1" = purge ]; then
  rm -rf /var/lib/nodelet /run/nodelet /etc/nodelet/kubeconfig
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
