// Simulator speed: simulated instructions and cycles per wall second, single thread, timing only.
// Targets (issue 2): the 6144^3 fp16 GEMM on ascend910b2 in under 1 s wall; >= 5 M instructions/s.
// Run: ./build/bench/sim_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <cstdio>
#include <string>
#include <vector>

#include "app/session.hpp"
#include "kernels/reference/reference.hpp"
#include "sim/functional.hpp"

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

// Functional GEMM against the OpenBLAS reference (issue 3: within 3x of the reference's time).
std::string gemm2048_config() {
  static const std::string file = [] {
    std::string f = "/tmp/npusim_bench_gemm2048.yaml";
    FILE* out = std::fopen(f.c_str(), "w");
    std::fputs("hardware: ascend910b2\nworkload: {op: gemm, m: 2048, n: 2048, k: 2048, dtype: fp16}\n", out);
    std::fclose(out);
    return f;
  }();
  return file;
}

// What a functional run adds to a timing run: operands in the program, the time-ordered replay
// on real bytes (MMADs through OpenBLAS sgemm, one thread).
void BM_FunctionalGemm2048(benchmark::State& state) {
  app::LoadedRun run = app::load_run(gemm2048_config());
  for (auto _ : state) {
    sim::Program prog = run.kernel->lower(run.hw, true);
    sim::SimOptions opt;
    opt.record_work = true;
    sim::SimResult r = sim::simulate(run.hw, prog, opt);
    sim::FunctionalMemory mem(run.hw, prog);
    sim::run_functional(prog, r, mem);
    benchmark::DoNotOptimize(mem.gm().data());
  }
  state.counters["peak_rss_MiB"] = peak_rss_mib();
}

// The CPU reference of the same GEMM: OpenBLAS dgemm (fp64 golden), as validation runs it.
void BM_ReferenceGemm2048(benchmark::State& state) {
  const int64_t n = 2048;
  std::vector<double> a(n * n), b(n * n), c(n * n);
  for (int64_t i = 0; i < n * n; ++i) a[i] = (i % 7) * 0.25 - 0.75, b[i] = (i % 5) * 0.5 - 1.0;
  for (auto _ : state) {
    ref::gemm(n, n, n, a.data(), b.data(), c.data());
    benchmark::DoNotOptimize(c.data());
  }
}

// The whole `npusim validate`: functional run, inputs, both references, the checks.
void BM_ValidateGemm2048(benchmark::State& state) {
  app::LoadedRun run = app::load_run(gemm2048_config());
  for (auto _ : state) {
    app::RunOutput out = app::execute_functional(run);
    benchmark::DoNotOptimize(out.kernel.validation->passed);
  }
}

BENCHMARK(BM_FunctionalGemm2048)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReferenceGemm2048)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ValidateGemm2048)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, gemm6144_910b2, "gemm_6144_cube.yaml")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EndToEnd, gemm6144_910b2, "gemm_6144_cube.yaml")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, gemv_like_910b2, "gemv_like.yaml")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, add8192_910b2, "add_8192.yaml")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Simulate, gemm1024x576x6144_910b3, "gemm_1024x576x6144.yaml")->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
