#!/bin/sh
# Runs in each guest at every boot (vm-test.service): the host's script for this guest and boot
# is /mnt/share/<hostname>/run.sh; its output and exit code go beside it and to the console.
set -u
dir=/mnt/share/$(cat /proc/sys/kernel/hostname)
[ -f "$dir/run.sh" ] || { echo "vm-test: no $dir/run.sh" > /dev/console; exit 0; }
sh "$dir/run.sh" > "$dir/out.tmp" 2>&1
echo $? > "$dir/rc.tmp"
mv "$dir/out.tmp" "$dir/out"
mv "$dir/rc.tmp" "$dir/rc"
sed 's/^/vm-test: /' "$dir/out" > /dev/console
