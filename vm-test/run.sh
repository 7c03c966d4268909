#!/usr/bin/env bash
# make vm-test: nodelet's .deb installed as a systemd service in QEMU guests (TCG, cgroup v2
# only), each scenario checked inside the guest, its evidence printed here.
#
# Everything it makes is its own and goes at exit: a network namespace holding the guests' bridge
# and taps (QEMU runs in it: -nodefaults -nic none, taps only, no user-mode networking), one
# qcow2 overlay per guest over the cached image, the share, and the QEMU processes (killed by
# pid, and by their parent's death: setpriv --pdeathsig).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
work="$top/target/vm-test"
deb=${1:?the .deb to install}
limit=${VM_TEST_LIMIT:-900}        # seconds for the whole run
started=$(date +%s)
ns="nodelet-vmtest-$$"
run="$work/run-$$"
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

elapsed() { echo $(( $(date +%s) - started )); }

bash "$here/image.sh" "$work"
echo "vm-test: image ready after $(elapsed) s"

mkdir -p "$run/share/bin" "$run/share/images"
install -m 0644 "$here/provision.sh" "$run/share/provision.sh"
cp "$deb" "$run/share/nodelet.deb"
cp -L "$(command -v kubectl)" "$run/share/bin/kubectl"
cp -r "$top/target/test-images/busybox" "$run/share/images/busybox"

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge
ip -n "$ns" link set br0 up

# guest NAME INDEX: boots a guest on tap<INDEX> with its own overlay; its serial console is
# $run/NAME.console.
guest() {
  local name=$1 index=$2
  qemu-img create -q -f qcow2 -b "$work/root.img" -F raw "$run/$name.qcow2"
  ip -n "$ns" tuntap add "tap$index" mode tap
  ip -n "$ns" link set "tap$index" master br0 up
  setpriv --pdeathsig KILL ip netns exec "$ns" qemu-system-x86_64 \
    -nodefaults -nic none -accel tcg -cpu max -smp 2 -m 1536 -display none \
    -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.hostname=$name systemd.unified_cgroup_hierarchy=1 systemd.show_status=0 quiet" \
    -drive "file=$run/$name.qcow2,if=virtio,format=qcow2" \
    -virtfs "local,path=$run/share,mount_tag=share,security_model=none,id=share" \
    -netdev "tap,id=n0,ifname=tap$index,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:0$index" \
    -serial "file:$run/$name.console" </dev/null >"$run/$name.qemu.log" 2>&1 &
  pids+=($!)
}

# wait_guest NAME: until the guest's scenario wrote its exit code; prints its output.
wait_guest() {
  local name=$1
  while [ ! -f "$run/share/$name/rc" ]; do
    if [ "$(elapsed)" -gt "$limit" ]; then
      echo "vm-test: $name did not finish within $limit s; its console:"; tail -50 "$run/$name.console"
      return 1
    fi
    sleep 2
  done
  sed "s/^/$name: /" "$run/share/$name/out"
  return "$(cat "$run/share/$name/rc")"
}

mkdir -p "$run/share/vm1"
install -m 0755 "$here/scenarios/single.sh" "$run/share/vm1/run.sh"
guest vm1 1
echo "vm-test: vm1 booting (TCG)"
status=0
wait_guest vm1 || status=$?
echo "vm-test: done after $(elapsed) s"
exit "$status"
