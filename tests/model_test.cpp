// First-principles behaviour of whole kernels: what any NPU engineer expects of the model.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "reports/writers.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

std::string config(const std::string& name) { return std::string(NPUSIM_SOURCE_DIR) + "/configs/workloads/" + name; }

app::RunOutput run(const std::string& file, const std::vector<std::string>& sets = {}, bool trace = false) {
  app::LoadedRun r = app::load_run(config(file), sets);
  sim::SimOptions opt;
  opt.trace = trace;
  return app::execute(r, opt);
}

TEST(FirstPrinciples, LargeGemmWithDefaultTilingReaches70To97PercentOfPeak) {
  auto out = run("gemm_6144_cube.yaml");
  EXPECT_TRUE(out.kernel.tiling_default);
  EXPECT_GE(out.kernel.peak_fraction, 0.70);
  EXPECT_LE(out.kernel.peak_fraction, 0.97);
}

TEST(FirstPrinciples, GemvLikeGemmIsNeverFasterThanItsBytesOverHbmPeak) {
  auto out = run("gemv_like.yaml");
  const auto& hw = test::preset("ascend910b2");
  // B alone (16384 x 6144 fp16) must cross HBM once.
  double floor_us = 16384.0 * 6144 * 2 / (hw.hbm.peak_bw_gbs * 1e3);
  EXPECT_GE(out.kernel.time_us, floor_us);
}

TEST(FirstPrinciples, DoublingHbmBandwidthHelpsGemvNotLargeGemm) {
  auto gemv = run("gemv_like.yaml"), gemv2 = run("gemv_like.yaml", {"hardware.hbm.peak_bw_gbs=3200"});
  auto big = run("gemm_6144_cube.yaml"), big2 = run("gemm_6144_cube.yaml", {"hardware.hbm.peak_bw_gbs=3200"});
  EXPECT_GT(gemv.kernel.time_us / gemv2.kernel.time_us, 1.20);
  EXPECT_LT(std::abs(big.kernel.time_us / big2.kernel.time_us - 1.0), 0.05);
}

TEST(FirstPrinciples, UtilizationsAreFractionsThatAgreeWithBusyCycles) {
  for (const char* f : {"gemm_6144_cube.yaml", "gemv_like.yaml", "add_8192.yaml", "gemm_1024x576x6144.yaml"}) {
    auto out = run(f);
    const auto& u = out.kernel.utilization;
    for (double v : {u.cube, u.vector, u.mte1, u.mte2, u.mte3, u.fixpipe, u.hbm_bw}) {
      EXPECT_GE(v, 0.0) << f;
      EXPECT_LE(v, 1.0) << f;
    }
    const auto& hw = test::preset(out.kernel.name.rfind("gemm_1024", 0) == 0 ? "ascend910b3" : "ascend910b2");
    double m_busy = 0, v_busy = 0;
    for (const auto& unit : out.sim.units) {
      m_busy += unit.pipes[static_cast<int>(sim::Pipe::M)].busy_cycles;
      v_busy += unit.pipes[static_cast<int>(sim::Pipe::V)].busy_cycles;
      EXPECT_LE(unit.pipes[static_cast<int>(sim::Pipe::M)].busy_cycles, out.sim.cycles + 1e-6);
    }
    EXPECT_NEAR(u.cube, m_busy / (hw.num_aic * out.sim.cycles), 1e-12) << f;
    EXPECT_NEAR(u.vector, v_busy / (hw.num_aiv * out.sim.cycles), 1e-12) << f;
  }
}

TEST(FirstPrinciples, CubeUtilizationMatchesFlopsForGemm) {
  // Busy M-pipe time covers at least the fractal cycles the flops need.
  auto out = run("gemm_6144_cube.yaml");
  EXPECT_GE(out.kernel.utilization.cube + 1e-9, out.kernel.peak_fraction);
}

