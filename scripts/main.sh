#!/usr/bin/env bash
# The main job: set up, then simulate the default run set and print its utilization table.
# Reports land in out/default/ (one JSON per config) with a Perfetto trace of the first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p out/default
./build/npusim run configs/workloads/*.yaml --out out/default --trace out/default/trace.json
echo "reports: out/default/*.json; trace: out/default/trace.json (open in ui.perfetto.dev)"
