#include "app/regress.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "app/session.hpp"
#include "common/text.hpp"
#include "common/yaml_reader.hpp"
#include "reports/writers.hpp"

namespace npusim::app {
namespace fs = std::filesystem;

namespace {

constexpr const char* kBaselineFormat = "npusim-regress-baseline/1";

// "0.5%" -> 0.005
double parse_tolerance(const YamlNode& t) {
  YamlNode c = t.at("cycles");
  std::string s = c.as_string();
  if (s.empty() || s.back() != '%')
    c.fail(fmt::format("expected a percentage such as 0.5%, found '{}'", s));
  s.pop_back();
  try {
    size_t used = 0;
    const double v = std::stod(s, &used);
    if (used == s.size() && v >= 0 && std::isfinite(v)) return v / 100;
  } catch (const std::exception&) {
  }
  c.fail(fmt::format("expected a percentage >= 0 such as 0.5%, found '{}%'", s));
}

struct Baseline {
  struct Entry {
    uint64_t cycles = 0;
    double time_us = 0;
    std::vector<std::pair<std::string, uint64_t>> kernels;
  };
  std::map<std::string, Entry> cases;
};

Baseline read_baseline(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(SourceLoc{file, 0, 0, ""}, "cannot read the baseline");
  std::stringstream ss;
  ss << in.rdbuf();
  Baseline b;
  try {
    const nlohmann::json j = nlohmann::json::parse(ss.str());
    if (!j.is_object() || j.value("format", "") != kBaselineFormat)
      throw ConfigError(
          SourceLoc{file, 0, 0, "format"},
          fmt::format("not a baseline of format '{}' (regenerate it with --update-baseline)",
                      kBaselineFormat));
    // A value of the wrong type names its key path, like a config error.
    const auto field = [&](const nlohmann::json& obj, const std::string& key, const std::string& path,
                           bool (nlohmann::json::*is)() const noexcept, const char* what) -> const nlohmann::json& {
      const std::string p = path.empty() ? key : path + "." + key;
      if (!obj.is_object() || !obj.contains(key)) throw ConfigError(SourceLoc{file, 0, 0, p}, "missing key");
      const nlohmann::json& v = obj[key];
      if (!(v.*is)()) throw ConfigError(SourceLoc{file, 0, 0, p}, fmt::format("expected {}, found {}", what, v.type_name()));
      return v;
    };
    const nlohmann::json& cases = field(j, "cases", "", &nlohmann::json::is_object, "a map of cases");
    for (const auto& [name, e] : cases.items()) {
      const std::string at = "cases." + name;
      Baseline::Entry entry;
      entry.cycles = field(e, "cycles", at, &nlohmann::json::is_number_unsigned, "a cycle count").get<uint64_t>();
      entry.time_us = field(e, "time_us", at, &nlohmann::json::is_number, "a number").get<double>();
      const nlohmann::json& kernels = field(e, "kernels", at, &nlohmann::json::is_array, "a list of kernels");
      for (size_t i = 0; i < kernels.size(); ++i) {
        const std::string kat = fmt::format("{}.kernels[{}]", at, i);
        entry.kernels.emplace_back(field(kernels[i], "name", kat, &nlohmann::json::is_string, "a name").get<std::string>(),
                                   field(kernels[i], "cycles", kat, &nlohmann::json::is_number_unsigned, "a cycle count")
                                       .get<uint64_t>());
      }
      b.cases.emplace(name, std::move(entry));
    }
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(SourceLoc{file, 0, 0, ""}, fmt::format("malformed baseline: {}", e.what()));
  }
  return b;
}

std::string baseline_json(const std::string& suite, const Baseline& b) {
  nlohmann::json cases = nlohmann::json::object();
  for (const auto& [name, e] : b.cases) {
    nlohmann::json kernels = nlohmann::json::array();
    for (const auto& [k, c] : e.kernels) kernels.push_back({{"name", k}, {"cycles", c}});
    cases[name] = {{"cycles", e.cycles}, {"time_us", e.time_us}, {"kernels", kernels}};
  }
  // nlohmann::json objects are ordered maps: keys come out sorted.
  return nlohmann::json{{"format", kBaselineFormat}, {"suite", suite}, {"cases", cases}}.dump(2) +
         "\n";
}

bool within(uint64_t value, uint64_t base, const std::optional<double>& tol) {
  if (!tol) return value == base;
  const double diff = std::abs(static_cast<double>(value) - static_cast<double>(base));
  return diff <= *tol * static_cast<double>(base);
}

std::string change(uint64_t value, uint64_t base) {
  if (value == base) return "=";
  return base ? fmt::format("{:+.2f}%",
                            100.0 * (static_cast<double>(value) - static_cast<double>(base)) /
                                static_cast<double>(base))
              : "new";
}

// Checks a case's cycles (total and per kernel) against its baseline entry.
void compare(CaseResult& r, const RegressCase& c, const Baseline::Entry& b) {
  r.baseline_cycles = b.cycles;
  const std::string tol = c.tolerance ? fmt::format("within {:g}%", *c.tolerance * 100) : "exactly";
  if (!within(r.cycles, b.cycles, c.tolerance)) {
    r.failure_type = "regression";
    r.failure = fmt::format("cycles {} vs baseline {} ({}), expected {}", r.cycles, b.cycles,
                            change(r.cycles, b.cycles), tol);
    return;
  }
  if (r.kernels.size() != b.kernels.size()) {
    r.failure_type = "regression";
    r.failure = fmt::format("{} kernels vs {} in the baseline", r.kernels.size(), b.kernels.size());
    return;
  }
  for (size_t k = 0; k < r.kernels.size(); ++k) {
    const auto& [name, cycles] = r.kernels[k];
    if (name != b.kernels[k].first || !within(cycles, b.kernels[k].second, c.tolerance)) {
      r.failure_type = "regression";
      r.failure = fmt::format("kernel {} '{}': cycles {} vs baseline '{}' {} ({}), expected {}", k,
                              name, cycles, b.kernels[k].first, b.kernels[k].second,
                              change(cycles, b.kernels[k].second), tol);
      return;
    }
  }
}

CaseResult run_case(const RegressCase& c, const LoadedRun& run) {
  CaseResult r;
  r.name = c.name;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    std::vector<reports::KernelReport> kernels;
    if (run.graph)
      kernels = execute_graph(run, c.validate).kernels;
    else
      kernels.push_back((c.validate ? execute_functional(run) : execute(run)).kernel);
    r.ran = true;
    for (const auto& k : kernels) {
      r.cycles += k.cycles, r.time_us += k.time_us;
      r.kernels.emplace_back(k.name, k.cycles);
      if (c.validate && k.validation) {
        r.validation = r.validation.value_or(true) && k.validation->passed;
        if (!k.validation->passed && r.failure.empty()) {
          r.failure_type = "validation";
          r.failure = fmt::format("kernel '{}' failed validation: {}", k.name,
                                  join(k.validation->failures, "; "));
        }
      }
    }
    if (c.validate && !r.validation) {
      r.failure_type = "validation";
      r.failure = "validate: true but the run produced no validation";
    }
  } catch (const SimError& e) {
    r.failure_type = "error", r.failure = fmt::format("simulation error: {}", e.what());
  } catch (const ConfigError& e) {
    r.failure_type = "error", r.failure = fmt::format("error: {}", e.what());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}


}  // namespace

RegressSuite load_suite(const std::string& file) {
  auto doc = YamlDoc::load(file);
  YamlNode root = doc->root();
  if (!root.is_map()) root.fail("expected a map with a list of `cases`");
  RegressSuite s;
  s.file = file;
  const fs::path dir = fs::path(file).parent_path();
  s.name = root.get("name") ? root.at("name").as_string() : fs::path(file).stem().string();
  s.baseline = (dir / (root.get("baseline") ? root.at("baseline").as_string()
                                            : fs::path(file).stem().string() + ".baseline.json"))
                   .string();
  std::optional<double> default_tol;
  if (auto t = root.get("tolerance")) default_tol = parse_tolerance(*t);
  YamlNode cases = root.at("cases");
  if (cases.size() == 0) cases.fail("an empty suite: list at least one case");
  std::set<std::string> names;
  for (size_t i = 0; i < cases.size(); ++i) {
    YamlNode c = cases[i];
    if (!c.is_map()) c.fail("expected a case: {name, config, set, validate, tolerance}");
    // YamlDoc::finish() does not look inside lists, so a case's keys are checked here.
    static const std::vector<std::string> kKeys{"name", "config", "set", "validate", "tolerance"};
    for (const auto& k : c.keys())
      if (std::find(kKeys.begin(), kKeys.end(), k) == kKeys.end()) {
        SourceLoc where = c.loc();
        for (const auto& kv : c.raw())
          if (kv.first.Scalar() == k)
            where = SourceLoc{file, kv.first.Mark().line + 1, kv.first.Mark().column + 1, ""};
        where.key_path = fmt::format("cases[{}].{}", i, k);
        const std::string hint = did_you_mean(k, kKeys);
        throw ConfigError(where,
                          fmt::format("unknown key '{}'{}", k,
                                      hint.empty() ? "; known keys here: " + join(kKeys) : hint));
      }
    RegressCase rc;
    rc.loc = c.loc();
    YamlNode name = c.at("name");
    rc.name = name.as_string();
    if (rc.name.empty() || !names.insert(rc.name).second)
      name.fail(fmt::format("case name '{}' is empty or repeated", rc.name));
    YamlNode config = c.at("config");
    rc.config = (dir / config.as_string()).string();
    if (std::error_code ec; !fs::is_regular_file(rc.config, ec))
      config.fail(
          fmt::format("config '{}' not found (looked for {})", config.as_string(), rc.config));
    if (auto sets = c.get("set")) {
      for (size_t k = 0; k < sets->size(); ++k) {
        rc.sets.push_back((*sets)[k].as_string());
        rc.set_locs.push_back((*sets)[k].loc());
      }
    }
    if (auto v = c.get("validate")) rc.validate = v->as_bool();
    rc.tolerance = default_tol;
    if (auto t = c.get("tolerance")) rc.tolerance = parse_tolerance(*t);
    s.cases.push_back(std::move(rc));
  }
  doc->finish();
  return s;
}

std::string junit_xml(const RegressSuite& suite, const std::vector<CaseResult>& results,
                      double seconds) {
  size_t failures = 0, errors = 0;
  for (const auto& r : results) (r.ran ? failures : errors) += !r.passed;
  const std::string head = fmt::format("tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3f}\"",
                                       results.size(), failures, errors, seconds);
  std::string x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  x += fmt::format("<testsuites name=\"npusim regress\" {}>\n", head);
  x += fmt::format("  <testsuite name=\"{}\" {}>\n", escape_markup(suite.name), head);
  for (const auto& r : results) {
    x += fmt::format("    <testcase classname=\"npusim.regress.{}\" name=\"{}\" time=\"{:.3f}\"",
                     escape_markup(suite.name), escape_markup(r.name), r.seconds);
    if (r.passed) {
      x += "/>\n";
      continue;
    }
    const char* tag = r.ran ? "failure" : "error";
    x += fmt::format(">\n      <{} type=\"{}\" message=\"{}\">{}</{}>\n    </testcase>\n", tag,
                     escape_markup(r.failure_type), escape_markup(r.failure), escape_markup(r.failure), tag);
  }
  x += "  </testsuite>\n</testsuites>\n";
  return x;
}

int run_regress(const std::string& suite_file, const RegressOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const RegressSuite suite = load_suite(suite_file);
  const std::string baseline_file = opt.baseline.empty() ? suite.baseline : opt.baseline;
  Baseline baseline;
  if (std::error_code ec; fs::exists(baseline_file, ec))
    baseline = read_baseline(baseline_file);
  else if (!opt.update)
    throw ConfigError(
        SourceLoc{baseline_file, 0, 0, ""},
        fmt::format("baseline not found; create it with: npusim regress {} --update-baseline",
                    suite_file));
  // Every case is loaded (and checked) before any runs.
  std::vector<LoadedRun> runs;
  for (const auto& c : suite.cases) {
    try {
      runs.push_back(load_run(c.config, c.sets));
    } catch (const ConfigError& e) {
      SourceLoc where = c.loc;
      for (size_t k = 0; k < c.sets.size(); ++k)
        if (e.loc().file == "--set " + c.sets[k]) where = c.set_locs[k];
      where.key_path.clear();
      throw ConfigError(where, fmt::format("case '{}': {}", c.name, e.what()));
    }
  }

  std::vector<CaseResult> results;
  for (size_t i = 0; i < suite.cases.size(); ++i) {
    const RegressCase& c = suite.cases[i];
    CaseResult r = run_case(c, runs[i]);
    if (r.ran && r.failure.empty() && !opt.update) {
      if (auto it = baseline.cases.find(c.name); it != baseline.cases.end()) {
        compare(r, c, it->second);
      } else {
        r.failure_type = "missing-baseline";
        r.failure =
            fmt::format("no baseline entry in {} (add it with --update-baseline)", baseline_file);
      }
    } else if (auto it = baseline.cases.find(c.name); it != baseline.cases.end()) {
      r.baseline_cycles = it->second.cycles;
    }
    r.passed = r.failure.empty();
    results.push_back(std::move(r));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // The table.
  size_t w = 4;
  for (const auto& r : results) w = std::max(w, r.name.size());
  fmt::print("{:<{}}  {:>12}  {:>12}  {:>8}  {:>10}  {:>7}  {}\n", "case", w, "cycles", "baseline",
             "change", "validation", "wall s", "result");
  size_t failed = 0;
  for (const auto& r : results) {
    failed += !r.passed;
    fmt::print("{:<{}}  {:>12}  {:>12}  {:>8}  {:>10}  {:>7.2f}  {}\n", r.name, w,
               r.ran ? std::to_string(r.cycles) : "-",
               r.baseline_cycles ? std::to_string(*r.baseline_cycles) : "-",
               r.ran && r.baseline_cycles ? change(r.cycles, *r.baseline_cycles) : "",
               r.validation ? (*r.validation ? "passed" : "FAILED") : "-", r.seconds,
               r.passed ? "PASS" : "FAIL: " + r.failure);
  }

  if (opt.update) {
    // Cases that ran and validated take their new figures; the others keep their old entry.
    Baseline next;
    std::vector<std::string> diff;
    for (size_t i = 0; i < results.size(); ++i) {
      const CaseResult& r = results[i];
      auto old = baseline.cases.find(r.name);
      if (!r.passed) {
        if (old != baseline.cases.end()) next.cases.emplace(r.name, old->second);
        diff.push_back(fmt::format("  {}: kept ({})", r.name, r.failure));
        continue;
      }
      next.cases[r.name] = {r.cycles, r.time_us, r.kernels};
      if (old == baseline.cases.end())
        diff.push_back(fmt::format("  {}: new, {} cycles", r.name, r.cycles));
      else if (old->second.cycles != r.cycles || old->second.kernels != r.kernels)
        diff.push_back(fmt::format("  {}: {} -> {} cycles ({})", r.name, old->second.cycles,
                                   r.cycles, change(r.cycles, old->second.cycles)));
    }
    for (const auto& [name, e] : baseline.cases)
      if (!next.cases.count(name) && std::none_of(suite.cases.begin(), suite.cases.end(),
                                                  [&](const auto& c) { return c.name == name; }))
        diff.push_back(fmt::format("  {}: removed (was {} cycles)", name, e.cycles));
    try {
      reports::write_file_atomic(baseline_file, baseline_json(suite.name, next));
    } catch (const std::runtime_error& e) {
      throw ConfigError(e.what());
    }
    fmt::print("baseline {} updated: {}\n", baseline_file,
               diff.empty() ? "no change" : fmt::format("{} change(s)", diff.size()));
    for (const auto& d : diff) fmt::print("{}\n", d);
  }
  if (!opt.junit.empty()) {
    try {
      reports::write_file_atomic(opt.junit, junit_xml(suite, results, seconds));
    } catch (const std::runtime_error& e) {
      throw ConfigError(e.what());
    }
  }
  fmt::print("{} of {} cases passed in {:.1f} s\n", results.size() - failed, results.size(),
             seconds);
  return failed ? kExitMismatch : kExitOk;
}

}  // namespace npusim::app
