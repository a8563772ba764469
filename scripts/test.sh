#!/usr/bin/env bash
# Set up, build and run the whole test suite (all CTest labels: unit, calibration, model, cli, bench).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