TEST(Determinism, SameConfigGivesIdenticalReportsApartFromWallClock) {
  auto dump = [] {
    app::LoadedRun r = app::load_run(config("gemm_1024x576x6144.yaml"));
    sim::SimOptions opt;
    opt.trace = true;
    auto out = app::execute(r, opt);
    reports::RunReport rep = app::make_report(r.hw, "x.yaml", "npusim run x.yaml");
    rep.kernels.push_back(out.kernel);
    auto j = reports::to_json(rep);
    j.erase("wall_clock");  // the only field documented as wall-clock
    return j.dump() + reports::trace_json(app::make_trace(r.hw, out.sim)).dump();
  };
  EXPECT_EQ(dump(), dump());
}

TEST(Trace, SlicesAreCompleteEventsThatNeverOverlapOnATrack) {
  app::LoadedRun r = app::load_run(config("gemm_1024x576x6144.yaml"));
  sim::SimOptions opt;
  opt.trace = true;
  auto out = app::execute(r, opt);
  nlohmann::json j = reports::trace_json(app::make_trace(r.hw, out.sim));
  std::map<std::pair<int, int>, std::vector<std::pair<double, double>>> tracks;
  std::map<std::pair<int, int>, std::string> names;
  size_t complete = 0;
  for (const auto& e : j.at("traceEvents")) {
    std::string ph = e.at("ph");
    ASSERT_TRUE(ph == "X" || ph == "M") << e.dump();
    if (ph == "M") {
      if (e.at("name") == "thread_name") names[{e.at("pid"), e.at("tid")}] = e.at("args").at("name");
      continue;
    }
    ++complete;
    double ts = e.at("ts"), dur = e.at("dur");
    ASSERT_GE(dur, 0.0);
    ASSERT_GE(ts, 0.0);
    tracks[{e.at("pid"), e.at("tid")}].push_back({ts, ts + dur});
  }
  EXPECT_GT(complete, 1000u);
  for (auto& [key, v] : tracks) {
    EXPECT_TRUE(names.count(key)) << "track without a thread_name";
    std::sort(v.begin(), v.end());
    for (size_t i = 1; i < v.size(); ++i)
      ASSERT_LE(v[i - 1].second, v[i].first + 1e-9) << "overlap on track " << names[key] << " at " << v[i].first;
  }
  // One track per core and pipe: the AIC pipes of a GEMM.
  std::set<std::string> pipes;
  for (const auto& [k, n] : names) pipes.insert(n);
  EXPECT_TRUE(pipes.count("MTE2") && pipes.count("MTE1") && pipes.count("M") && pipes.count("FIXPIPE"));
}

TEST(Vector, DoubleBufferingOverlapsCopyInWithCompute) {
  auto one = run("add_8192.yaml", {"tiling.buffers=1"}), two = run("add_8192.yaml");
  EXPECT_LT(two.kernel.time_us, one.kernel.time_us);
}

TEST(Gemm, SwizzleImprovesL2HitRateOnLargeGemm) {
  auto plain = run("gemm_6144_cube.yaml", {"tiling.swizzle.offset=1", "tiling.swizzle.direction=0",
                                           "tiling.l1=[128,256,256]"});
  auto swz = run("gemm_6144_cube.yaml", {"tiling.swizzle.offset=3", "tiling.l1=[128,256,256]"});
  EXPECT_GE(swz.kernel.bytes.l2_hit_rate, plain.kernel.bytes.l2_hit_rate);
}

TEST(Gemm, EveryBLayoutRunsAndNzAvoidsTheConversion) {
  auto col = run("gemm_1024x576x6144.yaml");
  auto nz = run("gemm_1024x576x6144.yaml", {"workload.layout.b=nz"});
  auto row = run("gemm_1024x576x6144.yaml", {"workload.layout.b=row_major"});
  EXPECT_GT(row.kernel.time_us, 0);
  // NZ-stored B is copied as it is; the ND layouts go through the ND->NZ conversion path.
  const uint64_t b_bytes = 6144ull * 576 * 2;
  EXPECT_EQ(nz.sim.path_bytes[static_cast<int>(sim::Path::GmToL1)], b_bytes * (1024 / 256));
  EXPECT_EQ(col.sim.path_bytes[static_cast<int>(sim::Path::GmToL1)], 0u);
  EXPECT_EQ(col.sim.path_bytes[static_cast<int>(sim::Path::GmToL1Nd2Nz)],
            row.sim.path_bytes[static_cast<int>(sim::Path::GmToL1Nd2Nz)]);
}

