// The parameter table: every hardware parameter is declared here once (name, unit, description,
// required or default), and parsing, `npusim hw show` and the report's resolved hardware all come
// from it. Values and their sources live in configs/hardware/.
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <cmath>
#include <functional>
#include <map>

#include "common/text.hpp"
#include "common/yaml_reader.hpp"
#include "sim/hardware_spec.hpp"

namespace npusim::sim {
namespace {

struct Decl {
  ParamInfo info;
  bool required;
  std::function<void(HardwareSpec&, const YamlNode&)> parse;
  std::function<std::string(const HardwareSpec&)> show;
};

// Quantities may carry a unit suffix ("1.8GHz", "1.6TB/s", "512KiB"); a bare number is in the
// declared unit.
double parse_quantity(const YamlNode& node, const std::string& unit, bool integer = false) {
  static const std::map<std::string, std::map<std::string, double>> kScale{
      {"MHz", {{"Hz", 1e-6}, {"kHz", 1e-3}, {"MHz", 1}, {"GHz", 1e3}}},
      {"GB/s", {{"MB/s", 1e-3}, {"GB/s", 1}, {"TB/s", 1e3}}},
      {"bytes", {{"B", 1}, {"KiB", 1024}, {"MiB", 1048576}, {"GiB", 1073741824.0}, {"KB", 1e3}, {"MB", 1e6}}},
      {"MiB", {{"KiB", 1.0 / 1024}, {"MiB", 1}, {"GiB", 1024}}},
      {"GiB", {{"MiB", 1.0 / 1024}, {"GiB", 1}, {"TiB", 1024}}},
      {"us", {{"ns", 1e-3}, {"us", 1}, {"ms", 1e3}}},
  };
  const std::string s = node.as_string();
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    node.fail(fmt::format("expected {}{}, found '{}'", integer ? "an integer" : "a number",
                          unit.empty() ? "" : " in " + unit, s));
  }
  std::string suffix = s.substr(used);
  suffix.erase(0, suffix.find_first_not_of(' '));
  if (!std::isfinite(v)) node.fail(fmt::format("expected a finite number, found '{}'", s));
  if (suffix.empty()) return v;
  auto fam = kScale.find(unit);
  if (fam != kScale.end()) {
    auto it = fam->second.find(suffix);
    if (it != fam->second.end()) return v * it->second;
    std::vector<std::string> names;
    for (const auto& [k, _] : fam->second) names.push_back(k);
    node.fail(fmt::format("unknown unit '{}'{}; accepted: {}", suffix, did_you_mean(suffix, names), join(names)));
  }
  node.fail(fmt::format("expected a plain number in {}, found '{}'", unit, s));
}

std::string fmt_num(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{:.6g}", v);
}

template <typename Get>
Decl number(std::string name, std::string unit, std::string desc, bool required, Get get,
            double min = 0, bool min_exclusive = true) {
  return Decl{{name, unit, desc}, required,
              [get, unit, min, min_exclusive](HardwareSpec& s, const YamlNode& n) {
                double v = parse_quantity(n, unit);
                if (min_exclusive ? !(v > min) : !(v >= min))
                  n.fail(fmt::format("expected a value {} {}, found {}", min_exclusive ? ">" : ">=",
                                     fmt_num(min), fmt_num(v)));
                get(s) = v;
              },
              [get](const HardwareSpec& s) { return fmt_num(get(const_cast<HardwareSpec&>(s))); }};
}

template <typename Get>
Decl integer(std::string name, std::string unit, std::string desc, bool required, Get get,
             int64_t min = 1) {
  return Decl{{name, unit, desc}, required,
              [get, unit, min](HardwareSpec& s, const YamlNode& n) {
                using T = std::remove_reference_t<decltype(get(s))>;
                const double max = std::min(1e15, static_cast<double>(std::numeric_limits<T>::max()));
                double v = parse_quantity(n, unit, true);
                if (v != std::floor(v) || v < static_cast<double>(min))
                  n.fail(fmt::format("expected an integer >= {}, found {}", min, n.as_string()));
                if (v > max) n.fail(fmt::format("expected an integer <= {}, found {}", fmt_num(max), n.as_string()));
                get(s) = static_cast<T>(v);
              },
              [get](const HardwareSpec& s) { return fmt::format("{}", get(const_cast<HardwareSpec&>(s))); }};
}

std::vector<Decl> build_decls() {
  using S = HardwareSpec;
  std::vector<Decl> d;
  d.push_back({{"name", "", "preset name"}, true,
               [](S& s, const YamlNode& n) { s.name = n.as_string(); },
               [](const S& s) { return s.name; }});
  d.push_back({{"npu_arch", "", "NPU architecture: 2201 (910B/910C) or 3510 (950)"}, true,
               [](S& s, const YamlNode& n) {
                 const int64_t v = n.as_int();
                 if (v != 2201 && v != 3510)
                   n.fail(fmt::format("npu_arch {} is not modelled; expected 2201 (910B/910C) or 3510 (950)", v));
                 s.npu_arch = static_cast<int>(v);
               },
               [](const S& s) { return fmt::format("{}", s.npu_arch); }});
  d.push_back(number("freq_mhz", "MHz", "core clock", true, [](S& s) -> double& { return s.freq_mhz; }));
  d.push_back(integer("num_aic", "", "AI cube cores (AIC)", true, [](S& s) -> int& { return s.num_aic; }));
  d.push_back(integer("num_aiv", "", "AI vector cores (AIV)", true, [](S& s) -> int& { return s.num_aiv; }));
  d.push_back(integer("aiv_per_aic", "", "AIVs paired with each AIC", true,
                      [](S& s) -> int& { return s.aiv_per_aic; }));
  d.push_back({{"aic_aiv_link", "", "AIC<->AIV data path: gm (2201) or direct (3510: L0C->UB, UB->L1)"}, true,
               [](S& s, const YamlNode& n) { s.direct_aic_aiv = n.as_enum({"gm", "direct"}) == "direct"; },
               [](const S& s) { return std::string(s.direct_aic_aiv ? "direct" : "gm"); }});
  d.push_back(number("hbm.capacity_gib", "GiB", "HBM capacity", true, [](S& s) -> double& { return s.hbm.capacity_gib; }));
  d.push_back(number("hbm.peak_bw_gbs", "GB/s", "HBM peak bandwidth", true, [](S& s) -> double& { return s.hbm.peak_bw_gbs; }));
  d.push_back(number("hbm.efficiency", "", "sustained fraction of peak for large streaming copies", true,
                     [](S& s) -> double& { return s.hbm.efficiency; }));
  d.push_back(number("l2.size_mib", "MiB", "L2 cache capacity", true, [](S& s) -> double& { return s.l2.size_mib; }));
  d.push_back(integer("l2.line_bytes", "bytes", "L2 line size", true, [](S& s) -> int& { return s.l2.line_bytes; }));
  d.push_back(number("l2.aggregate_bw_gbs", "GB/s", "aggregate L2 read bandwidth (hits and fills)", true,
                     [](S& s) -> double& { return s.l2.aggregate_bw_gbs; }));
  d.push_back(number("l2.aggregate_write_bw_gbs", "GB/s", "aggregate L2 write bandwidth", true,
                     [](S& s) -> double& { return s.l2.aggregate_write_bw_gbs; }));
  d.push_back(number("l2.hit_latency_cycles", "cycles", "L2 hit latency (part of the calibrated start-up)", true,
                     [](S& s) -> double& { return s.l2.hit_latency_cycles; }, 0, false));
  d.push_back(number("l2.miss_extra_latency_cycles", "cycles", "extra start-up of a transfer that misses L2", true,
                     [](S& s) -> double& { return s.l2.miss_extra_latency_cycles; }, 0, false));
  d.push_back(integer("aic.l1_bytes", "bytes", "L1 buffer", true, [](S& s) -> int64_t& { return s.aic.l1_bytes; }));
  d.push_back(integer("aic.l0a_bytes", "bytes", "L0A buffer", true, [](S& s) -> int64_t& { return s.aic.l0a_bytes; }));
  d.push_back(integer("aic.l0b_bytes", "bytes", "L0B buffer", true, [](S& s) -> int64_t& { return s.aic.l0b_bytes; }));
  d.push_back(integer("aic.l0c_bytes", "bytes", "L0C accumulator buffer", true, [](S& s) -> int64_t& { return s.aic.l0c_bytes; }));
  d.push_back(integer("aic.bt_bytes", "bytes", "bias table", true, [](S& s) -> int64_t& { return s.aic.bt_bytes; }));
  d.push_back(integer("aic.fb_bytes", "bytes", "fixpipe buffer", true, [](S& s) -> int64_t& { return s.aic.fb_bytes; }));
  for (int t = 0; t < kNumDTypes; ++t) {
    std::string dt(dtype_name(static_cast<DType>(t)));
    d.push_back(integer("aic.cube.k0." + dt, "elements", "cube K per fractal step for " + dt + " (MAC/cycle = 256*k0); 0 = unsupported",
                        false, [t](S& s) -> int& { return s.aic.cube_k0[t]; }, 0));
  }
  d.push_back(number("aic.cube.mmad_head_latency_cycles", "cycles", "MMAD start-up latency (pipelined)", true,
                     [](S& s) -> double& { return s.aic.mmad_head_cycles; }, 0, false));
  d.push_back(number("aic.cube.mmad_issue_cycles", "cycles", "MMAD cost per instruction beyond its fractals", true,
                     [](S& s) -> double& { return s.aic.mmad_issue_cycles; }, 0, false));
  for (Pipe p : {Pipe::Mte2, Pipe::Mte1, Pipe::M, Pipe::Fixpipe}) {
    std::string pn = std::string(pipe_name(p));
    std::transform(pn.begin(), pn.end(), pn.begin(), ::tolower);
    d.push_back(integer("aic.queues." + pn, "entries", "AIC " + std::string(pipe_name(p)) + " queue depth", true,
                        [p](S& s) -> int& { return s.aic.queue_depth[static_cast<int>(p)]; }));
  }
  d.push_back(integer("aiv.ub_bytes", "bytes", "unified buffer per AIV (usable)", true, [](S& s) -> int64_t& { return s.aiv.ub_bytes; }));
  d.push_back(number("aiv.vector.issue_overhead_cycles", "cycles", "vector instruction start-up (pipelined)", true,
                     [](S& s) -> double& { return s.aiv.vector_startup_cycles; }, 0, false));
  d.push_back(number("aiv.vector.issue_interval_cycles", "cycles", "minimum spacing of two vector instructions", true,
                     [](S& s) -> double& { return s.aiv.vector_issue_cycles; }, 0, false));
  for (int op = 0; op < kNumVecOps; ++op)
    for (int t = 0; t < kNumDTypes; ++t) {
      std::string name = fmt::format("aiv.vector.rates.{}.{}", vec_op_name(static_cast<VecOp>(op)),
                                     dtype_name(static_cast<DType>(t)));
      d.push_back(number(name, "elements/cycle", "vector throughput; 0 or absent = unsupported", false,
                         [op, t](S& s) -> double& { return s.aiv.vec_rate[op][t]; }, 0, false));
    }
  for (Pipe p : {Pipe::Mte2, Pipe::V, Pipe::Mte3}) {
    std::string pn = std::string(pipe_name(p));
    std::transform(pn.begin(), pn.end(), pn.begin(), ::tolower);
    d.push_back(integer("aiv.queues." + pn, "entries", "AIV " + std::string(pipe_name(p)) + " queue depth", true,
                        [p](S& s) -> int& { return s.aiv.queue_depth[static_cast<int>(p)]; }));
  }
  d.push_back(number("mte.issue_gap_cycles", "cycles", "minimum spacing of two transfers on one MTE pipe", true,
                     [](S& s) -> double& { return s.mte_issue_gap_cycles; }, 0, false));
  d.push_back(number("scalar.dispatch_cycles", "cycles", "scalar unit cost to dispatch one instruction", true,
                     [](S& s) -> double& { return s.scalar_dispatch_cycles; }, 0, false));
  d.push_back(number("scalar.group_cycles", "cycles", "scalar work per group a grouped kernel walks (even an empty one)", true,
                     [](S& s) -> double& { return s.scalar_group_cycles; }, 0, false));
  d.push_back(integer("sync.intra_core_event_ids", "", "intra-core event ids per pipe pair", true, [](S& s) -> int& { return s.sync.event_ids; }));
  d.push_back(integer("sync.cross_core_flag_ids", "", "cross-core flag ids", true, [](S& s) -> int& { return s.sync.cross_flag_ids; }));
  d.push_back(integer("sync.cross_core_max_pending_sets", "", "cross-core sets pending without a wait", true,
                      [](S& s) -> int& { return s.sync.cross_max_pending; }));
  d.push_back(number("sync.set_wait_latency_cycles", "cycles", "intra-core set_flag -> wait_flag latency", true,
                     [](S& s) -> double& { return s.sync.set_wait_latency_cycles; }, 0, false));
  d.push_back(number("sync.cross_core_latency_cycles", "cycles", "cross-core flag latency", true,
                     [](S& s) -> double& { return s.sync.cross_core_latency_cycles; }, 0, false));
  d.push_back(number("kernel_launch_overhead_us", "us", "kernel launch overhead (reported apart, not in cycles)", true,
                     [](S& s) -> double& { return s.launch_overhead_us; }, 0, false));
  for (int p = 0; p < kNumPaths; ++p) {
    std::string base = "paths." + std::string(path_name(static_cast<Path>(p)));
    d.push_back(number(base + ".startup_cycles", "cycles", std::string(path_label(static_cast<Path>(p))) + " start-up (pipelined)",
                       false, [p](S& s) -> double& { return s.paths[p].startup_cycles; }, 0, false));
    d.push_back(number(base + ".bytes_per_cycle", "bytes/cycle", std::string(path_label(static_cast<Path>(p))) + " rate without a curve",
                       false, [p](S& s) -> double& { return s.paths[p].bytes_per_cycle; }));
    d.push_back({{base + ".curve", "[bytes, bytes/cycle]", "measured data-phase rate against transfer size"}, false,
                 [p](S& s, const YamlNode& n) {
                   auto& curve = s.paths[p].curve;
                   curve.clear();
                   for (size_t i = 0; i < n.size(); ++i) {
                     YamlNode pt = n[i];
                     if (pt.size() != 2) pt.fail("expected a pair [bytes, bytes_per_cycle]");
                     double b = pt[0].as_positive_double(), r = pt[1].as_positive_double();
                     if (!curve.empty() && b <= curve.back().first) pt.fail("curve sizes must increase");
                     curve.emplace_back(b, r);
                   }
                 },
                 [p](const S& s) {
                   const auto& c = s.paths[p].curve;
                   if (c.empty()) return std::string("-");
                   return fmt::format("{} points, {}..{} B", c.size(), fmt_num(c.front().first), fmt_num(c.back().first));
                 }});
  }
  return d;
}

const std::vector<Decl>& decls() {
  static const std::vector<Decl> kDecls = build_decls();
  return kDecls;
}

// Walks a dotted name below `root`, recording each key asked for (for did-you-mean).
std::optional<YamlNode> find(const YamlNode& root, const std::string& dotted) {
  std::optional<YamlNode> cur(root);
  size_t start = 0;
  while (true) {
    size_t dot = dotted.find('.', start);
    std::string key = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!cur->is_map()) return std::nullopt;
    auto next = cur->get(key);
    if (!next || dot == std::string::npos) return next;
    cur.emplace(*next);
    start = dot + 1;
  }
}

}  // namespace

