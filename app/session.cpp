#include "app/session.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include <unistd.h>

#include "common/text.hpp"
#include "common/yaml_reader.hpp"
#include "graphs/attention.hpp"
#include "graphs/models.hpp"
#include "kernels/validation.hpp"
#include "sim/functional.hpp"

#ifndef NPUSIM_CONFIG_DIR
#define NPUSIM_CONFIG_DIR "configs"
#endif
#include "git_revision.hpp"  // generated at build time
#ifndef NPUSIM_VERSION
#define NPUSIM_VERSION "0.0.0"
#endif

namespace npusim::app {
namespace fs = std::filesystem;

std::string tool_version() { return NPUSIM_VERSION; }
std::string git_revision() { return NPUSIM_GIT_REV; }

std::string config_dir() {
  if (const char* env = std::getenv("NPUSIM_CONFIG_DIR"); env && *env) return env;
  return NPUSIM_CONFIG_DIR;
}

namespace {
// A preset is a hardware YAML with a `name:` (the files it extends have none).
bool is_preset_file(const fs::path& file) {
  std::error_code ec;  // a name too long for the file system is simply not a preset
  if (file.extension() != ".yaml" || !fs::is_regular_file(file, ec)) return false;
  try {
    YAML::Node n = YAML::LoadFile(file.string());
    return n.IsMap() && n["name"];
  } catch (const YAML::Exception&) {
    return false;
  }
}
}  // namespace

std::vector<std::string> list_presets() {
  std::vector<std::string> out;
  fs::path dir = fs::path(config_dir()) / "hardware";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (is_preset_file(entry.path())) out.push_back(entry.path().stem().string());
  std::sort(out.begin(), out.end());
  return out;
}

double max_instructions() {
  if (const char* env = std::getenv("NPUSIM_MAX_INSTRUCTIONS"); env && *env) {
    char* end = nullptr;
    double v = std::strtod(env, &end);
    if (end && *end == '\0' && v > 0) return v;
    throw ConfigError(SourceLoc{"NPUSIM_MAX_INSTRUCTIONS", 0, 0, ""}, fmt::format("expected a positive number, found '{}'", env));
  }
  return kDefaultMaxInstructions;
}

namespace {

// Finds the preset file for `name`, or throws with the nearest preset name.
std::string preset_file(const std::string& name, const SourceLoc& where) {
  if (name.find('/') != std::string::npos || name.ends_with(".yaml")) {
    if (std::error_code ec; !fs::exists(name, ec)) throw ConfigError(where, fmt::format("hardware file '{}' not found", name));
    return name;
  }
  // The common case reads one file; only a miss reads every preset to suggest the nearest.
  const fs::path file = fs::path(config_dir()) / "hardware" / (name + ".yaml");
  if (!is_preset_file(file)) {
    auto presets = list_presets();
    throw ConfigError(where, fmt::format("unknown hardware preset '{}'{}; known presets: {}", name,
                                         did_you_mean(name, presets), join(presets)));
  }
  return file.string();
}

void apply_sets(const std::vector<std::string>& sets, const std::string& prefix,
                const std::shared_ptr<YamlDoc>& doc) {
  for (const auto& arg : sets) {
    auto [key, value] = parse_set_arg(arg);
    if (key.rfind(prefix + ".", 0) == 0) doc->set_override(key.substr(prefix.size() + 1), value, "--set " + arg);
  }
}

}  // namespace

sim::HardwareSpec load_hardware(const std::string& name_or_path, const std::vector<std::string>& sets) {
  auto doc = YamlDoc::load_layered(preset_file(name_or_path, SourceLoc{"", 0, 0, "hardware"}), "hardware");
  for (const auto& arg : sets) {
    auto [key, value] = parse_set_arg(arg);
    if (key.rfind("hardware.", 0) != 0)
      throw ConfigError(SourceLoc{"--set " + arg, 0, 0, key}, "only hardware.<param> can be set here");
  }
  apply_sets(sets, "hardware", doc);
  return sim::parse_hardware(doc);
}

namespace {

GraphWorkload load_graph_workload(const YamlNode& w, const std::optional<YamlNode>& fusion) {
  GraphWorkload gw;
  YamlNode model = w.at("model");
  const std::string name = model.as_string();
  const bool is_file = name.find('/') != std::string::npos || name.ends_with(".yaml") || name.ends_with(".yml");
  gw.block = w.at("block").as_enum({"moe", "attention"});
  if (gw.block == "attention" && !is_file) {
    const graphs::AttentionModel& m = graphs::attention_model(name, model.loc());
    graphs::AttentionBlockOptions opt;
    YamlNode layer = w.at("layer");
    opt.layer = layer.as_enum({"dense", "dsa", "csa", "hca", "swa"});
    if (std::find(m.layers.begin(), m.layers.end(), opt.layer) == m.layers.end())
      layer.fail(fmt::format("{} has no '{}' attention layer (it has: {})", m.name, opt.layer, fmt::join(m.layers, ", ")));
    opt.phase = gw.phase = w.get("phase") ? w.at("phase").as_enum({"decode", "prefill"}) : "decode";
    if (gw.phase == "decode") {
      if (auto t = w.get("tokens")) t->fail("decode takes `batch` (sequences, one new token each), not tokens");
      opt.batch = w.get("batch") ? w.at("batch").as_positive_int() : m.decode_batch;
    } else {
      if (auto b = w.get("batch")) b->fail("prefill takes `tokens` (new tokens of one sequence), not batch");
      opt.tokens = w.get("tokens") ? w.at("tokens").as_positive_int() : m.prefill_tokens;
    }
    const int64_t fresh = gw.phase == "decode" ? 1 : opt.tokens;
    opt.context = w.get("context") ? w.at("context").as_positive_int() : std::max(m.default_context, fresh);
    if (opt.context > (int64_t(1) << 24)) w.at("context").fail("contexts beyond 16M tokens are not supported");
    const SourceLoc where = w.get("context") ? w.at("context").loc() : layer.loc();
    gw.graph = graphs::build_attention_graph(m, opt, where);
    gw.layer = opt.layer, gw.batch = gw.phase == "decode" ? opt.batch : 1, gw.context = opt.context;
    gw.tokens = gw.phase == "decode" ? opt.batch : opt.tokens;
    if (auto ix = w.get("indices"))
      gw.indices = kernels::parse_index_spec(*ix, {"uniform", "recent_biased", "from_indexer"});
  } else if (is_file) {
    gw.tokens = w.at("tokens").as_positive_int();
    gw.phase = w.get("phase") ? w.at("phase").as_enum({"decode", "prefill"}) : "";
    std::string path = name;
    if (fs::path(path).is_relative()) path = (fs::path(model.loc().file).parent_path() / path).string();
    if (std::error_code ec; !fs::is_regular_file(path, ec)) model.fail(fmt::format("graph file '{}' not found", path));
    gw.graph = graphs::load_graph_file(path, gw.tokens);
  } else {
    const graphs::MoeModel& m = graphs::moe_model(name, model.loc());
    gw.phase = w.get("phase") ? w.at("phase").as_enum({"decode", "prefill"}) : "decode";
    gw.tokens = w.get("tokens") ? w.at("tokens").as_positive_int() : gw.phase == "decode" ? m.decode_tokens : m.prefill_tokens;
    if (gw.tokens > (int64_t(1) << 24)) w.at("tokens").fail("more than 2^24 tokens on one device");
    graphs::MoeBlockOptions opt;
    opt.tokens = gw.tokens;
    if (auto l = w.get("layer")) {
      opt.layer = static_cast<int>(l->as_int());
      if (opt.layer < 0 || opt.layer >= m.layers)
        l->fail(fmt::format("{} has layers 0..{}", m.name, m.layers - 1));
      if (opt.layer < m.dense_layers)
        l->fail(fmt::format("layer {} of {} is a dense MLP (layers 0..{}), not MoE", opt.layer, m.name, m.dense_layers - 1));
    }
    if (auto s = w.get("shared")) opt.shared = s->as_bool();
    if (auto r = w.get("residual")) opt.residual = r->as_bool();
    gw.graph = graphs::build_moe_graph(m, opt);
  }
  if (auto r = w.get("routing")) {
    auto& rc = gw.routing;
    rc.distribution = r->at("distribution").as_enum({"from_gate", "uniform", "zipf", "hot_expert"});
    if (auto s = r->get("s")) rc.s = s->as_positive_double();
    if (auto h = r->get("hot_fraction")) rc.hot_fraction = h->as_fraction();
    if (auto sd = r->get("seed")) {
      int64_t seed = sd->as_int();
      if (seed < 0) sd->fail("expected a seed >= 0");
      rc.seed = static_cast<uint64_t>(seed);
    }
  }
  std::vector<std::string> choice{"default"};
  SourceLoc where{model.loc().file, 0, 0, "fusion"};
  if (fusion) {
    where = fusion->loc();
    if (fusion->is_seq()) {
      choice.clear();
      for (size_t i = 0; i < fusion->size(); ++i) choice.push_back((*fusion)[i].as_string());
      if (choice.empty()) fusion->fail("expected none, default or a list of fusion groups");
    } else {
      choice = {fusion->as_string()};
    }
  }
  gw.plan = graphs::plan_fusion(gw.graph, choice, where);
  return gw;
}

// One text per meaning, whatever the file's layout: keys sorted, lists of scalars in flow style.
void emit_canonical(YAML::Emitter& e, const YAML::Node& n) {
  if (n.IsMap()) {
    // Sort the keys, not the nodes: assigning a YAML::Node writes through to the document.
    std::vector<std::string> keys;
    for (const auto& it : n) keys.push_back(it.first.as<std::string>());
    std::sort(keys.begin(), keys.end());
    e << YAML::BeginMap;
    for (const auto& k : keys) {
      e << YAML::Key << k << YAML::Value;
      emit_canonical(e, n[k]);
    }
    e << YAML::EndMap;
  } else if (n.IsSequence()) {
    const bool flat = std::all_of(n.begin(), n.end(), [](const YAML::Node& x) { return x.IsScalar(); });
    if (flat) e << YAML::Flow;
    e << YAML::BeginSeq;
    for (const auto& x : n) emit_canonical(e, x);
    e << YAML::EndSeq;
  } else if (n.IsScalar()) {
    e << n.Scalar();
  } else {
    e << YAML::Null;
  }
}

// The config after the overrides, as LoadedRun::resolved_config describes.
std::string resolved_config_text(const YAML::Node& root, const std::vector<std::string>& sets) {
  YAML::Node cfg = YAML::Clone(root);
  for (const auto& arg : sets) {
    auto [key, value] = parse_set_arg(arg);
    if (key.rfind("hardware.", 0) != 0) continue;
    if (!cfg["hardware"].IsMap()) {
      // Assigning through a yaml-cpp handle rewrites the node it refers to, so copy the name first.
      const std::string preset = cfg["hardware"].IsScalar() ? cfg["hardware"].Scalar() : "";
      YAML::Node m(YAML::NodeType::Map);
      m["preset"] = preset;
      cfg["hardware"] = m;
    }
    std::vector<std::string> parts;
    std::stringstream ss(key.substr(std::string("hardware.").size()));
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    std::vector<YAML::Node> chain{cfg["hardware"]};  // walk by value (see YamlDoc::set_override)
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      if (!chain.back()[parts[i]].IsMap()) chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      chain.push_back(chain.back()[parts[i]]);
    }
    chain.back()[parts.back()] = YAML::Load(value);
  }
  YAML::Emitter e;
  emit_canonical(e, cfg);
  return std::string(e.c_str()) + "\n";
}

// Hardware resolved under a HardwareCacheScope, by preset and overrides (successes only).
std::atomic<int> g_hw_cache_users{0};
std::mutex g_hw_cache_mu;
std::map<std::string, sim::HardwareSpec> g_hw_cache;

}  // namespace

