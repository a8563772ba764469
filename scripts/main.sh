#!/usr/bin/env bash
# The main job: set up, then simulate the default run set and print its utilization table.
# Reports land in out/default/ (one JSON per config) with a Perfetto trace of the first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p out/default
./build/npusim run configs/workloads/*.yaml --out out/default --trace out/default/trace.json
# The same MoE layers with every op its own kernel, to set against the default fusion above.
mkdir -p out/default/fusion_none
./build/npusim run configs/workloads/v4_*_moe_*.yaml --set fusion=none --out out/default/fusion_none
echo "reports: out/default/*.json; trace: out/default/trace.json (open in ui.perfetto.dev)"
