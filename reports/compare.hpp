// Compares two reports point by point (`npusim compare BASE CAND --fail cycles:+2%`): points are
// paired by their key column values, each metric gets a delta and a verdict against the
// thresholds, and the result is a status for the exit code (0 no regression, 1 regression,
// 2 cannot compare) and a table, Markdown or JSON rendering.
//
// Thresholds ("--fail"): `metric:+X%` fails when the metric rises by more than X percent of the
// base value, `metric:-X%` when it falls by more than that; `metric:+Xpp` / `metric:-Xpp` use
// absolute percentage points, for 0..1 fractions (2pp = 0.02); `metric:X%` (no sign) means the
// metric's worse direction. Without any --fail: kDefaultThresholds.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "reports/report_reader.hpp"

namespace npusim::reports {

enum class Direction { kLowerIsBetter, kHigherIsBetter, kInformational };

// cycles, times, HBM bytes: lower is better; throughput, utilization, L2 hit rate, validation:
// higher is better; kernels, flops and metrics npusim does not know: informational.
Direction metric_direction(const std::string& metric);

enum class DeltaUnit { kPercent, kPoints };  // relative to the base value, or absolute x 100

struct Threshold {
  std::string metric;
  int sign = +1;  // +1: fails when the metric rises by more than `amount`; -1: when it falls
  double amount = 0;
  DeltaUnit unit = DeltaUnit::kPercent;
  std::string text;  // as given ("cycles:+2%")
};

// A cycle or time rise above 1%, or a validation that passed and now fails.
inline const std::vector<std::string> kDefaultThresholds = {"cycles:+1%", "time_us:+1%",
                                                            "validation_passed:-0pp"};

// Parses one --fail argument; throws ConfigError naming the argument (malformed, unknown metric
// with the known ones, or no sign on an informational metric).
Threshold parse_threshold(const std::string& arg);
// The thresholds for these --fail arguments, or kDefaultThresholds when there are none.
std::vector<Threshold> parse_thresholds(const std::vector<std::string>& args);

enum class Verdict {
  kOk,         // every threshold on the metric holds
  kRegressed,  // a threshold fails
  kImproved,   // moved the better way by more than a threshold allows the worse way
  kUnchecked,  // no threshold names the metric
  kMissing,    // no value on one side (NaN), so no verdict
};
const char* verdict_name(Verdict v);  // "ok", "regressed", "improved", "-", "n/a"

struct MetricDelta {
  std::string metric;
  double base = 0, candidate = 0;
  double delta = 0;  // candidate - base, in `unit`: percent of base, or percentage points
  DeltaUnit unit = DeltaUnit::kPercent;
  Verdict verdict = Verdict::kUnchecked;
  std::string failed;  // the threshold that failed, if any
};

struct PointComparison {
  std::vector<std::string> keys;  // aligned with Comparison::key_columns
  std::string base_id, candidate_id;
  std::vector<MetricDelta> metrics;  // in Comparison::metrics order
  bool regressed = false, improved = false;
};

struct UnpairedPoint {
  std::vector<std::string> keys;
  std::string id;
};

enum class CompareStatus { kNoRegression = 0, kRegression = 1, kCannotCompare = 2 };

struct Comparison {
  CompareStatus status = CompareStatus::kCannotCompare;
  std::string reason;  // why it cannot compare
  std::string base_source, candidate_source;
  std::vector<std::string> key_columns;
  std::vector<std::string> metrics;  // compared: in both reports, base order
  std::vector<std::string> thresholds;
  std::vector<PointComparison> points;  // sorted by key values (numbers numerically)
  std::vector<UnpairedPoint> only_base, only_candidate;
  size_t regressed_points = 0, improved_points = 0, regressed_metrics = 0, improved_metrics = 0;

  int exit_code() const { return static_cast<int>(status); }
};

// Pairs the points by key values: the reports must have the same key columns (in any order) and
// share at least one point, else the status is kCannotCompare with a reason. Points with equal
// keys in one report (e.g. a repeated config) pair in file order.
Comparison compare_reports(const FlatReport& base, const FlatReport& candidate,
                           const std::vector<Threshold>& thresholds);

enum class CompareFormat { kTable, kMarkdown, kJson };
// "table" | "markdown" | "json"; anything else is a ConfigError listing them.
CompareFormat parse_compare_format(const std::string& name);

struct FormatOptions {
  bool all_metrics = false;  // table/Markdown: every metric of every point, not only the changed
};
// Aligned text or a Markdown table of the changed metrics, then the unpaired points and a summary
// line with the verdict.
std::string format_comparison(const Comparison& c, CompareFormat format,
                              const FormatOptions& opt = {});
// Every metric of every pair; NaN as null.
nlohmann::json comparison_json(const Comparison& c);

}  // namespace npusim::reports
