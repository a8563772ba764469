#!/usr/bin/env bash
# The main job: set up (packages, build), then the default sweep (configs/sweeps/default.yaml: the
# MoE and attention blocks of the model presets, decode and prefill, on the 910B2 and the 950PR)
# into out/default/: report.h5, report.html, report.json, report.csv, one folder per point under
# points/, and the summary table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# A fresh run each time: finished points are reused only on purpose (--resume), since a rebuilt
# npusim may time them differently.
rm -rf out/default/points out/default/sweep.yaml
./build/npusim sweep configs/sweeps/default.yaml --out out/default --jobs "$(nproc)"
# A Perfetto trace of one block, to look inside a point (open it in ui.perfetto.dev).
./build/npusim run configs/workloads/v4_flash_moe_decode.yaml --trace out/default/trace.json --quiet
echo "reports: out/default/report.{h5,html,json,csv}; points: out/default/points/<id>/; trace: out/default/trace.json"
