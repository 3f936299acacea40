#!/usr/bin/env bash
# Renders a sweep's report from the store and takes a screenshot of its index.html with headless
# Chromium (Debian's `chromium` package: `apt-get install -y chromium`), to look at what a reader
# sees. Also screenshots an already written report directory (e.g. a compare report).
#
#   scripts/screenshot-report.sh [--state-dir DIR] [--reports DIR] [--height PX] SWEEP
#   scripts/screenshot-report.sh [--height PX] REPORT_DIR
#
# SWEEP is a sweep file or a sweep's name in the store; the report goes to <reports>/<sweep>/
# (reports/ by default) and the screenshot to <report dir>/screenshot.png.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ETAGRID_ROOT"

state_dir=".etagrid"
reports="reports"
height=3200
while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) state_dir="$2"; shift 2 ;;
    --reports) reports="$2"; shift 2 ;;
    --height) height="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [ $# -ne 1 ]; then
  echo "usage: $0 [--state-dir DIR] [--reports DIR] [--height PX] SWEEP|REPORT_DIR" >&2
  exit 2
fi

chromium="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$chromium" ]; then
  echo "error: chromium is not installed: run \`apt-get install -y chromium\` (Debian) first" >&2
  exit 1
fi

if [ -f "$1/index.html" ]; then
  dir="$1"
else
  etagrid="./target/release/etagrid"
  [ -x "$etagrid" ] || { echo "error: $etagrid is missing: cargo build --release --bins -p etagrid -p etagrid-torch" >&2; exit 1; }
  name="$1"
  if [ -f "$1" ]; then
    name="$("$etagrid" plan "$1" | sed -n '1s/^sweep \([^:]*\):.*/\1/p')"
  fi
  dir="$reports/$name"
  "$etagrid" --state-dir "$state_dir" report "$1" --out "$dir"
fi

index="$(cd "$dir" && pwd)/index.html"
shot="$(cd "$dir" && pwd)/screenshot.png"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
# No network: the page is self-contained; these flags keep Chromium from phoning home too.
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --screenshot="$shot" \
  --window-size="1300,$height" "file://$index" 2>/dev/null
[ -s "$shot" ] || { echo "error: chromium wrote no screenshot to $shot" >&2; exit 1; }
echo "screenshot: $shot"
