// Sweep overhead per point, the simulation excluded (target: under 1 ms per point). A 1000-point
// sweep over a tiny GEMM (10 M x 10 N x 10 K values), in its phases:
//   plan    : read the sweep file, expand, validate every point (load_run), hash the ids
//   points  : write each point folder (config.yaml, report.json, log.txt) under a temporary name
//             and rename it; the report is one canned simulation result
//   reports : read every point's report.json back and write report.json, .csv, .h5 and .html
//   total   : the three together, as `npusim sweep` pays them
// The point folders land in $NPUSIM_BENCH_DIR (default: the temp folder); file creation is the
// file system's cost, so compare with NPUSIM_BENCH_DIR=/dev/shm to see npusim's own share.
// Run: ./build/bench/sweep_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "app/sweep.hpp"

namespace {

using namespace npusim;
namespace fs = std::filesystem;

constexpr int kPoints = 1000;

struct Fixture {
  fs::path dir;
  std::string sweep;
  std::string report_json;  // one simulated point's report, written for every point

  Fixture() {
    const char* where = std::getenv("NPUSIM_BENCH_DIR");
    dir = fs::path(where && *where ? where : fs::temp_directory_path().string()) /
          ("npusim_sweep_bench_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::ofstream(dir / "tiny.yaml")
        << "hardware: ascend910b2\nworkload: {op: gemm, m: 64, n: 64, k: 64, dtype: fp16}\n";
    sweep = (dir / "sweep.yaml").string();
    std::ofstream(sweep) << "name: bench\nbase: tiny.yaml\naxes:\n"
                         << "  workload.m: [16, 32, 48, 64, 80, 96, 112, 128, 144, 160]\n"
                         << "  workload.n: [16, 32, 48, 64, 80, 96, 112, 128, 144, 160]\n"
                         << "  workload.k: [16, 32, 48, 64, 80, 96, 112, 128, 144, 160]\n";
    app::SweepPlan plan = app::plan_sweep(app::load_sweep(sweep));
    app::simulate_point(plan.points.front(), report_json);
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  // A new folder each time: deleting thousands of fresh inodes and creating as many again makes
  // ext4's inode allocator scan for recently deleted ones, which a real sweep never pays.
  std::string out() const { return (dir / ("out" + std::to_string(outs))).string(); }
  int outs = 0;
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void per_point(benchmark::State& state) {
  state.counters["per_point"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * kPoints,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void write_points(const app::SweepPlan& plan, const std::string& out,
                  const std::string& report_json) {
  app::PointOutcome ok;
  ok.ok = true;
  for (const auto& p : plan.points) app::write_point_dir(p, out, ok, report_json);
}

void write_reports(const app::SweepPlan& plan, const std::string& out) {
  reports::SweepReport r = app::assemble_report(app::manifest_of(plan), {out}, nullptr);
  for (const char* name : {"report.json", "report.csv", "report.h5", "report.html"})
    app::write_report(r, (fs::path(out) / name).string());
}

void fresh_out(Fixture& f) {
  ++f.outs;
  fs::create_directories(fs::path(f.out()) / "points");
}

void BM_Plan(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) benchmark::DoNotOptimize(app::plan_sweep(app::load_sweep(f.sweep)).sweep_id);
  per_point(state);
}

void BM_PointFolders(benchmark::State& state) {
  Fixture& f = fixture();
  app::SweepPlan plan = app::plan_sweep(app::load_sweep(f.sweep), false);
  for (auto _ : state) {
    state.PauseTiming();
    fresh_out(f);
    state.ResumeTiming();
    write_points(plan, f.out(), f.report_json);
  }
  per_point(state);
}

void BM_Reports(benchmark::State& state) {
  Fixture& f = fixture();
  app::SweepPlan plan = app::plan_sweep(app::load_sweep(f.sweep), false);
  fresh_out(f);
  write_points(plan, f.out(), f.report_json);
  for (auto _ : state) write_reports(plan, f.out());
  per_point(state);
}

void BM_Total(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    state.PauseTiming();
    fresh_out(f);
    state.ResumeTiming();
    app::SweepPlan plan = app::plan_sweep(app::load_sweep(f.sweep));
    write_points(plan, f.out(), f.report_json);
    write_reports(plan, f.out());
  }
  per_point(state);
}

BENCHMARK(BM_Plan)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_PointFolders)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_Reports)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_Total)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
