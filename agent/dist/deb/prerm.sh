#!/bin/sh
# Before removal (not upgrade): stop the agent, then drain the node (every pod stopped with its
# grace period, the pod network, cgroups and pod state removed), so nothing runs on without it.
set -e
if [ "$1" = remove ]; then
  if [ -d /run/systemd/system ]; then
    systemctl disable --now nodelet.service >/dev/null 2>&1 || true
  fi
  /usr/bin/nodelet --config /etc/nodelet/config.yaml reset || true
fi
exit 0