HardwareCacheScope::HardwareCacheScope() { ++g_hw_cache_users; }

HardwareCacheScope::~HardwareCacheScope() {
  if (--g_hw_cache_users == 0) {
    std::lock_guard lock(g_hw_cache_mu);
    g_hw_cache.clear();
  }
}

LoadedRun load_run(const std::string& config_file, const std::vector<std::string>& sets) {
  auto doc = YamlDoc::load(config_file);
  const std::vector<std::string> sections{"hardware", "workload", "tiling", "inputs", "fusion"};
  for (const auto& arg : sets) {
    auto [key, value] = parse_set_arg(arg);
    std::string top = key.substr(0, key.find('.'));
    const bool known = std::find(sections.begin(), sections.end(), top) != sections.end();
    if (!known || (top == key && key != "fusion" && key != "hardware"))
      throw ConfigError(SourceLoc{"--set " + arg, 0, 0, key},
                        fmt::format("{} '{}'{}; expected hardware.<param>, workload.<key>, tiling.<key> or fusion",
                                    known ? "set a key below" : "unknown key path", key,
                                    known ? "" : did_you_mean(top, sections)));
  }
  // Workload and tiling overrides edit the config itself; hardware ones edit the resolved preset.
  // `hardware=NAME` replaces the preset (keeping the config's own hardware overrides, if any).
  for (const auto& arg : sets) {
    auto [key, value] = parse_set_arg(arg);
    const YAML::Node hw_node = doc->root().raw();  // a handle: root() is a temporary
    if (key == "hardware" && hw_node.IsMap() && hw_node["hardware"] && hw_node["hardware"].IsMap())
      doc->set_override("hardware.preset", value, "--set " + arg);
    else if (key.rfind("hardware.", 0) != 0)
      doc->set_override(key, value, "--set " + arg);
  }
  YamlNode root = doc->root();
  if (!root.is_map()) root.fail("expected a map with keys hardware, workload and (optionally) tiling");

  LoadedRun run;
  run.config_file = config_file;
  YamlNode hwnode = root.at("hardware");
  // Under a HardwareCacheScope the same preset and overrides resolve once.
  std::string cache_key;
  bool cached = false;
  if (g_hw_cache_users.load() > 0) {
    YAML::Emitter e;
    emit_canonical(e, hwnode.raw());
    cache_key = config_dir() + "\n" + e.c_str();
    for (const auto& arg : sets)
      if (arg.rfind("hardware.", 0) == 0) cache_key += "\n" + arg;
    std::lock_guard lock(g_hw_cache_mu);
    if (auto it = g_hw_cache.find(cache_key); it != g_hw_cache.end()) {
      run.hw = it->second;
      hwnode.consume_all();
      cached = true;
    }
  }
  if (!cached) {
    std::shared_ptr<YamlDoc> hwdoc;
    if (hwnode.is_map()) {
      // hardware: {preset: NAME, <param overrides>...}
      YamlNode preset = hwnode.at("preset");
      hwdoc = YamlDoc::load_layered(preset_file(preset.as_string(), preset.loc()), "hardware");
      YAML::Node overrides(YAML::NodeType::Map);
      for (const auto& kv : hwnode.raw())
        if (kv.first.as<std::string>() != "preset") overrides.force_insert(kv.first, kv.second);  // keeps the key's line
      hwdoc->overlay(overrides, config_file);
      hwnode.consume_all();  // checked against the parameter table by parse_hardware instead
    } else {
      hwdoc = YamlDoc::load_layered(preset_file(hwnode.as_string(), hwnode.loc()), "hardware");
    }
    apply_sets(sets, "hardware", hwdoc);
    run.hw = sim::parse_hardware(hwdoc);
    if (!cache_key.empty()) {
      std::lock_guard lock(g_hw_cache_mu);
      g_hw_cache.emplace(cache_key, run.hw);
    }
  }
  run.resolved_config = resolved_config_text(root.raw(), sets);  // the values parsed cleanly above

  YamlNode workload = root.at("workload");
  auto tiling = root.get("tiling");
  auto fusion = root.get("fusion");
  if (workload.has("model")) {
    if (tiling) tiling->fail("a model workload picks each kernel's default tiling; per-kernel tilings are not supported yet");
    run.graph = load_graph_workload(workload, fusion);
    run.inputs = kernels::parse_inputs(root.get("inputs"));
    doc->finish();
    return run;
  }
  if (fusion) fusion->fail("fusion applies to model workloads (workload.model), not to a single kernel (workload.op)");
  run.kernel = kernels::make_kernel(workload, tiling, run.hw);
  run.inputs = kernels::parse_inputs(root.get("inputs"));
  doc->finish();
  // Limits checked before anything is lowered.
  const double hbm_bytes = run.hw.hbm.capacity_gib * 1073741824.0;
  if (run.kernel->compulsory_bytes() > hbm_bytes)
    workload.fail(fmt::format("the operands need {:.1f} GiB of GM but {} has {} GiB of HBM",
                              run.kernel->compulsory_bytes() / 1073741824.0, run.hw.name, run.hw.hbm.capacity_gib));
  kernels::Status st = run.kernel->can_implement(run.hw);
  if (!st.ok) {
    SourceLoc where{config_file, 0, 0, st.key};
    // Point at the offending key when the config has it, else at the tiling or workload section.
    std::string section = st.key.substr(0, st.key.find('.'));
    std::string leaf = st.key.find('.') == std::string::npos ? "" : st.key.substr(st.key.find('.') + 1);
    if (section == "tiling" && tiling) {
      where = tiling->has(leaf) ? tiling->at(leaf).loc() : tiling->loc();
    } else if (section == "workload") {
      where = workload.has(leaf) ? workload.at(leaf).loc() : workload.loc();
    }
    where.key_path = st.key;
    std::string hint = run.kernel->tiling_is_default() ? " (the default tiling heuristic chose it; give `tiling:` to pick another)" : "";
    throw ConfigError(where, "tiling does not fit: " + st.reason + hint);
  }
  if (double n = run.kernel->estimated_instructions(); n > max_instructions())
    workload.fail(fmt::format("the program would have about {:.3g} instructions, above the limit of {:.3g}{}", n,
                              max_instructions(), kInstructionLimitHint));
  return run;
}

