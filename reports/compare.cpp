#include "reports/compare.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <string_view>

#include "common/errors.hpp"
#include "common/text.hpp"
#include "reports/sweep_report.hpp"
#include "reports/writers.hpp"

namespace npusim::reports {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool is_fraction(const std::string& m) {
  static const std::set<std::string, std::less<>> kFractions = {
      "cube",        "vector",           "mte1", "mte2", "mte3", "fixpipe", "hbm_bw",
      "l2_hit_rate", "validation_passed"};
  return kFractions.contains(m);
}

// Utilization-like fractions change in percentage points; everything else relative to its base.
DeltaUnit natural_unit(const std::string& m) {
  return is_fraction(m) ? DeltaUnit::kPoints : DeltaUnit::kPercent;
}

const char* unit_suffix(DeltaUnit u) {
  return u == DeltaUnit::kPercent ? "%" : "pp";
}

double change(double base, double cand, DeltaUnit unit) {
  if (std::isnan(base) || std::isnan(cand)) return kNaN;
  if (base == cand) return 0;
  if (unit == DeltaUnit::kPoints) return (cand - base) * 100;
  if (base == 0) return std::copysign(std::numeric_limits<double>::infinity(), cand - base);
  return (cand - base) / std::fabs(base) * 100;
}

// The sign of a change that makes the metric worse (0: no direction).
int worse_sign(const std::string& m) {
  switch (metric_direction(m)) {
    case Direction::kLowerIsBetter:
      return +1;
    case Direction::kHigherIsBetter:
      return -1;
    case Direction::kInformational:
      return 0;
  }
  return 0;
}

MetricDelta evaluate(const std::string& metric, double base, double cand,
                     const std::vector<const Threshold*>& thresholds) {
  MetricDelta d;
  d.metric = metric;
  d.base = base;
  d.candidate = cand;
  d.unit = thresholds.empty() ? natural_unit(metric) : thresholds.front()->unit;
  d.delta = change(base, cand, d.unit);
  if (std::isnan(base) != std::isnan(cand)) {
    d.verdict = Verdict::kMissing;
    return d;
  }
  if (thresholds.empty()) {
    d.verdict = Verdict::kUnchecked;
    return d;
  }
  d.verdict = Verdict::kOk;
  if (std::isnan(base)) return d;  // no value on either side: nothing to hold against
  for (const Threshold* t : thresholds) {
    const double c = change(base, cand, t->unit);
    if (t->sign > 0 ? c > t->amount : c < -t->amount) {
      d.verdict = Verdict::kRegressed;
      d.failed = t->text;
      return d;
    }
  }
  // Improved: past a worse-way threshold's amount, the other way.
  const int worse = worse_sign(metric);
  for (const Threshold* t : thresholds) {
    const double c = change(base, cand, t->unit);
    if (worse != 0 && t->sign == worse && (worse > 0 ? c < -t->amount : c > t->amount))
      d.verdict = Verdict::kImproved;
  }
  return d;
}

// Key values compare as numbers when both are numbers, so tokens 64 sorts before 512.
bool key_less(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (a[i] == b[i]) continue;
    char *ea = nullptr, *eb = nullptr;
    const double x = std::strtod(a[i].c_str(), &ea), y = std::strtod(b[i].c_str(), &eb);
    const bool numbers = !a[i].empty() && !b[i].empty() && *ea == '\0' && *eb == '\0';
    if (numbers && x != y) return x < y;
    return a[i] < b[i];
  }
  return a.size() < b.size();
}

std::string key_label(const std::vector<std::string>& cols, const std::vector<std::string>& keys,
                      const std::string& id) {
  if (cols.empty()) return id;
  std::string out;
  for (size_t i = 0; i < cols.size(); ++i)
    out += fmt::format("{}{}={}", i ? ", " : "", cols[i], keys[i]);
  return out;
}

std::string value_text(double v) {
  if (std::isnan(v)) return "n/a";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{:.6g}", v);
}

