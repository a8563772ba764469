// The readers: a run report from its JSON (run_report_from_json, declared in sweep_report.hpp) and
// the flat view of any report file that compare reads (JSON of a run or a sweep, HDF5 of a sweep).
#include "reports/report_reader.hpp"

#include <fmt/format.h>
#include <hdf5.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "reports/result.hpp"
#include "reports/sweep_report.hpp"

namespace npusim::reports {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- a run report from its JSON ----

[[noreturn]] void bad_key(const std::string& path, const std::string& what) {
  throw std::runtime_error(fmt::format("run report: '{}' {}", path, what));
}

// One JSON object of a run report; every error names the key path ("kernels[2].bytes.gm_read").
class Fields {
 public:
  Fields(const nlohmann::json& j, std::string path) : j_(j), path_(std::move(path)) {
    if (!j_.is_object())
      bad_key(path_.empty() ? "(top level)" : path_,
              fmt::format("should be an object, found {}", j_.type_name()));
  }
  std::string path(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  bool has(std::string_view key) const { return j_.contains(key); }
  const nlohmann::json& at(std::string_view key) const {
    auto it = j_.find(key);
    if (it == j_.end()) bad_key(path(key), "is missing");
    return *it;
  }
  Fields object(std::string_view key) const { return Fields(at(key), path(key)); }
  std::string str(std::string_view key) const {
    const auto& v = at(key);
    if (!v.is_string()) mistyped(key, "a string");
    return v.get<std::string>();
  }
  bool boolean(std::string_view key) const {
    const auto& v = at(key);
    if (!v.is_boolean()) mistyped(key, "true or false");
    return v.get<bool>();
  }
  // NaN and infinities are written as null.
  double number(std::string_view key) const {
    const auto& v = at(key);
    if (v.is_null()) return kNaN;
    if (!v.is_number()) mistyped(key, "a number");
    return v.get<double>();
  }
  uint64_t unsigned_int(std::string_view key) const {
    const auto& v = at(key);
    if (v.is_number_unsigned()) return v.get<uint64_t>();
    if (v.is_number_integer() && v.get<int64_t>() >= 0) return v.get<uint64_t>();
    mistyped(key, "an unsigned integer");
  }
  int64_t integer(std::string_view key) const {
    const auto& v = at(key);
    if (!v.is_number_integer()) mistyped(key, "an integer");
    return v.get<int64_t>();
  }
  const nlohmann::json& array(std::string_view key) const {
    const auto& v = at(key);
    if (!v.is_array()) mistyped(key, "an array");
    return v;
  }
  std::vector<std::string> strings(std::string_view key) const {
    std::vector<std::string> out;
    const auto& a = array(key);
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_string())
        bad_key(fmt::format("{}[{}]", path(key), i),
                fmt::format("should be a string, found {}", a[i].type_name()));
      out.push_back(a[i].get<std::string>());
    }
    return out;
  }
  const nlohmann::json& json() const { return j_; }

 private:
  [[noreturn]] void mistyped(std::string_view key, const char* expected) const {
    bad_key(path(key), fmt::format("should be {}, found {}", expected, at(key).type_name()));
  }
  const nlohmann::json& j_;
  std::string path_;
};

Fields element(const Fields& parent, std::string_view key, size_t i) {
  return Fields(parent.array(key)[i], fmt::format("{}[{}]", parent.path(key), i));
}

ValidationReport validation_from_json(const Fields& f) {
  ValidationReport v;
  v.passed = f.boolean("passed");
  v.max_abs_err = f.number("max_abs_err");
  v.max_rel_err = f.number("max_rel_err");
  v.cos_diff = f.number("cos_diff");
  v.mere = f.number("mere");
  v.mare = f.number("mare");
  v.ratio_to_same_precision = f.number("ratio_to_same_precision");
  v.tolerance = f.at("tolerance");
  v.elements = f.unsigned_int("elements");
  v.failed_elements = f.unsigned_int("failed_elements");
  v.nonfinite_mismatches = f.unsigned_int("nonfinite_mismatches");
  v.failures = f.strings("failures");
  for (size_t i = 0; i < f.array("worst").size(); ++i) {
    Fields w = element(f, "worst", i);
    v.worst.push_back({w.unsigned_int("index"), w.integer("row"), w.integer("col"),
                       w.number("device"), w.number("golden"), w.number("abs_err")});
  }
  if (f.has("outputs")) {
    Fields outs = f.object("outputs");
    for (const auto& [name, o] : outs.json().items())
      v.outputs.push_back({name, validation_from_json(outs.object(name))});
  }
  return v;
}