reports::KernelReport summarize(const sim::HardwareSpec& hw, const kernels::Kernel& k, const sim::SimResult& r) {
  reports::KernelReport out;
  out.name = k.name();
  out.op = k.op();
  out.tiling = k.tiling_json();
  out.tiling_default = k.tiling_is_default();
  out.details = k.details();
  out.cycles = static_cast<uint64_t>(std::ceil(r.cycles));
  out.time_us = hw.cycles_to_us(r.cycles);
  out.flops = k.flops();
  out.tflops = out.time_us > 0 ? out.flops / (out.time_us * 1e6) : 0;
  out.peak_fraction = r.cycles > 0 ? out.flops / (r.cycles * k.peak_flops_per_cycle(hw)) : 0;
  out.instructions = r.instructions;
  std::array<double, sim::kNumPipes> busy{};
  for (const auto& u : r.units) {
    (u.kind == sim::CoreKind::Aic ? out.aic_used : out.aiv_used)++;
    for (int p = 0; p < sim::kNumPipes; ++p) busy[p] += u.pipes[p].busy_cycles;
  }
  auto frac = [&](sim::Pipe p, int cores) {
    return r.cycles > 0 ? busy[static_cast<int>(p)] / (static_cast<double>(cores) * r.cycles) : 0.0;
  };
  auto& u = out.utilization;
  u.cube = frac(sim::Pipe::M, hw.num_aic);
  u.mte1 = frac(sim::Pipe::Mte1, hw.num_aic);
  u.fixpipe = frac(sim::Pipe::Fixpipe, hw.num_aic);
  u.vector = frac(sim::Pipe::V, hw.num_aiv);
  u.mte3 = frac(sim::Pipe::Mte3, hw.num_aiv);
  // MTE2 exists on both kinds; the average is over every core that has one.
  u.mte2 = frac(sim::Pipe::Mte2, hw.num_aic + hw.num_aiv);
  const auto& m = r.mem;
  out.bytes.gm_read = m.gm_read_bytes;
  out.bytes.gm_write = m.gm_write_bytes;
  out.bytes.hbm_read = m.hbm_read_bytes;
  out.bytes.hbm_write = m.hbm_write_bytes + m.hbm_flush_bytes;
  out.bytes.l2_hit_rate = m.l2_hit_rate();
  // Bandwidth use counts the traffic HBM served during the kernel (the final write-back is later).
  u.hbm_bw = r.cycles > 0 ? (m.hbm_read_bytes + m.hbm_write_bytes) / (r.cycles * hw.hbm_bytes_per_cycle()) : 0;
  return out;
}