double PathSpec::rate_at(double bytes) const {
  if (curve.empty()) return bytes_per_cycle;
  if (bytes <= curve.front().first) return curve.front().second;
  if (bytes >= curve.back().first) return curve.back().second;
  auto hi = std::lower_bound(curve.begin(), curve.end(), bytes,
                             [](const auto& pt, double b) { return pt.first < b; });
  auto lo = hi - 1;
  double f = (bytes - lo->first) / (hi->first - lo->first);
  return lo->second + f * (hi->second - lo->second);
}

HardwareSpec parse_hardware(const std::shared_ptr<YamlDoc>& doc) {
  HardwareSpec spec;
  YamlNode root = doc->root();
  if (!root.is_map()) root.fail("expected a map of hardware parameters");
  for (const auto& decl : decls()) {
    auto node = find(root, decl.info.name);
    if (node) {
      decl.parse(spec, *node);
    } else if (decl.required) {
      SourceLoc l = root.loc();
      l.key_path = root.path() + "." + decl.info.name;
      throw ConfigError(l, fmt::format("missing required hardware parameter ({}{}{})", decl.info.description,
                                       decl.info.unit.empty() ? "" : ", in ", decl.info.unit));
    }
  }
  for (int p = 0; p < kNumPaths; ++p) {
    auto& ps = spec.paths[p];
    ps.available = ps.bytes_per_cycle > 0 || !ps.curve.empty();
  }
  if (spec.num_aiv != spec.num_aic * spec.aiv_per_aic) {
    auto n = find(root, "num_aiv");
    n->fail(fmt::format("num_aiv ({}) must equal num_aic ({}) x aiv_per_aic ({})", spec.num_aiv,
                        spec.num_aic, spec.aiv_per_aic));
  }
  if (spec.aic.cube_k0[static_cast<int>(DType::Fp16)] == 0)
    root.fail("aic.cube.k0.fp16 must be set: every preset supports fp16");
  doc->finish();
  return spec;
}

std::vector<ParamValue> describe_hardware(const HardwareSpec& spec) {
  std::vector<ParamValue> out;
  for (const auto& decl : decls()) {
    std::string v = decl.show(spec);
    if (!decl.required && (v == "0" || v == "-")) continue;  // unset optional entries
    out.push_back({decl.info, v});
  }
  return out;
}

}  // namespace npusim::sim
