#!/usr/bin/env bash
# Builds nodelet's test and demo images from Debian's busybox-static, with no download, as OCI
# image layouts: OUT/busybox (docker.io/library/busybox:latest) and OUT/kubia
# (docker.io/luksa/kubia:latest, an HTTP server on 8080 answering "You've hit <hostname>").
# Output is reproducible: fixed owners and mtimes, gzip without names or times.
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "build.sh: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# layer DIR NAME: tars DIR into a gzip layer; sets layer_digest, layer_size, layer_diff_id.
layer() {
  local dir=$1 name=$2
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$dir" -cf "$work/$name.tar" .
  layer_diff_id=$(sha "$work/$name.tar")
  gzip -n -c "$work/$name.tar" > "$work/$name.tar.gz"
  layer_digest=$(sha "$work/$name.tar.gz")
  layer_size=$(size "$work/$name.tar.gz")
}

# blob LAYOUT FILE: stores FILE as a blob of LAYOUT; sets blob_digest, blob_size.
blob() {
  blob_digest=$(sha "$2")
  blob_size=$(size "$2")
  mkdir -p "$1/blobs/sha256"
  cp "$2" "$1/blobs/sha256/$blob_digest"
}

base=$work/base
mkdir -p "$base"/{bin,etc,tmp,root,proc,sys,dev,var/www}
chmod 1777 "$base/tmp"
cp "$busybox" "$base/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$base/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$base/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$base/etc/group"
layer "$base" base
base_digest=$layer_digest base_size=$layer_size base_diff_id=$layer_diff_id

app=$work/app
mkdir -p "$app/www/cgi-bin"
cat > "$app/www/cgi-bin/index.cgi" <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "You've hit $(hostname)"
CGI
chmod 755 "$app/www/cgi-bin/index.cgi"
layer "$app" app
app_digest=$layer_digest app_size=$layer_size app_diff_id=$layer_diff_id

# image NAME REF CMD_JSON LAYERS...: writes OUT/NAME as an OCI layout (LAYERS are "base" / "app").
image() {
  local name=$1 ref=$2 cmd=$3; shift 3
  local layout=$out/$name layers="" diff_ids="" l
  rm -rf "$layout"; mkdir -p "$layout"
  for l in "$@"; do
    local d=${l}_digest s=${l}_size i=${l}_diff_id
    blob "$layout" "$work/$l.tar.gz"
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:${!d}\",\"size\":${!s}}"
    diff_ids+="${diff_ids:+,}\"sha256:${!i}\""
  done
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$arch" "$cmd" "$diff_ids" > "$work/config.json"
  blob "$layout" "$work/config.json"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$blob_digest" "$blob_size" "$layers" > "$work/manifest.json"
  blob "$layout" "$work/manifest.json"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$blob_digest" "$blob_size" "$ref" "${ref##*:}" > "$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
}

mkdir -p "$out"
image busybox docker.io/library/busybox:latest '["sh"]' base
image kubia docker.io/luksa/kubia:latest '["httpd","-f","-p","8080","-h","/www"]' base app
echo "built $out/busybox $out/kubia"