RunOutput execute(const LoadedRun& run, const sim::SimOptions& opt) {
  sim::Program prog = run.kernel->lower(run.hw);
  RunOutput out;
  out.sim = sim::simulate(run.hw, prog, opt);
  out.kernel = summarize(run.hw, *run.kernel, out.sim);
  return out;
}

GraphOutput execute_graph(const LoadedRun& run, bool functional, const sim::SimOptions& opt) {
  const GraphWorkload& gw = *run.graph;
  if (functional) {
    // Every tensor's values (double) live for the whole run; a kernel adds its GM image, its inputs
    // and two references: about 32 bytes per element of the graph's tensors.
    double elements = 0;
    for (const auto& t : gw.graph.tensors) elements += static_cast<double>(t.elements());
    const double need = 32 * elements, limit = static_cast<double>(functional_bytes_limit());
    if (need > limit)
      throw ConfigError(SourceLoc{run.config_file, 0, 0, "workload"},
                        fmt::format("a functional run of {} needs about {:.2f} GiB of memory, above the limit of {:.2f} GiB "
                                    "(set NPUSIM_MAX_FUNCTIONAL_BYTES to change it); run without --functional for timing "
                                    "only, or validate a smaller model (toy) or fewer tokens",
                                    gw.graph.name, need / 1073741824.0, limit / 1073741824.0));
  }
  graphs::GraphRunOptions go;
  go.max_instructions = max_instructions(), go.max_instructions_hint = kInstructionLimitHint;
  go.routing = gw.routing;
  go.indices = gw.indices;
  go.functional = functional;
  go.inputs = run.inputs;
  go.sim = opt;
  go.tiling_for = gw.tiling_for;
  GraphOutput out;
  out.run = graphs::run_graph(gw.graph, gw.plan, run.hw, go);
  auto& s = out.graph;
  s.model = gw.graph.model, s.block = gw.block, s.phase = gw.phase, s.fusion = gw.plan.label, s.tokens = gw.tokens;
  s.layer = gw.layer, s.batch = gw.batch, s.context = gw.context;
  s.index_source = out.run.index_source;
  s.total_us = out.run.serial_us, s.launch_us = out.run.launch_us, s.critical_path_us = out.run.critical_path_us;
  s.notes = gw.graph.notes;
  s.routing_source = out.run.routing_source;
  s.tokens_per_expert = out.run.tokens_per_expert;
  s.imbalance = out.run.imbalance;
  for (const auto& k : out.run.kernels) {
    reports::KernelReport r = summarize(run.hw, *k.kernel, k.sim);
    r.name = k.group.name + ": " + r.name;
    std::vector<std::string> ops;
    for (int o : k.group.ops) ops.push_back(gw.graph.ops[o].name);
    if (!r.details.is_object()) r.details = nlohmann::json::object();
    r.details["graph_ops"] = ops;
    if (functional) r.validation = to_report(k.validation);
    out.kernels.push_back(std::move(r));
  }
  for (int i : out.run.critical_path) s.critical_path.push_back(out.kernels[i].name);
  return out;
}

