#!/usr/bin/env bash
# Builds nodelet's test and demo images from Debian's busybox-static, with no download, as OCI
# image layouts: OUT/busybox (docker.io/library/busybox:latest), OUT/kubia
# (docker.io/luksa/kubia:latest, an HTTP server on 8080 answering "You've hit <hostname>") and
# OUT/note (busybox and a layer of its own, which no test node has until it pulls it) and
# OUT/multiarch (an image index: busybox for this machine's platform and for another) and
# OUT/hostile (busybox and a layer that tries to write outside itself, for the unpack tests).
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
# Logs like the tutorial's luksa/kubia: a line at start (the image's command) and one per request
# (the CGI's stderr is httpd's, which is the container's log).
cat > "$app/www/cgi-bin/index.cgi" <<'CGI'
#!/bin/sh
echo "Received request from $REMOTE_ADDR" >&2
printf 'Content-Type: text/plain\r\n\r\n'
echo "You've hit $(hostname)"
CGI
chmod 755 "$app/www/cgi-bin/index.cgi"
layer "$app" app
app_digest=$layer_digest app_size=$layer_size app_diff_id=$layer_diff_id

# A layer no node has until it pulls it (nodes import busybox and kubia at creation).
note=$work/note
mkdir -p "$note/etc"
echo "nodelet test layer" > "$note/etc/note"
layer "$note" note
note_digest=$layer_digest note_size=$layer_size note_diff_id=$layer_diff_id

# A hostile layer, as an attacker writes one by hand: a symlink to a host directory, then a
# whiteout "inside" it (two tars concatenated: no file system holds both). Unpacked naively,
# the whiteout's device node lands in the host directory.
hostile=$work/hostile
mkdir -p "$hostile/link" "$hostile/through/evil"
ln -s /tmp/nodelet-hostile-target "$hostile/link/evil"
touch "$hostile/through/evil/.wh.pwned"
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$hostile/link" -cf "$work/hostile.tar" evil
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$hostile/through" -cf "$work/through.tar" evil/.wh.pwned
tar --concatenate -f "$work/hostile.tar" "$work/through.tar"
hostile_diff_id=$(sha "$work/hostile.tar")
gzip -n -c "$work/hostile.tar" > "$work/hostile.tar.gz"
hostile_digest=$(sha "$work/hostile.tar.gz") hostile_size=$(size "$work/hostile.tar.gz")

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

# platform_manifest LAYOUT ARCH: a busybox image for linux/ARCH whose $PLATFORM names ARCH;
# sets blob_digest, blob_size to its manifest's.
platform_manifest() {
  local layout=$1 a=$2
  blob "$layout" "$work/base.tar.gz"
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","PLATFORM=linux/%s"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$a" "$a" "$base_diff_id" > "$work/config-$a.json"
  blob "$layout" "$work/config-$a.json"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$blob_digest" "$blob_size" "$base_digest" "$base_size" > "$work/manifest-$a.json"
  blob "$layout" "$work/manifest-$a.json"
}

# multiarch: an image index for this node's platform and another, the other listed first.
multiarch() {
  local layout=$out/multiarch other=arm64 entries=""
  [ "$arch" = arm64 ] && other=amd64
  rm -rf "$layout"; mkdir -p "$layout"
  for a in "$other" "$arch"; do
    platform_manifest "$layout" "$a"
    entries+="${entries:+,}{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$blob_digest\",\"size\":$blob_size,\"platform\":{\"architecture\":\"$a\",\"os\":\"linux\"}}"
  done
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$entries" > "$work/index.json"
  blob "$layout" "$work/index.json"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
    "$blob_digest" "$blob_size" > "$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
}

mkdir -p "$out"
image busybox docker.io/library/busybox:latest '["sh"]' base
image kubia docker.io/luksa/kubia:latest '["sh","-c","echo Kubia server starting...; exec httpd -f -p 8080 -h /www"]' base app
image note docker.io/library/note:latest '["cat","/etc/note"]' base note
multiarch
image hostile docker.io/library/hostile:latest '["sh"]' base hostile
built="$out/busybox $out/kubia $out/note $out/multiarch $out/hostile"

# grpc-health (with GRPC_HEALTH=path to the tests' grpc-health binary): busybox and the gRPC
# health server with the shared libraries it links, for the gRPC probe tests.
if [ -n "${GRPC_HEALTH:-}" ]; then
  grpc=$work/grpc
  mkdir -p "$grpc/bin"
  cp "$GRPC_HEALTH" "$grpc/bin/grpc-health"
  for lib in $(ldd "$GRPC_HEALTH" | grep -o '/[^ ]*'); do
    mkdir -p "$grpc$(dirname "$lib")"
    cp -L "$lib" "$grpc$lib"
  done
  layer "$grpc" grpc
  grpc_digest=$layer_digest grpc_size=$layer_size grpc_diff_id=$layer_diff_id
  image grpc-health docker.io/library/grpc-health:latest '["grpc-health","9090"]' base grpc
  built+=" $out/grpc-health"
fi
echo "built $built"
