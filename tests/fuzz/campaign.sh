#!/usr/bin/env bash
# A fuzzing campaign for one target: tests/fuzz/campaign.sh TARGET SECONDS [BUILD_DIR] [WORK_DIR]
#
# Fuzzes BUILD_DIR/tests/fuzz/TARGET (default build dir: build-fuzz, see README.md) for SECONDS of
# wall time, starting from the committed seed corpus and the inputs of earlier campaigns kept in
# WORK_DIR/TARGET/corpus (default work dir: /tmp/npusim-fuzz). A crash, leak, timeout or
# out-of-memory (2 GiB) stops the run and leaves the input in WORK_DIR/TARGET/artifacts/; add it to
# regressions/TARGET/ (with an `open-` prefix until fixed). The timeout is 25 s of wall time per
# input, as OSS-Fuzz uses: 10 s gave false alarms on a busy 2-core machine (a 17-point sweep that
# validates in 0.7 s took 11 s under ASan beside builds). The last line of WORK_DIR/TARGET/log says
# how it ended; WORK_DIR/stats gets one line per campaign: target, wall and CPU seconds, runs, exit code.
set -euo pipefail
target=${1:?usage: campaign.sh TARGET SECONDS [BUILD_DIR] [WORK_DIR]}
seconds=${2:?usage: campaign.sh TARGET SECONDS [BUILD_DIR] [WORK_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
build=$(realpath "${3:-$here/../../build-fuzz}")
work=${4:-/tmp/npusim-fuzz}/$target
case $target in
  fuzz_report) dict=json.dict; max_len=65536 ;;
  fuzz_set) dict=yaml.dict; max_len=1024 ;;
  *) dict=yaml.dict; max_len=8192 ;;
esac
mkdir -p "$work/corpus" "$work/artifacts"
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$(command -v llvm-symbolizer || true)}
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
       LSAN_OPTIONS=suppressions=$here/lsan.supp TMPDIR=${TMPDIR:-/tmp}
start=$(date +%s)
set +e
"$build/tests/fuzz/$target" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -max_len=$max_len \
  -dict="$here/dict/$dict" -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
  "$work/corpus" "$here/corpus/$target" > "$work/log" 2>&1
rc=$?
set -e
# CPU seconds of the fuzzer (user + system), from the shell's accounting of its children.
times > "$work/times"
cpu=$(tail -n 1 "$work/times" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%.0f", t }')
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/log" | grep -o '[0-9]*$' || echo 0)
echo "$target: $(( $(date +%s) - start )) s wall, $cpu s CPU, $runs runs, exit $rc" | tee -a "$work/../stats"
exit $rc