uint64_t functional_bytes_needed(const LoadedRun& run) {
  uint64_t gm = 0, elements = 0;
  for (const auto& t : run.kernel->tensors()) {
    gm = std::max<uint64_t>(gm, t.addr + static_cast<uint64_t>(t.rows * t.cols) * sim::dtype_bytes(t.dtype));
    elements += static_cast<uint64_t>(t.rows * t.cols);
  }
  const auto& a = run.hw.aic;
  uint64_t local = static_cast<uint64_t>(run.hw.num_aic) * (a.l1_bytes + a.l0a_bytes + a.l0b_bytes + a.l0c_bytes) +
                   static_cast<uint64_t>(run.hw.num_aiv) * run.hw.aiv.ub_bytes;
  // Each element is held as double for the inputs, the device output and two references, plus
  // float copies for the same-precision GEMM.
  return gm + local + elements * (4 * sizeof(double) + sizeof(float));
}

uint64_t functional_bytes_limit() {
  if (const char* env = std::getenv("NPUSIM_MAX_FUNCTIONAL_BYTES"); env && *env) {
    char* end = nullptr;
    double v = std::strtod(env, &end);
    if (end && *end == '\0' && v > 0) return static_cast<uint64_t>(v);
    throw ConfigError(SourceLoc{"NPUSIM_MAX_FUNCTIONAL_BYTES", 0, 0, ""}, fmt::format("expected a byte count, found '{}'", env));
  }
  const double phys = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  return static_cast<uint64_t>(0.8 * phys);
}

