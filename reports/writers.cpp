#include "reports/writers.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "common/errors.hpp"

namespace npusim::reports {

nlohmann::json to_json(const ValidationReport& v) {
  nlohmann::json worst = nlohmann::json::array();
  for (const auto& m : v.worst)
    worst.push_back({{"index", m.index},
                     {"row", m.row},
                     {"col", m.col},
                     {"device", m.device},
                     {"golden", m.golden},
                     {"abs_err", m.abs_err}});
  nlohmann::json j = {{"passed", v.passed},
                      {"max_abs_err", v.max_abs_err},
                      {"max_rel_err", v.max_rel_err},
                      {"cos_diff", v.cos_diff},
                      {"mere", v.mere},
                      {"mare", v.mare},
                      {"ratio_to_same_precision", v.ratio_to_same_precision},
                      {"tolerance", v.tolerance},
                      {"elements", v.elements},
                      {"failed_elements", v.failed_elements},
                      {"nonfinite_mismatches", v.nonfinite_mismatches},
                      {"failures", v.failures},
                      {"worst", worst}};
  if (!v.outputs.empty()) {
    nlohmann::json outs = nlohmann::json::object();
    for (const auto& [name, o] : v.outputs) outs[name] = to_json(o);
    j["outputs"] = outs;
  }
  return j;
}

std::string format_validation(const std::string& kernel, const ValidationReport& v) {
  std::string out = fmt::format(
      "{}: validation {} (max abs err {:.3g}, max rel err {:.3g}, cos diff {:.3g}, MERE {:.3g}, "
      "MARE {:.3g}, {:.2f}x the same-precision error)\n",
      kernel, v.passed ? "passed" : "FAILED", v.max_abs_err, v.max_rel_err, v.cos_diff, v.mere,
      v.mare, v.ratio_to_same_precision);
  for (const auto& f : v.failures) out += "  failed: " + f + "\n";

  if (!v.passed)
    for (const auto& m : v.worst)
      out += fmt::format("  [{}, {}] (flat {}): device {:.7g}, golden {:.7g}, |err| {:.3g}\n",
                         m.row, m.col, m.index, m.device, m.golden, m.abs_err);
  return out;
}

nlohmann::json to_json(const RunReport& r) {
  nlohmann::json params = nlohmann::json::object(), units = nlohmann::json::object();
  for (const auto& p : r.hardware) {
    char* end = nullptr;
    double v = std::strtod(p.value.c_str(), &end);
    if (end && *end == '\0' && !p.value.empty()) {
      params[p.name] = v;
    } else {
      params[p.name] = p.value;
    }
    if (!p.unit.empty()) units[p.name] = p.unit;
  }
  nlohmann::json kernels = nlohmann::json::array();
  uint64_t cycles = 0;
  double time_us = 0;
  for (const auto& k : r.kernels) {
    cycles += k.cycles;
    time_us += k.time_us;
    nlohmann::json kj = {
        {"name", k.name},
        {"op", k.op},
        {"tiling", k.tiling},
        {"tiling_default", k.tiling_default},
        {"cycles", k.cycles},
        {"time_us", k.time_us},
        {"flops", k.flops},
        {"tflops", k.tflops},
        {"peak_fraction", k.peak_fraction},
        {"instructions", k.instructions},
        {"cores", {{"aic", k.aic_used}, {"aiv", k.aiv_used}}},
        {"bytes",
         {{"gm_read", k.bytes.gm_read},
          {"gm_write", k.bytes.gm_write},
          {"hbm_read", k.bytes.hbm_read},
          {"hbm_write", k.bytes.hbm_write},
          {"l2_hit_rate", k.bytes.l2_hit_rate}}},
        {"utilization",
         {{"cube", k.utilization.cube},
          {"vector", k.utilization.vector},
          {"mte1", k.utilization.mte1},
          {"mte2", k.utilization.mte2},
          {"mte3", k.utilization.mte3},
          {"fixpipe", k.utilization.fixpipe},
          {"hbm_bw", k.utilization.hbm_bw}}},
    };
    if (k.validation) kj["validation"] = to_json(*k.validation);
    if (k.details.is_object()) kj.update(k.details);
    kernels.push_back(kj);
  }
  nlohmann::json out = {
      {"schema_version", kSchemaVersion},
      {"tool_version", r.tool_version},
      {"git_revision", r.git_revision},
      {"command_line", r.command_line},
      {"config_file", r.config_file},
      {"hardware", {{"name", r.hardware_name}, {"parameters", params}, {"units", units}}},
      {"cycles", cycles},
      {"time_us", time_us},
      {"kernels", kernels},
      {"wall_clock", {{"seconds", r.wall_seconds}}},
  };
  if (r.graph) {
    const GraphSummary& g = *r.graph;
    out["graph"] = {{"model", g.model},
                    {"block", g.block},
                    {"phase", g.phase},
                    {"tokens", g.tokens},
                    {"fusion", g.fusion},
                    {"kernels", r.kernels.size()},
                    {"total_us", g.total_us},
                    {"launch_us", g.launch_us},
                    {"critical_path_us", g.critical_path_us},
                    {"critical_path", g.critical_path},
                    {"notes", g.notes}};
    if (!g.layer.empty()) {
      out["graph"]["layer"] = g.layer;
      out["graph"]["batch"] = g.batch;
      out["graph"]["context"] = g.context;
      if (!g.index_source.empty()) out["graph"]["index_source"] = g.index_source;
    }
    if (!g.tokens_per_expert.empty())
      out["routing"] = {{"source", g.routing_source},
                        {"tokens_per_expert", g.tokens_per_expert},
                        {"imbalance", g.imbalance}};
  }
  return out;
}

std::string format_table(const std::vector<RunReport>& runs) {
  std::string out = fmt::format(
      "{:<40} {:<16} {:>10} {:>7} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>8} {:>5}\n",
      "kernel", "hardware", "time us", "TFLOPS", "%peak", "cube", "vec", "mte1", "mte2", "mte3",
      "fixp", "HBM GB/s", "L2hit");
  auto pct = [](double f) { return fmt::format("{:.0f}", 100 * f); };
  for (const auto& r : runs) {
    for (const auto& k : r.kernels) {
      const auto& u = k.utilization;
      out += fmt::format(
          "{:<40} {:<16} {:>10.2f} {:>7.1f} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>8.0f} "
          "{:>5}\n",
          k.name.size() > 40 ? k.name.substr(0, 40) : k.name, r.hardware_name, k.time_us, k.tflops,
          pct(k.peak_fraction), pct(u.cube), pct(u.vector), pct(u.mte1), pct(u.mte2), pct(u.mte3),
          pct(u.fixpipe), u.hbm_bw * r.hbm_peak_gbs, pct(k.bytes.l2_hit_rate));
    }
    if (r.graph) {
      const GraphSummary& g = *r.graph;
      const std::string what =
          g.layer.empty()
              ? fmt::format("{} {} T={}", g.block, g.phase, g.tokens)
              : fmt::format("{} {} {} {}={} context={}", g.block, g.layer, g.phase,
                            g.phase == "decode" ? "batch" : "tokens", g.tokens, g.context);
      out += fmt::format(
          "= {} {} fusion {}: {} kernels, {:.2f} us with launches ({:.2f} us each), critical path "
          "{:.2f} us",
          g.model, what, g.fusion, r.kernels.size(), g.total_us, g.launch_us, g.critical_path_us);
      if (!g.index_source.empty()) out += ", indices " + g.index_source;
      if (!g.tokens_per_expert.empty())
        out += fmt::format(", routing {} imbalance {:.2f}", g.routing_source, g.imbalance);
      out += "\n";
    }
  }
  out +=
      "%peak: of the cube (GEMM) or vector (AIV ops) peak; pipe columns: % of kernel time averaged "
      "over all cores\n";
  return out;
}

nlohmann::json trace_json(const Trace& t) {
  nlohmann::json events = nlohmann::json::array();
  std::vector<bool> named_process;
  for (const auto& tr : t.tracks) {
    if (static_cast<int>(named_process.size()) <= tr.process)
      named_process.resize(tr.process + 1, false);
    if (!named_process[tr.process]) {
      events.push_back({{"ph", "M"},
                        {"name", "process_name"},
                        {"pid", tr.process},
                        {"tid", 0},
                        {"args", {{"name", tr.process_name}}}});
      events.push_back({{"ph", "M"},
                        {"name", "process_sort_index"},
                        {"pid", tr.process},
                        {"tid", 0},
                        {"args", {{"sort_index", tr.process}}}});
      named_process[tr.process] = true;
    }
    events.push_back({{"ph", "M"},
                      {"name", "thread_name"},
                      {"pid", tr.process},
                      {"tid", tr.thread},
                      {"args", {{"name", tr.thread_name}}}});
  }
  for (const auto& s : t.slices) {
    const auto& tr = t.tracks[s.track];
    events.push_back({{"ph", "X"},
                      {"name", s.name},
                      {"cat", s.category},
                      {"pid", tr.process},
                      {"tid", tr.thread},
                      {"ts", s.start_us},
                      {"dur", s.dur_us}});
  }
  return {{"traceEvents", events}, {"displayTimeUnit", "ns"}};
}

namespace {

// The host and pid fields of a temporary name: ".<name>.tmp-<host>-<pid>" (files) or
// ".tmp-<id>-<host>-<pid>" (sweep point folders), split from the right.
bool temp_fields(const std::string& name, std::string& host, std::string& pid) {
  const auto last = name.rfind('-');
  if (name.empty() || name[0] != '.' || last == std::string::npos || last == 0) return false;
  const auto prev = name.rfind('-', last - 1);
  const auto tag = name.find(".tmp-");
  if (prev == std::string::npos || tag == std::string::npos || tag + 4 > prev) return false;
  host = name.substr(prev + 1, last - prev - 1);
  pid = name.substr(last + 1);
  return !pid.empty() && pid.size() < 10 &&
         pid.find_first_not_of("0123456789") == std::string::npos;
}

[[noreturn]] void cannot_write(const std::string& path, const std::string& why) {
  throw ConfigError(fmt::format("cannot write '{}': {}", path, why));
}

}  // namespace

const std::string& temp_host() {
  static const std::string host = [] {
    char buf[256] = {};
    std::string h = gethostname(buf, sizeof buf - 1) == 0 ? buf : "";
    for (char& c : h)
      if (c == '/' || c == '-') c = '_';
    return h.empty() ? std::string("host") : h;
  }();
  return host;
}

std::string temp_path_for(const std::string& path) {
  const std::filesystem::path p(path);
  return (p.parent_path() /
          fmt::format(".{}.tmp-{}-{}", p.filename().string(), temp_host(), ::getpid()))
      .string();
}

bool is_stale_temp(const std::string& name) {
  std::string host, pid;
  if (!temp_fields(name, host, pid) || host != temp_host()) return false;
  return ::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH;
}

size_t remove_stale_temps(const std::string& dir) {
  namespace fs = std::filesystem;
  size_t n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (is_stale_temp(e.path().filename().string())) {
      std::error_code rm;
      fs::remove_all(e.path(), rm);
      n += !rm;
    }
  return n;
}

int write_all(int fd, const std::string& text, bool flush) {
  const char* p = text.data();
  size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += n, left -= static_cast<size_t>(n);
  }
  // Flushed before the rename publishes it: after a power loss the name holds the old or the new
  // bytes, never an empty file (a killed process needs no flush; the kernel has the data).
  return !flush || ::fdatasync(fd) == 0 ? 0 : errno;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = temp_path_for(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0)
    cannot_write(path,
                 fmt::format("cannot create a file in that folder ({})", std::strerror(errno)));
  int err = write_all(fd, text, /*flush=*/true);
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    cannot_write(path, std::strerror(err));
  }
}

std::string json_text(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace npusim::reports