std::string delta_text(const MetricDelta& d) {
  if (std::isnan(d.delta)) return "n/a";
  if (std::isinf(d.delta))
    return fmt::format("{}inf{}", d.delta > 0 ? "+" : "-", unit_suffix(d.unit));
  const double a = std::fabs(d.delta);
  return a == 0 || a >= 0.01 ? fmt::format("{:+.2f}{}", d.delta, unit_suffix(d.unit))
                             : fmt::format("{:+.2g}{}", d.delta, unit_suffix(d.unit));
}

bool changed(const MetricDelta& d) {
  return !(d.base == d.candidate || (std::isnan(d.base) && std::isnan(d.candidate)));
}

bool shown(const MetricDelta& d, const FormatOptions& opt) {
  return opt.all_metrics || changed(d) || d.verdict == Verdict::kRegressed ||
         d.verdict == Verdict::kImproved || d.verdict == Verdict::kMissing;
}

std::string summary_line(const Comparison& c) {
  auto n = [](size_t count, const char* what) {
    return fmt::format("{} {}{}", count, what, count == 1 ? "" : "s");
  };
  return fmt::format(
      "{} paired, {} only in base, {} only in candidate; regressed: {} in {}, improved: {} in "
      "{} (thresholds: {})",
      n(c.points.size(), "point"), c.only_base.size(), c.only_candidate.size(),
      n(c.regressed_metrics, "metric"), n(c.regressed_points, "point"),
      n(c.improved_metrics, "metric"), n(c.improved_points, "point"), join(c.thresholds));
}

std::string status_line(const Comparison& c) {
  switch (c.status) {
    case CompareStatus::kNoRegression:
      return "result: no regression";
    case CompareStatus::kRegression:
      return "result: REGRESSION";
    case CompareStatus::kCannotCompare:
      return "result: cannot compare: " + c.reason;
  }
  return "";
}

// Rows of cells: the header, then one per shown metric of each point.
std::vector<std::vector<std::string>> table_rows(const Comparison& c, const FormatOptions& opt,
                                                 bool markdown) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> header =
      c.key_columns.empty() ? std::vector<std::string>{"point"} : c.key_columns;
  for (const char* h : {"metric", "base", "candidate", "delta", "verdict"}) header.push_back(h);
  rows.push_back(header);
  for (const auto& p : c.points)
    for (const auto& d : p.metrics) {
      if (!shown(d, opt)) continue;
      std::vector<std::string> row =
          c.key_columns.empty() ? std::vector<std::string>{p.base_id} : p.keys;
      std::string verdict = verdict_name(d.verdict);
      if (!d.failed.empty()) verdict += " (" + d.failed + ")";
      if (markdown && d.verdict == Verdict::kRegressed) verdict = "**" + verdict + "**";
      for (std::string cell :
           {d.metric, value_text(d.base), value_text(d.candidate), delta_text(d), verdict})
        row.push_back(std::move(cell));
      rows.push_back(std::move(row));
    }
  return rows;
}

std::string markdown_cell(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '|') out += '\\';
    out += ch == '\n' ? ' ' : ch;
  }
  return out;
}

// "only in base: tokens=64" lines, one per unpaired point.
std::string unpaired_lines(const Comparison& c, const char* bullet, bool markdown) {
  std::string out;
  for (const auto* list : {&c.only_base, &c.only_candidate})
    for (const auto& u : *list) {
      const std::string label = key_label(c.key_columns, u.keys, u.id);
      out += fmt::format("{}only in {}: {}\n", bullet, list == &c.only_base ? "base" : "candidate",
                         markdown ? markdown_cell(label) : label);
    }
  return out;
}

std::string format_text(const Comparison& c, const FormatOptions& opt) {
  std::string out =
      fmt::format("base:      {}\ncandidate: {}\n", c.base_source, c.candidate_source);
  if (c.status != CompareStatus::kCannotCompare) {
    const auto rows = table_rows(c, opt, false);
    const size_t keys = std::max<size_t>(1, c.key_columns.size());
    // Code points, as fmt pads UTF-8 text.
    auto text_width = [](const std::string& s) {
      return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char ch) {
        return (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
      }));
    };
    std::vector<size_t> width(rows.front().size(), 0);
    for (const auto& r : rows)
      for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], text_width(r[i]));
    for (const auto& r : rows) {
      if (rows.size() == 1) break;  // no rows: no header either
      std::string line;
      for (size_t i = 0; i < r.size(); ++i) {
        const bool number = i > keys && i < keys + 4;  // base, candidate, delta
        line +=
            number ? fmt::format("{:>{}}", r[i], width[i]) : fmt::format("{:<{}}", r[i], width[i]);
        if (i + 1 < r.size()) line += "  ";
      }
      line.erase(line.find_last_not_of(' ') + 1);
      out += line + "\n";
    }
    if (rows.size() == 1) out += "(no metric changed)\n";
    out += unpaired_lines(c, "", false);
    out += summary_line(c) + "\n";
  }
  return out + status_line(c) + "\n";
}

