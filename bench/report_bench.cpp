// Sweep report writers at sweep scale: 10^5 points of 10 kernels each, written as HDF5 (target:
// under 2 s) and as CSV, and the HDF5 read back by compare's reader. Run with
// --benchmark_repetitions=3 for the median.
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>

#include "reports/report_reader.hpp"
#include "reports/sweep_report.hpp"

namespace {

using namespace npusim;

constexpr size_t kPoints = 100'000;
constexpr size_t kKernelsPerPoint = 10;

// Names and numbers of realistic length (a graph run's kernels: "group: kernel").
const reports::SweepReport& big_sweep() {
  static const reports::SweepReport s = [] {
    static const char* const kOps[] = {"gemm", "grouped_gemm_swiglu", "grouped_gemm_finalize",
                                       "moe_gating_topk", "moe_init_routing"};
    reports::SweepReport s;
    s.tool_version = "0.1.0";
    s.git_revision = "0123456789abcdef";
    s.command_line = "npusim sweep bench.yaml --out bench";
    s.sweep_yaml = "axes: {workload.tokens: [...], hardware: [ascend910b2, ascend950pr]}\n";
    s.key_columns = {"hardware", "workload.tokens", "tiling.l1"};
    s.points.resize(kPoints);
    for (size_t p = 0; p < kPoints; ++p) {
      reports::SweepPoint& pt = s.points[p];
      pt.id = fmt::format("{:016x}", 0x9e3779b97f4a7c15ULL * (p + 1));
      pt.keys = {p % 2 ? "ascend950pr" : "ascend910b2", std::to_string(16 * (p % 4096 + 1)),
                 fmt::format("[{}, 256, 64]", 64 << (p % 3))};
      pt.report.kernels.resize(kKernelsPerPoint);
      for (size_t k = 0; k < kKernelsPerPoint; ++k) {
        reports::KernelReport& kr = pt.report.kernels[k];
        kr.op = kOps[k % 5];
        kr.name = fmt::format("moe.group{}: {}_bf16", k, kr.op);
        kr.cycles = 10'000 + 13 * p + k;
        kr.time_us = static_cast<double>(kr.cycles) / 1800.0;
        kr.flops = 1e9 + static_cast<double>(p);
        kr.tflops = kr.flops / (kr.time_us * 1e6);
        kr.instructions = 1000 + k;
        kr.bytes = {1 << 20, 1 << 19, 1 << 20, 1 << 19, 0.25};
        kr.utilization = {0.5, 0.25, 0.125, 0.6, 0.3, 0.2, 0.7};
      }
    }
    return s;
  }();
  return s;
}

std::string bench_file(const char* name) {
  return (std::filesystem::temp_directory_path() /
          fmt::format("npusim_report_bench_{}_{}", ::getpid(), name))
      .string();
}

void BM_WriteHdf5(benchmark::State& state) {
  const auto& s = big_sweep();
  const std::string file = bench_file("sweep.h5");
  for (auto _ : state) reports::write_hdf5(s, file);
  state.counters["points"] = static_cast<double>(s.points.size());
  state.counters["MB"] = static_cast<double>(std::filesystem::file_size(file)) / 1e6;
  std::filesystem::remove(file);
}
BENCHMARK(BM_WriteHdf5)->Unit(benchmark::kMillisecond)->Iterations(1);

void BM_ToCsv(benchmark::State& state) {
  const auto& s = big_sweep();
  size_t bytes = 0;
  for (auto _ : state) {
    std::string csv = reports::to_csv(s);
    bytes = csv.size();
    benchmark::DoNotOptimize(csv);
  }
  state.counters["MB"] = static_cast<double>(bytes) / 1e6;
}
BENCHMARK(BM_ToCsv)->Unit(benchmark::kMillisecond)->Iterations(1);

void BM_ReadHdf5Points(benchmark::State& state) {
  const std::string file = bench_file("read.h5");
  reports::write_hdf5(big_sweep(), file);
  for (auto _ : state) benchmark::DoNotOptimize(reports::read_report(file));
  std::filesystem::remove(file);
}
BENCHMARK(BM_ReadHdf5Points)->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
