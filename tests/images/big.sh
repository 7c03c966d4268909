#!/usr/bin/env bash
# Builds a large image as an OCI image layout in OUT: LAYERS gzip layers (default 4) of PAIRS
# pairs of files (default 32), each pair 448 KiB of random bytes (incompressible) and ~450 KB of
# text, as real images mix binaries and text: ~112 MB unpacked, ~77 MB of gzip by default (the
# benchmark image). Not reproducible (random content), which its users do not need.
set -euo pipefail

out=${1:?usage: big.sh OUTDIR [LAYERS] [PAIRS]}
count=${2:-4}
pairs=${3:-32}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
mkdir -p "$out/blobs/sha256"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
store() { local d; d=$(sha "$1"); cp "$1" "$out/blobs/sha256/$d"; echo "$d"; }

layers="" diff_ids=""
for n in $(seq 1 "$count"); do
  dir=$work/layer$n
  mkdir -p "$dir/data$n"
  for i in $(seq 1 "$pairs"); do
    head -c 458752 /dev/urandom > "$dir/data$n/bin$i"
    seq $((i * 100000)) $((i * 100000 + 65000)) > "$dir/data$n/text$i"
  done
  tar --sort=name --owner=0 --group=0 --numeric-owner -C "$dir" -cf "$work/layer$n.tar" .
  diff_ids+="${diff_ids:+,}\"sha256:$(sha "$work/layer$n.tar")\""
  gzip -n -1 "$work/layer$n.tar"
  digest=$(store "$work/layer$n.tar.gz")
  layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$(size "$work/layer$n.tar.gz")}"
done

case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
printf '{"architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$arch" "$diff_ids" > "$work/config.json"
config=$(store "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$config" "$(size "$work/config.json")" "$layers" > "$work/manifest.json"
manifest=$(store "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest" "$(size "$work/manifest.json")" > "$out/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
du -sb "$out/blobs" | cut -f1
