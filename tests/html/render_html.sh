#!/bin/sh
# Renders the sample HTML report in headless Chromium: the page must load from file:// alone
# (no network), paint something substantial, and keep its SVG charts in the DOM.
# Usage: render_html.sh REPORT.html OUT_DIR. Exit 77 (skipped) when Chromium is not installed.
set -eu
page=$1
out=$2
if [ -x /usr/bin/chromium ]; then
  browser=/usr/bin/chromium
elif command -v chromium >/dev/null 2>&1; then
  browser=$(command -v chromium)
else
  echo "chromium not installed: skipping"
  exit 77
fi
[ -f "$page" ] || { echo "no page at $page"; exit 1; }
mkdir -p "$out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
png="$out/report.png"
rm -f "$png"
flags="--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync --user-data-dir=$profile"
# shellcheck disable=SC2086
timeout 60 "$browser" $flags --window-size=1400,2400 --screenshot="$png" "file://$page" >"$out/chromium.log" 2>&1 || {
  echo "chromium failed:"; cat "$out/chromium.log"; exit 1; }
[ -f "$png" ] || { echo "no screenshot written"; cat "$out/chromium.log"; exit 1; }
size=$(wc -c <"$png")
echo "screenshot $png: $size bytes"
[ "$size" -gt 20000 ] || { echo "screenshot too small: the page painted next to nothing"; exit 1; }
# shellcheck disable=SC2086
timeout 60 "$browser" $flags --dump-dom "file://$page" >"$out/dom.html" 2>>"$out/chromium.log" || {
  echo "chromium --dump-dom failed:"; cat "$out/chromium.log"; exit 1; }
svgs=$(grep -o '<svg ' "$out/dom.html" | wc -l)
rooflines=$(grep -o 'class="chart roofline"' "$out/dom.html" | wc -l)
echo "DOM: $svgs svg elements, $rooflines roofline(s)"
[ "$svgs" -ge 3 ] && [ "$rooflines" -ge 1 ] || { echo "charts missing from the rendered DOM"; exit 1; }