reports::ValidationReport to_report(const kernels::Validation& v) {
  reports::ValidationReport rv;
  rv.passed = v.passed;
  rv.max_abs_err = v.max_abs_err, rv.max_rel_err = v.max_rel_err, rv.cos_diff = v.cos_diff;
  rv.mere = v.mere, rv.mare = v.mare, rv.ratio_to_same_precision = v.ratio_to_same_precision;
  rv.elements = v.elements, rv.failed_elements = v.failed_elements, rv.nonfinite_mismatches = v.nonfinite_mismatches;
  rv.tolerance = {{"basis", v.tol.basis}, {"exact", v.tol.exact}, {"rtol", v.tol.rtol}, {"atol", v.atol},
                  {"atol_rms", v.tol.atol_rms}, {"cos_diff", v.tol.cos_diff}, {"mere", v.tol.mere}, {"mare", v.tol.mare}};
  rv.failures = v.failures;
  for (const auto& m : v.worst) rv.worst.push_back({m.index, m.row, m.col, m.device, m.golden, m.abs_err});
  return rv;
}

reports::ValidationReport to_report(const std::vector<kernels::OutputValidation>& outs) {
  if (outs.size() == 1) return to_report(outs[0].v);
  reports::ValidationReport all;
  for (size_t i = 0; i < outs.size(); ++i) {
    reports::ValidationReport r = to_report(outs[i].v);
    if (i == 0) {
      all = r;
      all.failures.clear();
    } else if (!r.passed && all.passed) {
      all.worst = r.worst;  // the first failing output's
    }
    all.passed = all.passed && r.passed;
    for (const auto& f : r.failures) all.failures.push_back(outs[i].tensor + ": " + f);
    all.outputs.push_back({outs[i].tensor, std::move(r)});
  }
  return all;
}

