#!/usr/bin/env bash
# The sanitizer stages of CI: npusim built with GCC's sanitizers, each in its own folder, and the
# tests that exercise what that sanitizer checks.
#
#   scripts/sanitize.sh asan [CTEST_ARGS...]
#       AddressSanitizer + UndefinedBehaviorSanitizer (leaks included) in build-asan/; runs the
#       labels unit, validation and golden.
#   scripts/sanitize.sh tsan [CTEST_ARGS...]
#       ThreadSanitizer in build-tsan/; runs the tests whose code runs concurrently: tuner
#       evaluation (candidates simulated in parallel, then the winner's parallel functional replay
#       and reference kernels), sweeps with --jobs 2 (one thread per point in flight), a graph's
#       kernels simulated in parallel, and the row-parallel attention references.
#
# Extra arguments go to ctest (e.g. `-R Tuner` to narrow a stage down). Any sanitizer report ends
# the process that made it with a non-zero status, so it fails its test; the script exits with
# ctest's status. Both the test processes and the npusim binaries they start are instrumented; the
# *SAN_OPTIONS below reach the children through the environment.
#
# Environment:
#   NPUSIM_SANITIZE_JOBS   build and ctest parallelism (default: the core count, at most 2)
#
# The build needs only what scripts/setup.sh installs: GCC's sanitizer runtimes (libasan8,
# libubsan1, libtsan2) come with g++. MPI is left out (NPUSIM_WITH_MPI=OFF): OpenMPI's own
# allocations and progress threads are not ours to check, and the MPI sweep test is not in either
# stage.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/sanitize.sh asan|tsan [CTEST_ARGS...]" >&2
  exit 2
}
(($# >= 1)) || usage
stage=$1
shift
jobs=${NPUSIM_SANITIZE_JOBS:-$(($(nproc) < 2 ? $(nproc) : 2))}
supp_dir=$PWD/tests/sanitizers

case $stage in
  asan)
    build=build-asan
    sanitize_flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
    # Built: npusim and every test executable (listed below from the build system) except these,
    # whose tests carry only other labels (calibration, model, cli).
    targets=(npusim)
    not_needed=(calibration_tests model_tests cli_tests bad_inputs_test)
    # Left out: SparseAttention.RealShapesSimulateQuickly asserts the simulator's wall time (under
    # 10 s, about 0.5 s in a normal build), which under ASan measures the sanitizer (10.4 s on two
    # busy cores). The kernel is still checked: on toy shapes in the other SparseAttention tests,
    # at model scale in AttentionGraphModel.* (the DSA layers' sparse attention).
    select=(-L '^(unit|validation|golden)$' -E '^SparseAttention\.RealShapesSimulateQuickly$')
    export ASAN_OPTIONS="halt_on_error=1:print_stacktrace=1:detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
    ;;
  tsan)
    build=build-tsan
    # tests/sanitizers/tbb: a oneTBB stand-in on std::threads (uninstrumented libtbb.so hides its
    # task handoffs from TSan, which then reports every parallel_for's data; see README.md there).
    sanitize_flags="-fsanitize=thread -I$PWD/tests/sanitizers/tbb"
    targets=(npusim tuner_tests workflow_tests graph_tests attention_tests)
    # The code that runs concurrently, and the tests that run it:
    # - tuner evaluation (tuner/tuner.cpp, candidates in parallel), then the winner's functional
    #   run (sim/functional.cpp's parallel replay, the reference GEMM and row-parallel references):
    #   every test that runs the tuner (Tuner, TuningDb) or `npusim tune` (TuneCommand); the space
    #   tests (TuningSpace, KernelSpaces) only enumerate, on one thread;
    # - sweep jobs (app/sweep_run.cpp, one thread per point in flight): the two SweepCli tests that
    #   pass --jobs 2; the other SweepCli tests run one job, SweepSpec and Regress one thread;
    # - a graph's kernels simulated in parallel on a timing-only run (graphs/plan.cpp), then the
    #   same block run functionally (MoE references): MoeGraph.FromGateTimingRoutesLikeTheFunctionalRun;
    # - the attention references and same-precision emulations, parallel over rows, tokens and
    #   groups (kernels/reference/attention.cpp, kernels/flash_attention.cpp,
    #   kernels/sparse_attention.cpp): one flash and one sparse attention validation.
    select=(-R '^(Tuner|TuningDb|TuneCommand)\.|^SweepCli\.(ReportsAreIdenticalAcrossJobs|InterruptFinishesPointsInFlightAndExits130)$|^MoeGraph\.FromGateTimingRoutesLikeTheFunctionalRun$|^FlashAttention\.GqaWithSinksValidates$|^SparseAttention\.V4LikeTwoSourcesWithSinkValidates$')
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"
    # No OPENBLAS_NUM_THREADS=1 needed: npusim pins OpenBLAS to one thread itself before every
    # GEMM (kernels/reference/gemm.cpp, sim/functional.cpp), so OpenBLAS's own thread pool, whose
    # handoffs TSan could not see, never runs one.
    ;;
  *) usage ;;
esac
# Suppressions (third-party frames only, each with its reason): tests/sanitizers/<sanitizer>.supp.
for s in lsan ubsan tsan; do
  if [[ -f $supp_dir/$s.supp ]]; then
    var=${s^^}_OPTIONS
    export "$var=${!var:+${!var}:}suppressions=$supp_dir/$s.supp"
  fi
done

t0=$(date +%s)
mkdir -p "$build/.cmake/api/v1/query"
touch "$build/.cmake/api/v1/query/codemodel-v2"  # the target list below
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
  -DCMAKE_C_FLAGS="$sanitize_flags -fno-omit-frame-pointer" \
  -DCMAKE_CXX_FLAGS="$sanitize_flags -fno-omit-frame-pointer" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DNPUSIM_WITH_MPI=OFF >/dev/null
# -O1 -g1: line tables for the reports' stacks at a fraction of full debug info's build time; no
# NDEBUG, so assertions (ours and nlohmann::json's) check along with the sanitizers.
if [[ $stage == asan ]]; then
  # Every executable defined under tests/ (found through CMake's file API, so a new test
  # executable needs no edit here), less the not_needed ones.
  mapfile -t -O "${#targets[@]}" targets < <(python3 - "$build" "${not_needed[@]}" <<'PY'
import glob, json, os, sys
reply = os.path.join(sys.argv[1], ".cmake/api/v1/reply")
index = json.load(open(max(glob.glob(os.path.join(reply, "index-*.json")))))
model = json.load(open(os.path.join(reply, index["reply"]["codemodel-v2"]["jsonFile"])))
config = model["configurations"][0]
for target in config["targets"]:
    source = config["directories"][target["directoryIndex"]]["source"]
    info = json.load(open(os.path.join(reply, target["jsonFile"])))
    if info["type"] == "EXECUTABLE" and (source + "/").startswith("tests/") and target["name"] not in sys.argv[2:]:
        print(target["name"])
PY
  )
fi
cmake --build "$build" -j"$jobs" --target "${targets[@]}"
t1=$(date +%s)

status=0
ctest --test-dir "$build" --output-on-failure --no-tests=error -j"$jobs" --timeout 900 "${select[@]}" "$@" || status=$?
t2=$(date +%s)
echo "sanitize $stage: configure+build $((t1 - t0)) s, tests $((t2 - t1)) s"
exit "$status"
