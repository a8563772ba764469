// The sweep report model: point metrics, the run report's JSON reader (the inverse of its
// writer, checked on real runs), and the sweep's JSON, CSV and HDF5 writers.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "report_test_support.hpp"
#include "reports/report_reader.hpp"
#include "reports/writers.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

namespace fs = std::filesystem;
using reports::RunReport;

double metric(const RunReport& r, const std::string& name) {
  for (const auto& [n, v] : reports::point_metrics(r))
    if (n == name) return v;
  ADD_FAILURE() << "no metric " << name;
  return 0;
}

TEST(PointMetrics, ColumnsComeInTheDocumentedOrder) {
  const std::vector<std::string> expected = {"cycles",
                                             "time_us",
                                             "critical_path_us",
                                             "kernels",
                                             "flops",
                                             "tflops",
                                             "cube",
                                             "vector",
                                             "mte1",
                                             "mte2",
                                             "mte3",
                                             "fixpipe",
                                             "hbm_bw",
                                             "hbm_read_bytes",
                                             "hbm_write_bytes",
                                             "l2_hit_rate",
                                             "validation_passed"};
  EXPECT_EQ(reports::point_metric_names(), expected);
  std::vector<std::string> names;
  for (const auto& [n, v] : reports::point_metrics(RunReport{})) names.push_back(n);
  EXPECT_EQ(names, expected);
}

TEST(PointMetrics, WeightUtilizationByKernelTimeAndHitRateByReadBytes) {
  RunReport r;
  r.kernels.resize(2);
  r.kernels[0].cycles = 100, r.kernels[0].time_us = 1, r.kernels[0].flops = 4e6;
  r.kernels[1].cycles = 300, r.kernels[1].time_us = 3, r.kernels[1].flops = 4e6;
  r.kernels[0].utilization.cube = 1.0, r.kernels[1].utilization.cube = 0.2;
  r.kernels[0].utilization.hbm_bw = 0.0, r.kernels[1].utilization.hbm_bw = 0.8;
  r.kernels[0].bytes = {100, 0, 10, 20, 1.0};
  r.kernels[1].bytes = {300, 0, 30, 40, 0.0};
  EXPECT_DOUBLE_EQ(metric(r, "cycles"), 400);
  EXPECT_DOUBLE_EQ(metric(r, "time_us"), 4);
  EXPECT_DOUBLE_EQ(metric(r, "critical_path_us"), 4);
  EXPECT_DOUBLE_EQ(metric(r, "kernels"), 2);
  EXPECT_DOUBLE_EQ(metric(r, "tflops"), 8e6 / 4e6);
  EXPECT_DOUBLE_EQ(metric(r, "cube"), (1.0 * 1 + 0.2 * 3) / 4);
  EXPECT_DOUBLE_EQ(metric(r, "hbm_bw"), 0.6);
  EXPECT_DOUBLE_EQ(metric(r, "hbm_read_bytes"), 40);
  EXPECT_DOUBLE_EQ(metric(r, "hbm_write_bytes"), 60);
  EXPECT_DOUBLE_EQ(metric(r, "l2_hit_rate"), 0.25);
  EXPECT_TRUE(std::isnan(metric(r, "validation_passed"))) << "no kernel validated";
  r.kernels[0].validation = reports::ValidationReport{};
  r.kernels[0].validation->passed = true;
  EXPECT_EQ(metric(r, "validation_passed"), 1.0);
  r.kernels[1].validation = reports::ValidationReport{};
  EXPECT_EQ(metric(r, "validation_passed"), 0.0) << "one failing kernel fails the point";
}

TEST(PointMetrics, GraphRunsTakeTheGraphTimes) {
  RunReport r;
  r.kernels.resize(1);
  r.kernels[0].time_us = 2, r.kernels[0].flops = 1e6, r.kernels[0].utilization.cube = 0.5;
  r.graph = reports::GraphSummary{};
  r.graph->total_us = 5, r.graph->critical_path_us = 3;
  EXPECT_DOUBLE_EQ(metric(r, "time_us"), 5);
  EXPECT_DOUBLE_EQ(metric(r, "critical_path_us"), 3);
  EXPECT_DOUBLE_EQ(metric(r, "tflops"), 1e6 / 5e6);
  EXPECT_DOUBLE_EQ(metric(r, "cube"), 0.5) << "utilization stays over the kernels' own time";
}

void expect_round_trip(const RunReport& r) {
  const nlohmann::json j = reports::to_json(r);
  EXPECT_EQ(reports::to_json(reports::run_report_from_json(j)), j);
  // Through text, as a report file is read.
  const nlohmann::json text = nlohmann::json::parse(j.dump(2));
  const RunReport back = reports::run_report_from_json(text);
  EXPECT_EQ(reports::to_json(back), j);
  EXPECT_EQ(back.freq_mhz, r.freq_mhz);
  EXPECT_EQ(back.hbm_peak_gbs, r.hbm_peak_gbs);
}