RunOutput execute_functional(const LoadedRun& run, const sim::SimOptions& opt_in) {
  const uint64_t need = functional_bytes_needed(run), limit = functional_bytes_limit();
  if (need > limit)
    throw ConfigError(SourceLoc{run.config_file, 0, 0, "workload"},
                      fmt::format("a functional run of {} needs about {:.2f} GiB of memory, above the limit of {:.2f} GiB "
                                  "(80% of this machine's memory; set NPUSIM_MAX_FUNCTIONAL_BYTES to change it); "
                                  "run without --functional for timing only",
                                  run.kernel->name(), need / 1073741824.0, limit / 1073741824.0));
  return execute_functional(run, run.kernel->lower(run.hw, /*functional=*/true), opt_in);
}

RunOutput execute_functional(const LoadedRun& run, const sim::Program& prog, const sim::SimOptions& opt_in) {
  sim::SimOptions opt = opt_in;
  opt.record_work = true;
  RunOutput out;
  out.sim = sim::simulate(run.hw, prog, opt);
  out.kernel = summarize(run.hw, *run.kernel, out.sim);

  sim::FunctionalMemory mem(run.hw, prog);
  const auto tensors = run.kernel->tensors();
  std::vector<std::vector<double>> inputs;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].output) continue;
    inputs.push_back(run.kernel->make_input(i, run.inputs));
    kernels::write_tensor(mem.gm(), tensors[i], inputs.back());
  }
  sim::run_functional(prog, out.sim, mem);
  out.kernel.validation = to_report(kernels::validate_outputs(*run.kernel, inputs, mem.gm()));
  return out;
}

