// Helpers for the report tests: real runs through the library, synthetic sweeps with awkward
// values (commas, quotes, UTF-8, NaN), and temp paths.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "app/session.hpp"
#include "reports/sweep_report.hpp"

namespace npusim::test {

// A run of `config` as `npusim run` (or `validate` when functional) would report it.
inline reports::RunReport run_config(const std::string& config,
                                     const std::vector<std::string>& sets = {},
                                     bool functional = false) {
  app::LoadedRun run = app::load_run(config, sets);
  reports::RunReport rep = app::make_report(run.hw, config, "npusim run " + config);
  if (run.graph) {
    app::GraphOutput out = app::execute_graph(run, functional);
    rep.kernels = std::move(out.kernels);
    rep.graph = std::move(out.graph);
  } else {
    rep.kernels.push_back((functional ? app::execute_functional(run) : app::execute(run)).kernel);
  }
  rep.wall_seconds = 0.25;
  return rep;
}

inline std::string workload(const std::string& name) {
  return std::string(NPUSIM_SOURCE_DIR) + "/configs/workloads/" + name;
}

// A fresh folder for one test (CTest runs tests of one executable in parallel processes).
inline std::string temp_folder(const std::string& name) {
  static int n = 0;
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              fmt::format("report_{}_{}_{}", name, ::getpid(), n++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// A kernel whose numbers all derive from (point, kernel), so every column is distinguishable.
inline reports::KernelReport synthetic_kernel(size_t p, size_t k) {
  reports::KernelReport r;
  r.name = fmt::format("k{}_{}: gemm \"tile\", {}", p, k, k % 3 == 0 ? "äöü" : "plain");
  r.op = k % 2 ? "gemm" : "vector_add";
  r.tiling = {{"l1", {128, 256, 64}}};
  r.cycles = 1000 + 37 * p + 11 * k;
  r.time_us = static_cast<double>(r.cycles) / 1800.0;
  r.flops = 2.0e6 * static_cast<double>(k + 1) + static_cast<double>(p);
  r.tflops = r.flops / (r.time_us * 1e6);
  r.peak_fraction = 0.1 + 0.01 * static_cast<double>(k);
  r.instructions = 500 + k;
  r.aic_used = 24;
  r.aiv_used = 48;
  r.bytes = {1000 + p, 2000 + k, 3000 + p + k, 4000 + p * k,
             0.5 + 0.01 * static_cast<double>(k % 10)};
  r.utilization = {0.9 - 0.01 * static_cast<double>(k),
                   0.2,
                   0.3,
                   0.4 + 1e-3 * static_cast<double>(p % 100),
                   0.5,
                   0.6,
                   0.7 / 3};
  if (k % 4 == 1) {  // some kernels validated, one of them failing
    reports::ValidationReport v;
    v.passed = p % 5 != 3;
    v.max_abs_err = 1e-3;
    v.tolerance = {{"rtol", 1e-2}};
    r.validation = v;
  }
  return r;
}

inline reports::SweepReport synthetic_sweep(size_t points, size_t kernels_per_point) {
  reports::SweepReport s;
  s.tool_version = "0.1.0-test";
  s.git_revision = "abc123";
  s.command_line = "npusim sweep sweep.yaml --out \"out dir\"";
  s.sweep_yaml =
      "# a sweep, résumé ✓\naxes:\n  workload.tokens: [64, 512]\n  hardware: [ascend910b2]\n";
  s.key_columns = {"hardware", "workload.tokens"};
  for (size_t p = 0; p < points; ++p) {
    reports::SweepPoint pt;
    pt.id = fmt::format("{:016x}", 0x9e3779b97f4a7c15ULL * (p + 1));
    pt.keys = {p % 2 ? "ascend950pr" : "ascend910b2, \"fast\"", std::to_string(64 * (p / 2 + 1))};
    pt.report.tool_version = s.tool_version;
    pt.report.git_revision = s.git_revision;
    pt.report.config_file = fmt::format("point_{}.yaml", p);
    pt.report.hardware_name = p % 2 ? "ascend950pr" : "ascend910b2";
    pt.report.freq_mhz = 1800;
    pt.report.hbm_peak_gbs = 1600;
    pt.report.hardware = {{"freq_mhz", "MHz", "1800"}, {"hbm.peak_bw_gbs", "GB/s", "1600"}};
    for (size_t k = 0; k < kernels_per_point; ++k)
      pt.report.kernels.push_back(synthetic_kernel(p, k));
    s.points.push_back(std::move(pt));
  }
  return s;
}

}  // namespace npusim::test