TEST(Gemm, TailTilesInEveryDimensionSimulate) {
  auto out = run("gemm_1024x576x6144.yaml", {"workload.m=1000", "workload.n=570", "workload.k=6100"});
  EXPECT_GT(out.kernel.cycles, 0u);
  EXPECT_NEAR(out.kernel.flops, 2.0 * 1000 * 570 * 6100, 1);
}

app::RunOutput run_yaml(const std::string& yaml) {
  return app::execute(app::load_run(test::write_temp_config("model", yaml)));
}

TEST(GroupedGemm, OneGroupCostsWhatTheSameGemmCosts) {
  auto g = run_yaml("hardware: ascend910b2\nworkload: {op: grouped_gemm, n: 2048, k: 4096, dtype: fp16, group_rows: [1000]}\n"
                    "tiling: {l1: [128, 256, 256], l0: [128, 256, 64]}\n");
  auto m = run_yaml("hardware: ascend910b2\nworkload: {op: gemm, m: 1000, n: 2048, k: 4096, dtype: fp16}\n"
                    "tiling: {l1: [128, 256, 256], l0: [128, 256, 64]}\n");
  EXPECT_NEAR(static_cast<double>(g.kernel.cycles) / m.kernel.cycles, 1.0, 0.01);
}

TEST(GroupedGemm, EmptyExpertsCostOnlyTheirBookkeeping) {
  const auto& hw = test::preset("ascend910b2");
  auto one = run_yaml("hardware: ascend910b2\nworkload: {op: grouped_gemm, n: 512, k: 512, dtype: fp16, group_rows: [300]}\n");
  auto many = run_yaml(
      "hardware: ascend910b2\nworkload: {op: grouped_gemm, n: 512, k: 512, dtype: fp16, group_rows: [300, 0, 0, 0, 0, 0, 0, 0]}\n");
  EXPECT_NEAR(static_cast<double>(many.kernel.cycles) - one.kernel.cycles, 7 * hw.scalar_group_cycles, 2.0);
}

TEST(GroupedGemm, InDecodeTimeFollowsTheExpertsThatHaveRows) {
  // Decode-sized groups are bound by reading expert weights: the same 128 rows spread over eight
  // experts read eight 16 MiB weights, concentrated on one expert they read one.
  const std::string base = "hardware: ascend910b2\nworkload: {op: grouped_gemm, n: 2048, k: 4096, dtype: bf16, layout: {b: nz}, ";
  auto even = run_yaml(base + "group_rows: [16, 16, 16, 16, 16, 16, 16, 16]}\n");
  auto hot = run_yaml(base + "group_rows: [128, 0, 0, 0, 0, 0, 0, 0]}\n");
  EXPECT_LT(hot.kernel.time_us, 0.5 * even.kernel.time_us);
  EXPECT_GT(even.kernel.utilization.hbm_bw, 0.7);
  // The report carries the counts and their imbalance (max / mean).
  EXPECT_DOUBLE_EQ(hot.kernel.details.at("routing").at("imbalance").get<double>(), 8.0);
  EXPECT_DOUBLE_EQ(even.kernel.details.at("routing").at("imbalance").get<double>(), 1.0);
}

TEST(Gemm, RunsOnEveryPresetWithItsDefaultTiling) {
  for (const auto& p : app::list_presets()) {
    std::string file = test::write_temp_config(
        "preset_" + p, "hardware: " + p + "\nworkload: {op: gemm, m: 512, n: 768, k: 1024, dtype: bf16}\n");
    auto out = app::execute(app::load_run(file));
    EXPECT_GT(out.kernel.peak_fraction, 0.05) << p;
    EXPECT_LE(out.kernel.peak_fraction, 1.0) << p;
  }
}

}  // namespace
}  // namespace npusim