reports::RunReport make_report(const sim::HardwareSpec& hw, const std::string& config_file,
                               const std::string& command_line) {
  reports::RunReport r;
  r.tool_version = tool_version();
  r.git_revision = git_revision();
  r.command_line = command_line;
  r.config_file = config_file;
  r.hardware_name = hw.name;
  r.freq_mhz = hw.freq_mhz;
  r.hbm_peak_gbs = hw.hbm.peak_bw_gbs;
  for (const auto& p : sim::describe_hardware(hw)) r.hardware.push_back({p.info.name, p.info.unit, p.value});
  return r;
}

reports::Trace make_graph_trace(const sim::HardwareSpec& hw, const graphs::GraphRun& run) {
  reports::Trace t;
  std::map<std::pair<int, int>, uint32_t> track_of;
  double start_us = 0;
  for (const auto& k : run.kernels) {
    reports::Trace kt = make_trace(hw, k.sim);
    for (auto s : kt.slices) {
      const auto& tr = kt.tracks[s.track];
      auto [it, fresh] = track_of.emplace(std::pair{tr.process, tr.thread}, static_cast<uint32_t>(t.tracks.size()));
      if (fresh) t.tracks.push_back(tr);
      s.track = it->second;
      s.start_us = std::round((s.start_us + start_us) * 1e3) / 1e3;
      t.slices.push_back(std::move(s));
    }
    start_us += k.time_us + run.launch_us;  // the serial stream
  }
  return t;
}

reports::Trace make_trace(const sim::HardwareSpec& hw, const sim::SimResult& r) {
  reports::Trace t;
  std::map<std::pair<uint32_t, int>, uint32_t> track_of;
  auto cycles_to_us = [&](double c) {
    // Quantise to whole nanoseconds so slice ends and starts compare exactly.
    return std::round(c * 1e3 / hw.freq_mhz) / 1e3;
  };
  for (const auto& s : r.slices) {
    auto key = std::pair{s.unit, static_cast<int>(s.pipe)};
    auto it = track_of.find(key);
    if (it == track_of.end()) {
      const auto& u = r.units[s.unit];
      int process = u.kind == sim::CoreKind::Aic ? u.index * (1 + hw.aiv_per_aic)
                                                 : (u.index / hw.aiv_per_aic) * (1 + hw.aiv_per_aic) + 1 + u.index % hw.aiv_per_aic;
      it = track_of.emplace(key, static_cast<uint32_t>(t.tracks.size())).first;
      t.tracks.push_back({process, static_cast<int>(s.pipe) + 1,
                          fmt::format("{}{}", sim::core_kind_name(u.kind), u.index), std::string(sim::pipe_name(s.pipe))});
    }
    std::string name, cat;
    switch (s.op) {
      case sim::Op::Copy: name = std::string(sim::path_name(static_cast<sim::Path>(s.sub))); cat = "copy"; break;
      case sim::Op::Mmad: name = fmt::format("mmad {}", sim::dtype_name(static_cast<sim::DType>(s.sub))); cat = "cube"; break;
      case sim::Op::Vector: name = std::string(sim::vec_op_name(static_cast<sim::VecOp>(s.sub))); cat = "vector"; break;
      default: name = "sync"; cat = "sync";
    }
    double start = cycles_to_us(s.start), end = cycles_to_us(s.end);
    t.slices.push_back({it->second, name, cat, start, std::round((end - start) * 1e3) / 1e3});
  }
  return t;
}

}  // namespace npusim::app
