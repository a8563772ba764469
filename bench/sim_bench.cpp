// Simulator speed: simulated instructions and cycles per wall second, single thread, timing only.
// Targets (issue 2): the 6144^3 fp16 GEMM on ascend910b2 in under 1 s wall; >= 5 M instructions/s.
// Run: ./build/bench/sim_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <string>

#include "app/session.hpp"

namespace {

using namespace npusim;

std::string config(const char* name) { return std::string(NPUSIM_SOURCE_DIR) + "/configs/workloads/" + name; }

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// simulate() alone on a program lowered once.
void BM_Simulate(benchmark::State& state, const char* file) {
  app::LoadedRun run = app::load_run(config(file));
  sim::Program prog = run.kernel->lower(run.hw);
  double instructions = 0, cycles = 0;
  for (auto _ : state) {
    sim::SimResult r = sim::simulate(run.hw, prog);
    instructions += static_cast<double>(r.instructions);
    cycles += r.cycles;
    benchmark::DoNotOptimize(r.cycles);
  }
  state.counters["sim_instr_per_s"] = benchmark::Counter(instructions, benchmark::Counter::kIsRate);
  state.counters["sim_cycles_per_s"] = benchmark::Counter(cycles, benchmark::Counter::kIsRate);
  state.counters["instructions"] = static_cast<double>(prog.instruction_count());
  state.counters["peak_rss_MiB"] = peak_rss_mib();
}

// What `npusim run` does: parse, lower, simulate, summarise.
void BM_EndToEnd(benchmark::State& state, const char* file) {
  for (auto _ : state) {
    app::LoadedRun run = app::load_run(config(file));
    app::RunOutput out = app::execute(run);
    benchmark::DoNotOptimize(out.kernel.cycles);
  }
  state.counters["peak_rss_MiB"] = peak_rss_mib();
}

BENCHMARK_CAPTURE(BM_Simulate, gemm6144_910b2, "gemm_6144_cube.yaml")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EndToEnd, gemm6144_910b2, "gemm_6144_cube.yaml")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, gemv_like_910b2, "gemv_like.yaml")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, add8192_910b2, "add_8192.yaml")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, gemm1024x576x6144_910b3, "gemm_1024x576x6144.yaml")->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