std::string format_markdown(const Comparison& c, const FormatOptions& opt) {
  std::string out =
      fmt::format("**{}** (base `{}`, candidate `{}`)\n\n", markdown_cell(status_line(c).substr(8)),
                  c.base_source, c.candidate_source);
  if (c.status == CompareStatus::kCannotCompare) return out;
  const auto rows = table_rows(c, opt, true);
  if (rows.size() == 1) {
    out += "No metric changed.\n\n";
  } else {
    const size_t keys = std::max<size_t>(1, c.key_columns.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      out += "|";
      for (const auto& cell : rows[r]) {
        out += ' ';
        out += markdown_cell(cell);
        out += " |";
      }
      out += "\n";
      if (r == 0) {
        out += "|";
        for (size_t i = 0; i < rows[r].size(); ++i)
          out += i > keys && i < keys + 4 ? "---:|" : "---|";
        out += "\n";
      }
    }
    out += "\n";
  }
  out += unpaired_lines(c, "- ", true);
  return out + "\n" + markdown_cell(summary_line(c)) + "\n";
}

nlohmann::json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

nlohmann::json keys_json(const Comparison& c, const std::vector<std::string>& keys) {
  nlohmann::json k = nlohmann::json::object();
  for (size_t i = 0; i < c.key_columns.size(); ++i) k[c.key_columns[i]] = keys[i];
  return k;
}

}  // namespace

Direction metric_direction(const std::string& metric) {
  static const std::set<std::string, std::less<>> kLower = {"cycles", "time_us", "critical_path_us",
                                                            "hbm_read_bytes", "hbm_write_bytes"};
  static const std::set<std::string, std::less<>> kHigher = {
      "tflops", "cube",    "vector", "mte1",        "mte2",
      "mte3",   "fixpipe", "hbm_bw", "l2_hit_rate", "validation_passed"};
  if (kLower.contains(metric)) return Direction::kLowerIsBetter;
  if (kHigher.contains(metric)) return Direction::kHigherIsBetter;
  return Direction::kInformational;
}

Threshold parse_threshold(const std::string& arg) {
  auto bad = [&](const std::string& why) {
    return ConfigError(fmt::format("--fail '{}': {}", arg, why));
  };
  const size_t colon = arg.find(':');
  if (colon == std::string::npos || colon == 0)
    throw bad("expected METRIC:[+|-]X% or METRIC:[+|-]Xpp, e.g. cycles:+2% or cube:-2pp");
  Threshold t;
  t.metric = arg.substr(0, colon);
  t.text = arg;
  const auto& known = point_metric_names();
  if (std::find(known.begin(), known.end(), t.metric) == known.end())
    throw bad(fmt::format("unknown metric '{}'{}; known: {}", t.metric,
                          did_you_mean(t.metric, known), join(known)));
  std::string_view v = std::string_view(arg).substr(colon + 1);
  if (v.ends_with("pp")) {
    t.unit = DeltaUnit::kPoints;
    v.remove_suffix(2);
  } else if (v.ends_with("%")) {
    t.unit = DeltaUnit::kPercent;
    v.remove_suffix(1);
  } else {
    throw bad("the amount needs a unit: % (relative to the base) or pp (percentage points)");
  }
  int sign = 0;
  if (!v.empty() && (v.front() == '+' || v.front() == '-')) {
    sign = v.front() == '+' ? +1 : -1;
    v.remove_prefix(1);
  }
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), t.amount);
  if (v.empty() || ec != std::errc() || end != v.data() + v.size() || !std::isfinite(t.amount) ||
      t.amount < 0)
    throw bad(fmt::format("'{}' is not an amount (a number >= 0)", v));
  t.sign = sign != 0 ? sign : worse_sign(t.metric);
  if (t.sign == 0)
    throw bad(
        fmt::format("'{}' has no better direction; say which change fails with + or -", t.metric));
  return t;
}