KernelReport kernel_from_json(const Fields& f) {
  static const std::set<std::string, std::less<>> kKnown = {
      "name",    "op",    "tiling",      "tiling_default", "cycles",
      "time_us", "flops", "tflops",      "peak_fraction",  "instructions",
      "cores",   "bytes", "utilization", "validation"};
  KernelReport k;
  k.name = f.str("name");
  k.op = f.str("op");
  k.tiling = f.at("tiling");
  k.tiling_default = f.boolean("tiling_default");
  k.cycles = f.unsigned_int("cycles");
  k.time_us = f.number("time_us");
  k.flops = f.number("flops");
  k.tflops = f.number("tflops");
  k.peak_fraction = f.number("peak_fraction");
  k.instructions = f.unsigned_int("instructions");
  Fields cores = f.object("cores");
  k.aic_used = static_cast<int>(cores.integer("aic"));
  k.aiv_used = static_cast<int>(cores.integer("aiv"));
  Fields bytes = f.object("bytes");
  k.bytes.gm_read = bytes.unsigned_int("gm_read");
  k.bytes.gm_write = bytes.unsigned_int("gm_write");
  k.bytes.hbm_read = bytes.unsigned_int("hbm_read");
  k.bytes.hbm_write = bytes.unsigned_int("hbm_write");
  k.bytes.l2_hit_rate = bytes.number("l2_hit_rate");
  Fields util = f.object("utilization");
  for (const auto& [name, field] : kUtilizationFields) k.utilization.*field = util.number(name);
  if (f.has("validation")) k.validation = validation_from_json(f.object("validation"));
  // to_json() merges a kernel's details into its object: whatever is not a known key is a detail.
  for (const auto& [key, value] : f.json().items())
    if (!kKnown.contains(key)) {
      if (k.details.is_null()) k.details = nlohmann::json::object();
      k.details[key] = value;
    }
  return k;
}

GraphSummary graph_from_json(const Fields& g, const Fields& top) {
  GraphSummary s;
  s.model = g.str("model");
  s.block = g.str("block");
  s.phase = g.str("phase");
  s.tokens = g.integer("tokens");
  s.fusion = g.str("fusion");
  s.total_us = g.number("total_us");
  s.launch_us = g.number("launch_us");
  s.critical_path_us = g.number("critical_path_us");
  s.critical_path = g.strings("critical_path");
  s.notes = g.strings("notes");
  if (g.has("layer")) {
    s.layer = g.str("layer");
    s.batch = g.integer("batch");
    s.context = g.integer("context");
    if (g.has("index_source")) s.index_source = g.str("index_source");
  }
  if (top.has("routing")) {
    Fields r = top.object("routing");
    s.routing_source = r.str("source");
    for (size_t i = 0; i < r.array("tokens_per_expert").size(); ++i) {
      const auto& t = r.array("tokens_per_expert")[i];
      if (!t.is_number_integer())
        bad_key(fmt::format("routing.tokens_per_expert[{}]", i), "should be an integer");
      s.tokens_per_expert.push_back(t.get<int64_t>());
    }
    s.imbalance = r.number("imbalance");
  }
  return s;
}

// to_json() writes a parameter that parses as a number as a number: print it back so it parses to
// the same double (fmt's shortest round-trip form).
std::string parameter_text(const std::string& path, const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_unsigned()) return fmt::format("{}", v.get<uint64_t>());
  if (v.is_number_integer()) return fmt::format("{}", v.get<int64_t>());
  if (v.is_number_float()) return fmt::format("{}", v.get<double>());
  if (v.is_null()) return "nan";
  bad_key(path, fmt::format("should be a number or a string, found {}", v.type_name()));
}

