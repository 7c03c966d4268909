#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, one after another, on the seeds
# kept here and the corpus grown by earlier runs (corpus/, not committed). Crashes land in
# artifacts/<target>/ and stop the run. Stable Rust: cargo-fuzz without a sanitizer (-s none).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir .)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "== $t: ${seconds}s"
  cargo fuzz run -s none --fuzz-dir . "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 \
    | grep -E '^(#[0-9]+.*DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|.*panicked|SUMMARY|artifact_prefix|Test unit written)' || true
  [ -z "$(ls -A "artifacts/$t")" ] || { echo "$t: crash in artifacts/$t"; exit 1; }
  echo "$t: corpus $(ls "corpus/$t" | wc -l) inputs"
done
