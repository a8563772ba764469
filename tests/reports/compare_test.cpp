// `npusim compare` as a library: threshold parsing, pairing by key values, verdicts, the status
// for the exit code, and the same answer from JSON and HDF5 reports of one sweep.
#include "reports/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "report_test_support.hpp"
#include "reports/writers.hpp"

namespace npusim {
namespace {

using reports::CompareStatus;
using reports::DeltaUnit;
using reports::Verdict;

// ---- thresholds ----

TEST(CompareThresholds, ParseSignsUnitsAndTheWorseDirection) {
  auto t = reports::parse_threshold("cycles:+2%");
  EXPECT_EQ(t.metric, "cycles");
  EXPECT_EQ(t.sign, +1);
  EXPECT_EQ(t.amount, 2);
  EXPECT_EQ(t.unit, DeltaUnit::kPercent);
  t = reports::parse_threshold("cube:-2pp");
  EXPECT_EQ(t.sign, -1);
  EXPECT_EQ(t.unit, DeltaUnit::kPoints);
  EXPECT_EQ(reports::parse_threshold("cube:2.5pp").sign, -1) << "higher is better: worse is down";
  EXPECT_EQ(reports::parse_threshold("cube:2.5pp").amount, 2.5);
  EXPECT_EQ(reports::parse_threshold("time_us:3%").sign, +1) << "lower is better: worse is up";
  EXPECT_EQ(reports::parse_threshold("kernels:+0%").sign, +1) << "informational with a sign";
  EXPECT_EQ(reports::parse_threshold("validation_passed:-0pp").amount, 0);
}

std::string threshold_error(const std::string& arg) {
  try {
    reports::parse_threshold(arg);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(CompareThresholds, RejectMalformedAndUnknownWithTheArgument) {
  EXPECT_NE(threshold_error("cylces:+2%")
                .find("unknown metric 'cylces' (did you mean 'cycles'?); known: cycles, "
                      "time_us"),
            std::string::npos)
      << threshold_error("cylces:+2%");
  EXPECT_NE(threshold_error("cycles").find("--fail 'cycles': expected METRIC:"), std::string::npos);
  EXPECT_NE(threshold_error("cycles:+2").find("needs a unit"), std::string::npos);
  EXPECT_NE(threshold_error("cycles:+x%").find("'x' is not an amount"), std::string::npos);
  EXPECT_NE(threshold_error("cycles:--2%").find("is not an amount"), std::string::npos);
  EXPECT_NE(threshold_error("cycles:+%").find("is not an amount"), std::string::npos);
  EXPECT_NE(threshold_error("flops:5%").find("'flops' has no better direction"), std::string::npos);
  EXPECT_NE(threshold_error(":+2%").find("expected METRIC"), std::string::npos);
}

TEST(CompareThresholds, DefaultsApplyOnlyWithoutFailArguments) {
  std::vector<std::string> texts;
  for (const auto& t : reports::parse_thresholds({})) texts.push_back(t.text);
  EXPECT_EQ(texts,
            (std::vector<std::string>{"cycles:+1%", "time_us:+1%", "validation_passed:-0pp"}));
  EXPECT_EQ(reports::parse_thresholds({"cube:-2pp"}).size(), 1u);
}

TEST(CompareThresholds, MetricsHaveDirections) {
  EXPECT_EQ(reports::metric_direction("cycles"), reports::Direction::kLowerIsBetter);
  EXPECT_EQ(reports::metric_direction("hbm_write_bytes"), reports::Direction::kLowerIsBetter);
  EXPECT_EQ(reports::metric_direction("l2_hit_rate"), reports::Direction::kHigherIsBetter);
  EXPECT_EQ(reports::metric_direction("flops"), reports::Direction::kInformational);
  EXPECT_EQ(reports::metric_direction("kernels"), reports::Direction::kInformational);
}

// ---- verdicts on hand-made reports ----

reports::FlatReport flat(const std::string& source, const std::vector<std::string>& tokens) {
  reports::FlatReport f;
  f.schema_version = reports::kSchemaVersion;
  f.source = source;
  f.key_columns = {"workload.tokens"};
  f.metric_names = reports::point_metric_names();
  for (const auto& t : tokens) {
    reports::FlatReport::Point p;
    p.id = "id" + t;
    p.keys = {t};
    for (const auto& m : f.metric_names)
      p.metrics.push_back(m == "validation_passed" ? 1.0 : 0.5 * std::stod(t));
    f.points.push_back(p);
  }
  return f;
}

double& value(reports::FlatReport& f, size_t point, const std::string& metric) {
  return f.points[point].metrics[*f.metric_index(metric)];
}

const reports::MetricDelta& delta(const reports::Comparison& c, size_t point,
                                  const std::string& metric) {
  for (const auto& d : c.points.at(point).metrics)
    if (d.metric == metric) return d;
  throw std::runtime_error("no metric " + metric);
}

TEST(CompareVerdicts, PercentThresholdsFailAboveTheirAmountAndImproveBelowItsMirror) {
  auto base = flat("base", {"100"}), cand = base;
  const auto th = reports::parse_thresholds({"cycles:+1%", "time_us:+1%"});
  value(cand, 0, "cycles") = 50 * 1.005;  // +0.5%: ok
  value(cand, 0, "time_us") = 50 * 1.02;  // +2%: regressed
  reports::Comparison c = reports::compare_reports(base, cand, th);
  EXPECT_EQ(delta(c, 0, "cycles").verdict, Verdict::kOk);
  EXPECT_NEAR(delta(c, 0, "cycles").delta, 0.5, 1e-9);
  EXPECT_EQ(delta(c, 0, "time_us").verdict, Verdict::kRegressed);
  EXPECT_EQ(delta(c, 0, "time_us").failed, "time_us:+1%");
  EXPECT_EQ(delta(c, 0, "cube").verdict, Verdict::kUnchecked);
  EXPECT_EQ(c.status, CompareStatus::kRegression);
  EXPECT_EQ(c.exit_code(), 1);
  value(cand, 0, "time_us") = 50 * 0.98;  // -2%: improved
  c = reports::compare_reports(base, cand, th);
  EXPECT_EQ(delta(c, 0, "time_us").verdict, Verdict::kImproved);
  EXPECT_EQ(c.status, CompareStatus::kNoRegression);
  EXPECT_EQ(c.improved_points, 1u);
}

TEST(CompareVerdicts, PointThresholdsUseAbsoluteFractions) {
  auto base = flat("base", {"1"}), cand = base;  // utilization 0.5
  value(cand, 0, "cube") = 0.485;                // -1.5pp
  value(cand, 0, "hbm_bw") = 0.475;              // -2.5pp
  const auto c =
      reports::compare_reports(base, cand, reports::parse_thresholds({"cube:-2pp", "hbm_bw:2pp"}));
  EXPECT_EQ(delta(c, 0, "cube").verdict, Verdict::kOk);
  EXPECT_NEAR(delta(c, 0, "cube").delta, -1.5, 1e-9);
  EXPECT_EQ(delta(c, 0, "cube").unit, DeltaUnit::kPoints);
  EXPECT_EQ(delta(c, 0, "hbm_bw").verdict, Verdict::kRegressed);
  EXPECT_EQ(c.status, CompareStatus::kRegression);
}

TEST(CompareVerdicts, AFailingValidationIsARegressionByDefault) {
  auto base = flat("base", {"8"}), cand = base;
  value(cand, 0, "validation_passed") = 0;
  auto c = reports::compare_reports(base, cand, reports::parse_thresholds({}));
  EXPECT_EQ(delta(c, 0, "validation_passed").verdict, Verdict::kRegressed);
  EXPECT_EQ(c.status, CompareStatus::kRegression);
  // Not validated on one side: no verdict, no failure.
  value(cand, 0, "validation_passed") = std::numeric_limits<double>::quiet_NaN();
  c = reports::compare_reports(base, cand, reports::parse_thresholds({}));
  EXPECT_EQ(delta(c, 0, "validation_passed").verdict, Verdict::kMissing);
  EXPECT_EQ(c.status, CompareStatus::kNoRegression);
  // Fail -> pass improves.
  value(base, 0, "validation_passed") = 0;
  value(cand, 0, "validation_passed") = 1;
  c = reports::compare_reports(base, cand, reports::parse_thresholds({}));
  EXPECT_EQ(delta(c, 0, "validation_passed").verdict, Verdict::kImproved);
}

TEST(CompareVerdicts, InformationalMetricsJudgedOnlyWhenNamed) {
  auto base = flat("base", {"8"}), cand = base;
  value(cand, 0, "kernels") = 5;
  auto c = reports::compare_reports(base, cand, reports::parse_thresholds({}));
  EXPECT_EQ(delta(c, 0, "kernels").verdict, Verdict::kUnchecked);
  c = reports::compare_reports(base, cand, reports::parse_thresholds({"kernels:+0%"}));
  EXPECT_EQ(delta(c, 0, "kernels").verdict, Verdict::kRegressed);
}

TEST(CompareVerdicts, AZeroBaseGivesAnInfiniteRelativeChange) {
  auto base = flat("base", {"8"}), cand = base;
  value(base, 0, "hbm_write_bytes") = 0;
  value(cand, 0, "hbm_write_bytes") = 64;
  const auto c =
      reports::compare_reports(base, cand, reports::parse_thresholds({"hbm_write_bytes:+50%"}));
  EXPECT_TRUE(std::isinf(delta(c, 0, "hbm_write_bytes").delta));
  EXPECT_EQ(delta(c, 0, "hbm_write_bytes").verdict, Verdict::kRegressed);
  EXPECT_NE(reports::format_comparison(c, reports::CompareFormat::kTable).find("+inf%"),
            std::string::npos);
}

// ---- pairing ----

TEST(ComparePairing, PointsPairByKeysSortNumericallyAndUnpairedAreListed) {
  auto base = flat("base", {"512", "64", "8"});
  auto cand = flat("cand", {"64", "4096", "512"});
  const auto c = reports::compare_reports(base, cand, reports::parse_thresholds({}));
  EXPECT_EQ(c.status, CompareStatus::kNoRegression);
  ASSERT_EQ(c.points.size(), 2u);
  EXPECT_EQ(c.points[0].keys, std::vector<std::string>{"64"});
  EXPECT_EQ(c.points[1].keys, std::vector<std::string>{"512"});
  ASSERT_EQ(c.only_base.size(), 1u);
  EXPECT_EQ(c.only_base[0].keys, std::vector<std::string>{"8"});
  ASSERT_EQ(c.only_candidate.size(), 1u);
  EXPECT_EQ(c.only_candidate[0].id, "id4096");
  const std::string table = reports::format_comparison(c, reports::CompareFormat::kTable);
  EXPECT_NE(table.find("only in base: workload.tokens=8"), std::string::npos) << table;
  EXPECT_NE(table.find("only in candidate: workload.tokens=4096"), std::string::npos) << table;
}

TEST(ComparePairing, KeyColumnsInAnotherOrderStillPair) {
  auto base = flat("base", {"64"}), cand = flat("cand", {"64"});
  base.key_columns = {"hardware", "workload.tokens"};
  base.points[0].keys = {"ascend910b2", "64"};
  cand.key_columns = {"workload.tokens", "hardware"};
  cand.points[0].keys = {"64", "ascend910b2"};
  const auto c = reports::compare_reports(base, cand, reports::parse_thresholds({}));
  EXPECT_EQ(c.status, CompareStatus::kNoRegression);
  EXPECT_EQ(c.points.size(), 1u);
}

TEST(ComparePairing, DifferentKeyColumnsOrNoCommonPointCannotCompare) {
  auto base = flat("base", {"64"}), cand = flat("cand", {"64"});
  cand.key_columns = {"hardware"};
  auto c = reports::compare_reports(base, cand, reports::parse_thresholds({}));
  EXPECT_EQ(c.status, CompareStatus::kCannotCompare);
  EXPECT_EQ(c.exit_code(), 2);
  EXPECT_NE(c.reason.find("key columns differ"), std::string::npos) << c.reason;
  EXPECT_NE(reports::format_comparison(c, reports::CompareFormat::kTable).find("cannot compare"),
            std::string::npos);
  c = reports::compare_reports(flat("base", {"64"}), flat("cand", {"128"}),
                               reports::parse_thresholds({}));
  EXPECT_EQ(c.status, CompareStatus::kCannotCompare);
  EXPECT_NE(c.reason.find("no point"), std::string::npos) << c.reason;
}

TEST(CompareFormats, MarkdownAndJsonCarryTheVerdicts) {
  auto base = flat("base", {"100"}), cand = base;
  value(cand, 0, "cycles") = 60;
  const auto c = reports::compare_reports(base, cand, reports::parse_thresholds({}));
  const std::string md = reports::format_comparison(c, reports::CompareFormat::kMarkdown);
  EXPECT_NE(md.find("| workload.tokens | metric | base | candidate | delta | verdict |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| 100 | cycles | 50 | 60 | +20.00% | **regressed (cycles:+1%)** |"),
            std::string::npos)
      << md;
  const nlohmann::json j = reports::comparison_json(c);
  EXPECT_EQ(j["status"], 1);
  EXPECT_EQ(j["result"], "regression");
  EXPECT_EQ(j["points"][0]["keys"]["workload.tokens"], "100");
  EXPECT_EQ(j["points"][0]["metrics"][0]["metric"], "cycles");
  EXPECT_EQ(j["points"][0]["metrics"][0]["verdict"], "regressed");
  EXPECT_EQ(j["summary"]["regressed_metrics"], 1);
  EXPECT_EQ(reports::parse_compare_format("json"), reports::CompareFormat::kJson);
  EXPECT_THROW(reports::parse_compare_format("html"), ConfigError);
}

// ---- real runs: the same configs with HBM at half its bandwidth ----

const std::vector<std::string> kConfigs = {"gemv_like.yaml", "gemm_bf16_tails_validate.yaml"};

reports::SweepReport sweep_of(const std::vector<std::string>& sets) {
  reports::SweepReport s;
  s.tool_version = "test";
  s.key_columns = {"workload"};
  for (const auto& c : kConfigs) {
    reports::SweepPoint p;
    p.id = c + (sets.empty() ? "" : "+slow_hbm");
    p.keys = {std::filesystem::path(c).stem().string()};
    p.report = test::run_config(test::workload(c), sets);
    s.points.push_back(std::move(p));
  }
  return s;
}

const reports::SweepReport& base_sweep() {
  static const reports::SweepReport s = sweep_of({});
  return s;
}
const reports::SweepReport& slow_hbm_sweep() {
  static const reports::SweepReport s = sweep_of({"hardware.hbm.peak_bw_gbs=800"});
  return s;
}

TEST(CompareRealRuns, HalvingHbmBandwidthIsARegression) {
  const auto c = reports::compare_reports(
      reports::flatten_report(reports::to_json(base_sweep()), "base.json"),
      reports::flatten_report(reports::to_json(slow_hbm_sweep()), "slow.json"),
      reports::parse_thresholds({}));
  EXPECT_EQ(c.status, CompareStatus::kRegression);
  EXPECT_EQ(c.exit_code(), 1);
  ASSERT_EQ(c.points.size(), 2u);
  EXPECT_EQ(c.points[1].keys, std::vector<std::string>{"gemv_like"});
  EXPECT_EQ(delta(c, 1, "cycles").verdict, Verdict::kRegressed) << "GEMV streams B from HBM";
  EXPECT_GT(delta(c, 1, "cycles").delta, 20);
  const std::string table = reports::format_comparison(c, reports::CompareFormat::kTable);
  EXPECT_NE(table.find("result: REGRESSION"), std::string::npos) << table;
  EXPECT_NE(table.find("regressed (cycles:+1%)"), std::string::npos) << table;
  // The other way round it is an improvement, not a regression.
  const auto back =
      reports::compare_reports(reports::flatten_report(reports::to_json(slow_hbm_sweep()), "slow"),
                               reports::flatten_report(reports::to_json(base_sweep()), "base"),
                               reports::parse_thresholds({}));
  EXPECT_EQ(back.status, CompareStatus::kNoRegression);
  EXPECT_EQ(delta(back, 1, "cycles").verdict, Verdict::kImproved);
}

TEST(CompareRealRuns, IdenticalReportsPass) {
  const auto base = reports::flatten_report(reports::to_json(base_sweep()), "base.json");
  const auto c =
      reports::compare_reports(base, base, reports::parse_thresholds({"cycles:+0%", "cube:-0pp"}));
  EXPECT_EQ(c.status, CompareStatus::kNoRegression);
  EXPECT_EQ(c.regressed_metrics + c.improved_metrics, 0u);
  EXPECT_NE(
      reports::format_comparison(c, reports::CompareFormat::kTable).find("(no metric changed)"),
      std::string::npos);
}

TEST(CompareRealRuns, JsonAndHdf5OfTheSameSweepsCompareTheSame) {
  const std::string dir = test::temp_folder("compare_formats");
  reports::write_file_atomic(dir + "/base.json", reports::to_json(base_sweep()).dump(2));
  reports::write_file_atomic(dir + "/cand.json", reports::to_json(slow_hbm_sweep()).dump(2));
  reports::write_hdf5(base_sweep(), dir + "/base.h5");
  reports::write_hdf5(slow_hbm_sweep(), dir + "/cand.h5");
  const auto th = reports::parse_thresholds({"cycles:+1%", "hbm_bw:-5pp", "l2_hit_rate:1pp"});
  auto result = [&](const std::string& b, const std::string& c) {
    nlohmann::json j = reports::comparison_json(reports::compare_reports(
        reports::read_report(dir + "/" + b), reports::read_report(dir + "/" + c), th));
    j.erase("base");
    j.erase("candidate");
    return j;
  };
  const nlohmann::json json_json = result("base.json", "cand.json");
  EXPECT_EQ(json_json["status"], 1);
  EXPECT_EQ(result("base.h5", "cand.h5"), json_json);
  EXPECT_EQ(result("base.json", "cand.h5"), json_json);
  EXPECT_EQ(result("base.h5", "cand.json"), json_json);
}

TEST(CompareRealRuns, SingleRunReportsPairTheirOnePoint) {
  const std::string dir = test::temp_folder("compare_runs");
  reports::write_file_atomic(dir + "/base.json",
                             reports::to_json(base_sweep().points[0].report).dump(2));
  reports::write_file_atomic(dir + "/cand.json",
                             reports::to_json(slow_hbm_sweep().points[0].report).dump(2));
  const auto c = reports::compare_reports(reports::read_report(dir + "/base.json"),
                                          reports::read_report(dir + "/cand.json"),
                                          reports::parse_thresholds({}));
  EXPECT_EQ(c.status, CompareStatus::kRegression);
  ASSERT_EQ(c.points.size(), 1u);
  EXPECT_NE(c.points[0].base_id.find("gemv_like.yaml@ascend910b2"), std::string::npos)
      << c.points[0].base_id;
  // A run against a sweep: different key columns.
  reports::write_hdf5(base_sweep(), dir + "/sweep.h5");
  const auto mixed = reports::compare_reports(reports::read_report(dir + "/base.json"),
                                              reports::read_report(dir + "/sweep.h5"),
                                              reports::parse_thresholds({}));
  EXPECT_EQ(mixed.status, CompareStatus::kCannotCompare);
}

}  // namespace
}  // namespace npusim
