#!/usr/bin/env bash
# Builds the guest image and caches it: image.sh <cache-dir>. Two stages, each redone only when
# what it is made from changes:
# 1. <cache>/tree: Debian bookworm, minbase, from Debian's mirror (debootstrap; DEBIAN_MIRROR to
#    use another), with systemd, the guest's own kernel (linux-image-amd64) and an initrd holding
#    only what the boot needs (virtio, ext4, 9p).
# 2. <cache>/root.img: that tree plus the provisioning unit (guest/), as an ext4 image made by
#    mkfs.ext4 -d (no loop device, nothing mounted on the host); <cache>/vmlinuz, initrd.img.
set -euo pipefail
cache=$(realpath -m "${1:?cache dir}")
here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=systemd,systemd-sysv,dbus,linux-image-amd64,initramfs-tools,kmod,iproute2,nftables,util-linux,procps,ca-certificates,busybox-static
tree="$cache/tree"
mkdir -p "$cache"

stage1=$(echo "bookworm $packages" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$cache/.tree.sha256" 2>/dev/null)" != "$stage1" ]; then
  rm -rf "$tree"
  echo "vm-test: debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase --include="$packages" bookworm "$tree" "$mirror" \
    >"$cache/debootstrap.log" 2>&1 || { tail -30 "$cache/debootstrap.log"; exit 1; }
  cat > "$tree/etc/initramfs-tools/conf.d/vm-test" <<'CONF'
MODULES=list
COMPRESS=gzip
CONF
  printf '%s\n' virtio_pci virtio_blk virtio_net ext4 9p 9pnet_virtio > "$tree/etc/initramfs-tools/modules"
  chroot "$tree" update-initramfs -u -k all >/dev/null
  rm -f "$tree"/var/cache/apt/archives/*.deb
  echo "$stage1" > "$cache/.tree.sha256"
fi

stage2=$( (echo "$stage1"; cat "$0" "$here"/guest/*) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$cache/.image.sha256" 2>/dev/null)" != "$stage2" ] || [ ! -f "$cache/root.img" ]; then
  install -m 0644 "$here/guest/vm-test.service" "$tree/etc/systemd/system/vm-test.service"
  ln -sf /etc/systemd/system/vm-test.service "$tree/etc/systemd/system/multi-user.target.wants/vm-test.service"
  printf '/dev/vda / ext4 defaults 0 1\nshare /mnt/share 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0\n' > "$tree/etc/fstab"
  mkdir -p "$tree/mnt/share"
  # Root logs in on the serial console without a password: a throwaway guest, no network out.
  chroot "$tree" passwd -d root >/dev/null
  ln -sf /lib/systemd/system/serial-getty@.service "$tree/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
  cp -L "$tree"/boot/vmlinuz-* "$cache/vmlinuz"
  cp -L "$tree"/boot/initrd.img-* "$cache/initrd.img"
  rm -f "$cache/root.img"
  mkfs.ext4 -q -F -L root -d "$tree" "$cache/root.img" 3G
  echo "$stage2" > "$cache/.image.sha256"
  echo "vm-test: guest image $(du -h --apparent-size "$cache/root.img" | cut -f1) (sparse $(du -h "$cache/root.img" | cut -f1)), initrd $(du -h "$cache/initrd.img" | cut -f1)"
fi