TEST(RunReportJson, RoundTripsAFunctionalGraphRunWithRouting) {
  const std::string config = test::write_temp_config(
      "report_toy_moe",
      "hardware: ascend910b2\nworkload: {model: toy, block: moe, phase: prefill, routing: "
      "{distribution: zipf, "
      "s: 1.2, seed: 3}}\nfusion: [gmm1_swiglu, gmm2_finalize]\ninputs: {seed: 6}\n");
  const RunReport r = test::run_config(config, {}, true);
  ASSERT_TRUE(r.graph.has_value());
  ASSERT_FALSE(r.graph->tokens_per_expert.empty()) << "the toy MoE block has routing";
  ASSERT_TRUE(r.kernels.front().validation.has_value());
  ASSERT_TRUE(reports::to_json(r).contains("routing"));
  expect_round_trip(r);
}

TEST(RunReportJson, RoundTripsAFunctionalKernelRun) {
  const RunReport r = test::run_config(test::workload("gemm_bf16_tails_validate.yaml"), {}, true);
  ASSERT_EQ(r.kernels.size(), 1u);
  ASSERT_TRUE(r.kernels[0].validation.has_value());
  expect_round_trip(r);
}

TEST(RunReportJson, RoundTripsSyntheticDetailsAndMultiOutputValidation) {
  RunReport r = test::synthetic_sweep(1, 3).points[0].report;
  r.kernels[0].details = {{"graph_ops", {"gate", "topk"}}, {"routing", {{"imbalance", 1.5}}}};
  reports::ValidationReport out_a, out_b;
  out_a.passed = true;
  out_b.failures = {"cos_diff 0.1 > 0.01"};
  out_b.worst.push_back({7, 1, 2, 0.5, 0.25, 0.25});
  r.kernels[1].validation->outputs = {{"y", out_a}, {"z", out_b}};
  r.hardware.push_back({"name_only", "", "ascend910b2"});
  r.hardware.push_back({"aic.l1_bytes", "B", "524288"});
  expect_round_trip(r);
}

TEST(RunReportJson, NamesTheMissingOrMistypedKey) {
  nlohmann::json j = reports::to_json(test::synthetic_sweep(1, 2).points[0].report);
  auto error_of = [](const nlohmann::json& bad) -> std::string {
    try {
      reports::run_report_from_json(bad);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "no error";
  };
  nlohmann::json missing = j;
  missing["kernels"][1]["bytes"].erase("gm_read");
  EXPECT_NE(error_of(missing).find("'kernels[1].bytes.gm_read' is missing"), std::string::npos)
      << error_of(missing);
  nlohmann::json mistyped = j;
  mistyped["kernels"][0]["cycles"] = "many";
  EXPECT_NE(
      error_of(mistyped).find("'kernels[0].cycles' should be an unsigned integer, found string"),
      std::string::npos)
      << error_of(mistyped);
  nlohmann::json no_hw = j;
  no_hw.erase("hardware");
  EXPECT_NE(error_of(no_hw).find("'hardware' is missing"), std::string::npos) << error_of(no_hw);
  EXPECT_NE(error_of(nlohmann::json::array()).find("should be an object"), std::string::npos);
}

TEST(SweepJson, HoldsHeaderKeysMetricsAndReports) {
  const reports::SweepReport s = test::synthetic_sweep(3, 2);
  const nlohmann::json j = reports::to_json(s);
  EXPECT_EQ(j["schema_version"], reports::kSchemaVersion);
  EXPECT_EQ(j["kind"], "sweep");
  EXPECT_EQ(j["sweep_yaml"], s.sweep_yaml);
  EXPECT_EQ(j["command_line"], s.command_line);
  EXPECT_EQ(j["key_columns"], nlohmann::json(s.key_columns));
  ASSERT_EQ(j["points"].size(), 3u);
  const auto& p = j["points"][1];
  EXPECT_EQ(p["id"], s.points[1].id);
  EXPECT_EQ(p["keys"]["workload.tokens"], "64");
  EXPECT_EQ(p["keys"]["hardware"], "ascend950pr");
  EXPECT_EQ(p["metrics"]["cycles"], metric(s.points[1].report, "cycles"));
  EXPECT_EQ(p["report"], reports::to_json(s.points[1].report));
  // Kernel 1 of each point is validated (and passes on point 1).
  EXPECT_EQ(p["metrics"]["validation_passed"], 1.0);
  const nlohmann::json none = reports::to_json(test::synthetic_sweep(1, 1));
  EXPECT_TRUE(none["points"][0]["metrics"]["validation_passed"].is_null())
      << "NaN is written as null";
}

TEST(SweepJson, RejectsPointsWhoseKeysDoNotMatchTheColumns) {
  reports::SweepReport s = test::synthetic_sweep(2, 1);
  s.points[1].keys.pop_back();
  EXPECT_THROW(reports::to_json(s), std::runtime_error);
  EXPECT_THROW(reports::to_csv(s), std::runtime_error);
  EXPECT_THROW(reports::write_hdf5(s, test::temp_folder("bad_keys") + "/bad.h5"),
               std::runtime_error);
}

}  // namespace
}  // namespace npusim