std::vector<Threshold> parse_thresholds(const std::vector<std::string>& args) {
  std::vector<Threshold> out;
  for (const auto& a : args.empty() ? kDefaultThresholds : args) out.push_back(parse_threshold(a));
  return out;
}

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::kOk:
      return "ok";
    case Verdict::kRegressed:
      return "regressed";
    case Verdict::kImproved:
      return "improved";
    case Verdict::kUnchecked:
      return "-";
    case Verdict::kMissing:
      return "n/a";
  }
  return "?";
}

Comparison compare_reports(const FlatReport& base, const FlatReport& cand,
                           const std::vector<Threshold>& thresholds) {
  Comparison c;
  c.base_source = base.source;
  c.candidate_source = cand.source;
  c.key_columns = base.key_columns;
  for (const auto& t : thresholds) c.thresholds.push_back(t.text);
  auto cannot = [&](std::string reason) {
    c.status = CompareStatus::kCannotCompare;
    c.reason = std::move(reason);
    return c;
  };

  // The candidate's key columns in the base's order.
  std::vector<size_t> perm;
  if (std::set(base.key_columns.begin(), base.key_columns.end()) !=
          std::set(cand.key_columns.begin(), cand.key_columns.end()) ||
      base.key_columns.size() != cand.key_columns.size())
    return cannot(fmt::format("the key columns differ (base: [{}], candidate: [{}])",
                              join(base.key_columns), join(cand.key_columns)));
  for (const auto& k : base.key_columns)
    perm.push_back(std::find(cand.key_columns.begin(), cand.key_columns.end(), k) -
                   cand.key_columns.begin());

  std::vector<std::pair<size_t, size_t>> metric_pairs;  // index in base, in candidate
  for (size_t i = 0; i < base.metric_names.size(); ++i)
    if (auto j = cand.metric_index(base.metric_names[i])) {
      c.metrics.push_back(base.metric_names[i]);
      metric_pairs.emplace_back(i, *j);
    }
  if (c.metrics.empty()) return cannot("the reports have no metric in common");

  std::map<std::vector<std::string>, std::vector<size_t>> cand_by_keys;  // in file order
  for (size_t i = 0; i < cand.points.size(); ++i) {
    std::vector<std::string> keys;
    for (size_t k : perm) keys.push_back(cand.points[i].keys[k]);
    cand_by_keys[keys].push_back(i);
  }
  std::map<std::vector<std::string>, size_t> used;
  std::vector<bool> cand_paired(cand.points.size(), false);
  std::map<std::string, std::vector<const Threshold*>> by_metric;
  for (const auto& t : thresholds) by_metric[t.metric].push_back(&t);

  for (const auto& bp : base.points) {
    auto it = cand_by_keys.find(bp.keys);
    size_t& n = used[bp.keys];
    if (it == cand_by_keys.end() || n >= it->second.size()) {
      c.only_base.push_back({bp.keys, bp.id});
      continue;
    }
    const auto& cp = cand.points[it->second[n]];
    cand_paired[it->second[n]] = true;
    ++n;
    PointComparison pc;
    pc.keys = bp.keys;
    pc.base_id = bp.id;
    pc.candidate_id = cp.id;
    for (size_t m = 0; m < metric_pairs.size(); ++m) {
      const auto& [bi, ci] = metric_pairs[m];
      const auto t = by_metric.find(c.metrics[m]);
      MetricDelta d = evaluate(c.metrics[m], bp.metrics[bi], cp.metrics[ci],
                               t == by_metric.end() ? std::vector<const Threshold*>{} : t->second);
      if (d.verdict == Verdict::kRegressed) ++c.regressed_metrics, pc.regressed = true;
      if (d.verdict == Verdict::kImproved) ++c.improved_metrics, pc.improved = true;
      pc.metrics.push_back(std::move(d));
    }
    c.regressed_points += pc.regressed ? 1 : 0;
    c.improved_points += pc.improved ? 1 : 0;
    c.points.push_back(std::move(pc));
  }
  for (size_t i = 0; i < cand.points.size(); ++i)
    if (!cand_paired[i]) {
      std::vector<std::string> keys;
      for (size_t k : perm) keys.push_back(cand.points[i].keys[k]);
      c.only_candidate.push_back({keys, cand.points[i].id});
    }

  // Deterministic order: by key values, then ids (stable keeps file order among equal keys).
  std::stable_sort(
      c.points.begin(), c.points.end(),
      [](const PointComparison& a, const PointComparison& b) { return key_less(a.keys, b.keys); });
  for (auto* list : {&c.only_base, &c.only_candidate})
    std::stable_sort(
        list->begin(), list->end(),
        [](const UnpairedPoint& a, const UnpairedPoint& b) { return key_less(a.keys, b.keys); });

  if (c.points.empty())
    return cannot("no point of the base has the key values of a candidate point");
  c.status = c.regressed_metrics > 0 ? CompareStatus::kRegression : CompareStatus::kNoRegression;
  return c;
}

