#!/bin/sh
# After install or upgrade: systemd learns the unit; a new install is enabled and started, an
# upgrade restarts only the agent (KillMode=process: pods keep running and are re-adopted).
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ -z "$2" ]; then
    systemctl enable nodelet.service >/dev/null
    systemctl start nodelet.service || true
  else
    systemctl try-restart nodelet.service || true
  fi
fi
exit 0
