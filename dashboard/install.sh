#!/usr/bin/env bash
# Installs the dashboard's terminal emulator (xterm.js and its fit addon) from the npm registry,
# at the versions package-lock.json pins, and puts the three files the page loads in $1
# (default: target/dashboard, where a build's agent looks for them). Nothing of npm's is
# committed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/../target/dashboard}")
if ! command -v npm >/dev/null; then
  echo "installing npm (Debian's package) for the dashboard's terminal"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
fi
cd "$here"
npm ci --no-audit --no-fund --loglevel=error
install -d "$out"
install -m 0644 node_modules/@xterm/xterm/lib/xterm.js node_modules/@xterm/xterm/css/xterm.css \
  node_modules/@xterm/addon-fit/lib/addon-fit.js "$out/"