CompareFormat parse_compare_format(const std::string& name) {
  if (name == "table") return CompareFormat::kTable;
  if (name == "markdown") return CompareFormat::kMarkdown;
  if (name == "json") return CompareFormat::kJson;
  throw ConfigError(fmt::format("--format '{}': unknown format{}; known: table, markdown, json",
                                name, did_you_mean(name, {"table", "markdown", "json"})));
}

std::string format_comparison(const Comparison& c, CompareFormat format, const FormatOptions& opt) {
  switch (format) {
    case CompareFormat::kTable:
      return format_text(c, opt);
    case CompareFormat::kMarkdown:
      return format_markdown(c, opt);
    case CompareFormat::kJson:
      // Text from an HDF5 report is not checked for UTF-8: a bad byte prints as U+FFFD, not an error.
      return json_text(comparison_json(c));
  }
  return "";
}

nlohmann::json comparison_json(const Comparison& c) {
  static const char* const kResult[] = {"no regression", "regression", "cannot compare"};
  nlohmann::json points = nlohmann::json::array();
  for (const auto& p : c.points) {
    nlohmann::json metrics = nlohmann::json::array();
    for (const auto& d : p.metrics) {
      nlohmann::json m = {{"metric", d.metric},
                          {"base", number_or_null(d.base)},
                          {"candidate", number_or_null(d.candidate)},
                          {"delta", number_or_null(d.delta)},
                          {"unit", unit_suffix(d.unit)},
                          {"verdict", verdict_name(d.verdict)}};
      if (std::isinf(d.delta)) m["delta"] = d.delta > 0 ? "+inf" : "-inf";
      if (!d.failed.empty()) m["failed"] = d.failed;
      metrics.push_back(std::move(m));
    }
    points.push_back({{"keys", keys_json(c, p.keys)},
                      {"base_id", p.base_id},
                      {"candidate_id", p.candidate_id},
                      {"regressed", p.regressed},
                      {"improved", p.improved},
                      {"metrics", metrics}});
  }
  auto unpaired = [&](const std::vector<UnpairedPoint>& list) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& u : list) out.push_back({{"keys", keys_json(c, u.keys)}, {"id", u.id}});
    return out;
  };
  return {{"status", c.exit_code()},
          {"result", kResult[c.exit_code()]},
          {"reason", c.reason},
          {"base", c.base_source},
          {"candidate", c.candidate_source},
          {"key_columns", c.key_columns},
          {"metrics", c.metrics},
          {"thresholds", c.thresholds},
          {"summary",
           {{"paired", c.points.size()},
            {"only_base", c.only_base.size()},
            {"only_candidate", c.only_candidate.size()},
            {"regressed_points", c.regressed_points},
            {"improved_points", c.improved_points},
            {"regressed_metrics", c.regressed_metrics},
            {"improved_metrics", c.improved_metrics}}},
          {"points", points},
          {"only_base", unpaired(c.only_base)},
          {"only_candidate", unpaired(c.only_candidate)}};
}

}  // namespace npusim::reports