// ---- flat views ----

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw ReportError(fmt::format("report '{}': {}", source, what));
}

// Reports of another major schema version mean other things by the same keys: refuse them.
int checked_schema(const nlohmann::json& v, const std::string& source) {
  int major = -1;
  if (v.is_number() && v.get<double>() >= 0 && v.get<double>() < 1e6) major = static_cast<int>(v.get<double>());
  if (v.is_string()) major = std::atoi(v.get<std::string>().c_str());
  if (major < 0) fail(source, fmt::format("not an npusim report: schema_version is {}", v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
  if (major != kSchemaVersion)
    fail(source,
         fmt::format("report schema {}, this npusim reads schema {}", major, kSchemaVersion));
  return major;
}

// Metric names: point_metric_names() order first, then unknown ones (a newer minor version) sorted.
std::vector<std::string> ordered_metrics(const std::set<std::string>& present) {
  std::vector<std::string> out;
  for (const auto& m : point_metric_names())
    if (present.contains(m)) out.push_back(m);
  for (const auto& m : present)
    if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
  return out;
}

std::string key_text(const nlohmann::json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

FlatReport flatten_run(const nlohmann::json& j, FlatReport r) {
  RunReport run;
  try {
    run = run_report_from_json(j);
  } catch (const std::runtime_error& e) {
    fail(r.source, e.what());
  }
  r.format = "run-json";
  FlatReport::Point p;
  p.id = run.config_file + "@" + run.hardware_name;
  for (const auto& [name, value] : point_metrics(run)) {
    r.metric_names.push_back(name);
    p.metrics.push_back(value);
  }
  r.points.push_back(std::move(p));
  return r;
}

FlatReport flatten_sweep(const nlohmann::json& j, FlatReport r) {
  r.format = "sweep-json";
  const std::string& src = r.source;
  if (!j.contains("key_columns") || !j["key_columns"].is_array())
    fail(src, "a sweep report needs a 'key_columns' array");
  for (const auto& c : j["key_columns"]) {
    if (!c.is_string()) fail(src, "key_columns should hold strings");
    r.key_columns.push_back(c.get<std::string>());
  }
  if (!j.contains("points") || !j["points"].is_array())
    fail(src, "a sweep report needs a 'points' array");
  const auto& points = j["points"];
  // A point without stored metrics gets them from its run report.
  std::vector<nlohmann::json> metrics(points.size());
  std::set<std::string> present;
  for (size_t i = 0; i < points.size(); ++i) {
    const auto& p = points[i];
    if (!p.is_object()) fail(src, fmt::format("points[{}] should be an object", i));
    if (p.contains("metrics") && p["metrics"].is_object()) {
      metrics[i] = p["metrics"];
    } else if (p.contains("report")) {
      try {
        metrics[i] = nlohmann::json::object();
        for (const auto& [name, v] : point_metrics(run_report_from_json(p["report"])))
          metrics[i][name] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
      } catch (const std::runtime_error& e) {
        fail(src, fmt::format("points[{}].report: {}", i, e.what()));
      }
    } else {
      fail(src, fmt::format("points[{}] has neither 'metrics' nor 'report'", i));
    }
    for (const auto& [name, v] : metrics[i].items()) present.insert(name);
  }
  r.metric_names = ordered_metrics(present);
  for (size_t i = 0; i < points.size(); ++i) {
    const auto& p = points[i];
    FlatReport::Point out;
    if (!p.contains("id") || !p["id"].is_string())
      fail(src, fmt::format("points[{}] needs a string 'id'", i));
    out.id = p["id"].get<std::string>();
    if (!p.contains("keys") || !p["keys"].is_object())
      fail(src, fmt::format("points[{}] needs a 'keys' object", i));
    for (const auto& c : r.key_columns) {
      if (!p["keys"].contains(c)) fail(src, fmt::format("points[{}].keys has no '{}'", i, c));
      out.keys.push_back(key_text(p["keys"][c]));
    }
    for (const auto& name : r.metric_names) {
      const auto it = metrics[i].find(name);
      if (it == metrics[i].end() || it->is_null()) {
        out.metrics.push_back(kNaN);
      } else if (it->is_number()) {
        out.metrics.push_back(it->get<double>());
      } else {
        fail(src, fmt::format("points[{}].metrics.{} should be a number or null, found {}", i, name,
                              it->type_name()));
      }
    }
    r.points.push_back(std::move(out));
  }
  return r;
}

// ---- HDF5 ----

// An HDF5 identifier closed on scope exit. (The writer in sweep_report.cpp has its twin; a shared
// internal header would hold both.)
class H5Id {
 public:
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() {
    if (id_ >= 0) close_(id_);
  }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// Variable-length strings live in HDF5's global heap, which carries no checksum: HDF5 1.10 can loop
// forever on a damaged one (found by fuzz_report). npusim writes fixed-length strings only.
constexpr const char* kNoVariableStrings =
    "variable-length strings are not in the format npusim writes (compare the report.json beside it instead)";

class H5Reader {
 public:
  explicit H5Reader(std::string source) : src_(std::move(source)) {}

  FlatReport read() {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // failures become ReportErrors, not stderr dumps
    H5Id file(H5Fopen(src_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!file.ok()) fail(src_, "cannot open it as HDF5 (damaged or truncated file?)");
    FlatReport r;
    r.source = src_;
    r.format = "hdf5";
    const htri_t has_schema = H5Aexists(file.get(), "schema_version");
    if (has_schema < 0) fail(src_, "cannot read it as HDF5 (damaged file?)");
    if (has_schema == 0) fail(src_, "not an npusim report: an HDF5 file without a schema_version attribute");
    r.schema_version =
        checked_schema(nlohmann::json(int_attribute(file.get(), "schema_version")), src_);
    if (H5Aexists(file.get(), "key_columns") <= 0) fail(src_, "no key_columns attribute");
    const std::string keys = string_attribute(file.get(), "key_columns");
    for (size_t start = 0; !keys.empty();) {
      const size_t comma = keys.find(',', start);
      r.key_columns.push_back(keys.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    if (H5Lexists(file.get(), "points", H5P_DEFAULT) <= 0) fail(src_, "no /points table");
    H5Id set(H5Dopen2(file.get(), "points", H5P_DEFAULT), H5Dclose);
    H5Id type(H5Dget_type(set.get()), H5Tclose);
    if (!set.ok() || !type.ok() || H5Tget_class(type.get()) != H5T_COMPOUND)
      fail(src_, "/points is not a table of compound rows");
    H5Id space(H5Dget_space(set.get()), H5Sclose);
    hsize_t rows = 0;
    if (H5Sget_simple_extent_ndims(space.get()) != 1 ||
        H5Sget_simple_extent_dims(space.get(), &rows, nullptr) < 0)
      fail(src_, "/points is not one-dimensional");
    rows_ = rows;

    std::map<std::string, int> member;  // name -> index in the compound
    for (int i = 0; i < H5Tget_nmembers(type.get()); ++i) {
      char* name = H5Tget_member_name(type.get(), static_cast<unsigned>(i));
      member[name] = i;
      H5free_memory(name);
    }
    auto need = [&](const std::string& c) {
      if (!member.contains(c)) fail(src_, fmt::format("/points has no column '{}'", c));
      return member[c];
    };
    const std::vector<std::string> ids = string_column(set.get(), type.get(), need("id"));
    std::vector<std::vector<std::string>> key_values;
    for (const auto& c : r.key_columns)
      key_values.push_back(string_column(set.get(), type.get(), need(c)));
    // Metrics: every numeric column but the row index, in file order.
    std::vector<std::vector<double>> metric_values;
    for (int i = 0; i < H5Tget_nmembers(type.get()); ++i) {
      const H5T_class_t cls = H5Tget_member_class(type.get(), static_cast<unsigned>(i));
      char* raw = H5Tget_member_name(type.get(), static_cast<unsigned>(i));
      const std::string name = raw;
      H5free_memory(raw);
      if ((cls != H5T_FLOAT && cls != H5T_INTEGER) || name == "point") continue;
      r.metric_names.push_back(name);
      metric_values.push_back(double_column(set.get(), name));
    }
    for (size_t p = 0; p < rows_; ++p) {
      FlatReport::Point out;
      out.id = ids[p];
      for (const auto& k : key_values) out.keys.push_back(k[p]);
      for (const auto& m : metric_values) out.metrics.push_back(m[p]);
      r.points.push_back(std::move(out));
    }
    return r;
  }

 private:
  int int_attribute(hid_t obj, const char* name) {
    H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    int v = 0;
    if (!attr.ok() || H5Aread(attr.get(), H5T_NATIVE_INT, &v) < 0)
      fail(src_, fmt::format("attribute '{}' is not an integer", name));
    return v;
  }

  std::string string_attribute(hid_t obj, const char* name) {
    H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    H5Id type(attr.ok() ? H5Aget_type(attr.get()) : -1, H5Tclose);
    if (!type.ok() || H5Tget_class(type.get()) != H5T_STRING)
      fail(src_, fmt::format("attribute '{}' is not a string", name));
    if (H5Tis_variable_str(type.get()) != 0) fail(src_, fmt::format("attribute '{}': {}", name, kNoVariableStrings));
    std::string out(H5Tget_size(type.get()), '\0');
    if (H5Aread(attr.get(), type.get(), out.data()) < 0)
      fail(src_, fmt::format("cannot read attribute '{}'", name));
    return out.substr(0, out.find('\0'));
  }

  // One member of the compound rows, read alone (HDF5 matches members by name).
  std::vector<std::string> string_column(hid_t set, hid_t file_type, int index) {
    H5Id mtype(H5Tget_member_type(file_type, static_cast<unsigned>(index)), H5Tclose);
    char* raw = H5Tget_member_name(file_type, static_cast<unsigned>(index));
    const std::string name = raw;
    H5free_memory(raw);
    if (!mtype.ok() || H5Tget_class(mtype.get()) != H5T_STRING)
      fail(src_, fmt::format("/points column '{}' is not text", name));
    std::vector<std::string> out(rows_);
    if (H5Tis_variable_str(mtype.get()) != 0) fail(src_, fmt::format("/points column '{}': {}", name, kNoVariableStrings));
    const size_t width = H5Tget_size(mtype.get());
    H5Id row(H5Tcreate(H5T_COMPOUND, width), H5Tclose);
    H5Tinsert(row.get(), name.c_str(), 0, mtype.get());
    std::vector<char> buf(rows_ * width);
    if (H5Dread(set, row.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()) < 0)
      fail(src_, fmt::format("cannot read /points column '{}'", name));
    const bool space_pad = H5Tget_strpad(mtype.get()) == H5T_STR_SPACEPAD;
    for (size_t i = 0; i < rows_; ++i) {
      std::string s(buf.data() + i * width, width);
      s.resize(std::min(s.size(), s.find('\0')));
      if (space_pad) s.erase(s.find_last_not_of(' ') + 1);
      out[i] = std::move(s);
    }
    return out;
  }

  std::vector<double> double_column(hid_t set, const std::string& name) {
    H5Id row(H5Tcreate(H5T_COMPOUND, sizeof(double)), H5Tclose);
    H5Tinsert(row.get(), name.c_str(), 0, H5T_NATIVE_DOUBLE);
    std::vector<double> out(rows_);
    if (H5Dread(set, row.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
      fail(src_, fmt::format("cannot read /points column '{}' as numbers", name));
    return out;
  }

  std::string src_;
  size_t rows_ = 0;
};

}  // namespace

RunReport run_report_from_json(const nlohmann::json& j) {
  const Fields top(j, "");
  RunReport r;
  r.tool_version = top.str("tool_version");
  r.git_revision = top.str("git_revision");
  r.command_line = top.str("command_line");
  r.config_file = top.str("config_file");
  const Fields hw = top.object("hardware");
  r.hardware_name = hw.str("name");
  const Fields params = hw.object("parameters"), units = hw.object("units");
  for (const auto& [name, value] : params.json().items()) {
    HardwareParam p{name, "", parameter_text(params.path(name), value)};
    if (units.has(name)) p.unit = units.str(name);
    r.hardware.push_back(std::move(p));
  }
  // Not written on their own: they are the parameters that set them.
  if (params.has("freq_mhz") && params.at("freq_mhz").is_number())
    r.freq_mhz = params.number("freq_mhz");
  if (params.has("hbm.peak_bw_gbs") && params.at("hbm.peak_bw_gbs").is_number())
    r.hbm_peak_gbs = params.number("hbm.peak_bw_gbs");
  for (size_t i = 0; i < top.array("kernels").size(); ++i)
    r.kernels.push_back(kernel_from_json(element(top, "kernels", i)));
  if (top.has("graph")) {
    r.graph = graph_from_json(top.object("graph"), top);
  } else if (top.has("routing")) {
    bad_key("routing", "is only written for graph runs, and this report has no 'graph'");
  }
  r.wall_seconds = top.object("wall_clock").number("seconds");
  return r;
}

std::optional<size_t> FlatReport::metric_index(const std::string& name) const {
  const auto it = std::find(metric_names.begin(), metric_names.end(), name);
  if (it == metric_names.end()) return std::nullopt;
  return static_cast<size_t>(it - metric_names.begin());
}

FlatReport flatten_report(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object() || !j.contains("schema_version"))
    fail(source, "not an npusim report: no schema_version key");
  FlatReport r;
  r.source = source;
  r.schema_version = checked_schema(j["schema_version"], source);
  if (j.contains("kind") && !j["kind"].is_string())
    fail(source, fmt::format("key 'kind': should be a string, found {}", j["kind"].type_name()));
  try {
    if (j.value("kind", "") == "sweep" || j.contains("points")) return flatten_sweep(j, std::move(r));
    if (j.contains("kernels") && j.contains("hardware")) return flatten_run(j, std::move(r));
  } catch (const nlohmann::json::exception& e) {
    // The readers check the keys they know; anything they missed is still a bad report, not a crash.
    fail(source, fmt::format("malformed report: {}", e.what()));
  }
  fail(source, "not an npusim report: neither a run ('kernels') nor a sweep ('points')");
}

FlatReport read_report(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail(path, "is a folder, not a report file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, fmt::format("cannot open it: {}", std::strerror(errno)));
  static constexpr char kHdf5Signature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  char head[9] = {};
  in.read(head, sizeof head);
  if (in.gcount() >= 8 && std::memcmp(head, kHdf5Signature, sizeof kHdf5Signature) == 0) {
    // npusim writes superblock version 3, whose metadata carries checksums: HDF5 then rejects a
    // damaged file by its checksums. Older formats have none, and HDF5's parser is not safe against
    // damaged metadata, so they are refused here.
    const int superblock = in.gcount() == 9 ? static_cast<unsigned char>(head[8]) : -1;
    if (superblock < 2)
      fail(path, fmt::format("an HDF5 file with superblock version {}: npusim reads the checksummed format it writes "
                             "(version 2 or later); compare the report.json beside it instead",
                             superblock));
    in.close();
    return H5Reader(path).read();
  }
  in.clear();
  in.seekg(0);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, fmt::format("not an npusim report: neither HDF5 nor JSON (parse error at byte {})",
                           e.byte));
  } catch (const nlohmann::json::exception& e) {  // e.g. a number beyond double's range
    fail(path, fmt::format("not an npusim report: {}", e.what()));
  }
  return flatten_report(j, path);
}

}  // namespace npusim::reports
