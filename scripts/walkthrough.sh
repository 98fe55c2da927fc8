#!/usr/bin/env bash
# Regenerates the README walkthrough: checks a deliberately broken optimizer from the mutant
# catalogue (maximize ignored), keeps its Markdown summary in docs/walkthrough.md and a
# screenshot of its HTML report (headless Chromium, Debian's `chromium` package) in
# docs/report.png. Run from the repository root: `make walkthrough`.
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
.venv/bin/conformance run --optimizer conformance.mutants:MaximizeIgnored --profile dev \
    --seed 1 --dtype float64 --report-dir "$out" || status=$?
test "$status" -eq 1  # the broken optimizer must be caught
run=$(ls -d "$out"/*/)
cp "$run/report.md" docs/walkthrough.md
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,1100 \
    --screenshot="$PWD/docs/report.png" "file://$run/report.html" 2>/dev/null
echo "updated docs/walkthrough.md and docs/report.png"
