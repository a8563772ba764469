#!/usr/bin/env bash
# Set up, build and run the whole test suite (all CTest labels: unit, calibration, model, cli, bench),
# then the sanitizer stages (scripts/sanitize.sh): unit, validation and golden tests under
# AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/), the code that runs concurrently
# (tuner evaluation, sweeps with --jobs 2, parallel graph simulation and references) under
# ThreadSanitizer (build-tsan/). Extra arguments go to the first ctest run only.
#
# Environment:
#   NPUSIM_SANITIZERS=0   skip the sanitizer stages (a quick local run; CI runs them)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
if [[ ${NPUSIM_SANITIZERS:-1} != 0 ]]; then
  bash scripts/sanitize.sh asan
  bash scripts/sanitize.sh tsan
fi
