#!/usr/bin/env bash
# Builds nodelet's Debian package from a release build: build.sh <bin-dir> <out-dir>.
# The package holds the binaries (/usr/bin), the systemd unit (/lib/systemd/system), the default
# configuration (/etc/nodelet/config.yaml, a conffile: an operator's edits survive upgrades), the
# dashboard's terminal files (/usr/share/nodelet/dashboard) and the docs. No CNI conflist: the
# agent writes /etc/cni/net.d/10-nodelet.conflist from podCIDR at its first start, so podCIDR in
# config.yaml stays the one place the pod network is set (a shipped copy would override it). Maintainer scripts: postinst.sh,
# prerm.sh, postrm.sh beside this file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
bin=$(realpath "${1:-$top/target/release}")
out=$(realpath -m "${2:-$top/target/deb}")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$top/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage="$out/nodelet_${version}_${arch}"
rm -rf "$stage"
install -d "$stage/DEBIAN"
install -D -m 0755 "$bin/nodelet" "$stage/usr/bin/nodelet"
install -D -m 0755 "$bin/nodelet-shim" "$stage/usr/bin/nodelet-shim"
sed 's|/usr/local/bin/nodelet|/usr/bin/nodelet|; s|file:///usr/local/share/doc/nodelet/README.md|file:///usr/share/doc/nodelet/README.md|' \
  "$top/agent/dist/nodelet.service" > "$stage/nodelet.service.tmp"
install -D -m 0644 "$stage/nodelet.service.tmp" "$stage/lib/systemd/system/nodelet.service"
rm "$stage/nodelet.service.tmp"
install -D -m 0644 "$top/agent/dist/config.yaml" "$stage/etc/nodelet/config.yaml"
install -d "$stage/etc/nodelet/manifests"
install -d "$stage/usr/share/nodelet/dashboard"
install -m 0644 "$top"/target/dashboard/* "$stage/usr/share/nodelet/dashboard/"
install -D -m 0644 "$top/README.md" "$stage/usr/share/doc/nodelet/README.md"
install -m 0644 "$top"/docs/*.md "$stage/usr/share/doc/nodelet/"
for script in postinst prerm postrm; do
  install -m 0755 "$here/$script.sh" "$stage/DEBIAN/$script"
done
printf '/etc/nodelet/config.yaml\n' > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: nodelet
Version: $version
Architecture: $arch
Maintainer: nodelet developers <nodelet@localhost>
Installed-Size: $size
Depends: iproute2, nftables, util-linux
Recommends: kubectl
Section: admin
Priority: optional
Homepage: https://github.com/nodelet/nodelet
Description: kubelet-style node agent running pod sandboxes
 nodelet runs Kubernetes pods on a Linux node: containers sharing one network,
 UTS and IPC namespace, with OCI images, volumes, probes and a flat pod network.
 It takes pods from a manifest directory, an HTTP URL or an API server, and
 serves a Kubernetes-compatible API and dashboard of its own on a lone machine.
CONTROL
dpkg-deb --root-owner-group --build "$stage" "$out/nodelet_${version}_${arch}.deb" >/dev/null
rm -rf "$stage"
echo "$out/nodelet_${version}_${arch}.deb"
