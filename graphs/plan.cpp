#include "graphs/plan.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "common/text.hpp"
#include "kernels/combine.hpp"
#include "kernels/gemm.hpp"
#include "kernels/grouped_gemm.hpp"
#include "kernels/permute.hpp"
#include "kernels/rng.hpp"
#include "kernels/routing.hpp"
#include "kernels/swiglu.hpp"
#include "sim/functional.hpp"

namespace npusim::graphs {

const std::vector<FusionRule>& fusion_rules() {
  static const std::vector<FusionRule> kRules{};
  return kRules;
}

namespace {

// Does op `next` read an output of op `prev`?
bool feeds(const OpNode& prev, const OpNode& next) {
  for (const auto& [r, out] : prev.outputs)
    for (const auto& [r2, in] : next.inputs)
      if (out == in) return true;
  return false;
}

bool kind_in(const std::string& kind, const std::vector<std::string>& alts) {
  return std::find(alts.begin(), alts.end(), kind) != alts.end();
}

}  // namespace

FusionPlan plan_fusion(const Graph& g, const std::vector<std::string>& choice, const SourceLoc& where) {
  FusionPlan plan;
  std::vector<const FusionRule*> rules;
  std::vector<std::string> names;
  for (const auto& r : fusion_rules()) names.push_back(r.name);
  if (choice.size() == 1 && choice[0] == "none") {
    plan.label = "none";
  } else if (choice.size() == 1 && choice[0] == "default") {
    plan.label = "default";
    for (const auto& r : fusion_rules()) rules.push_back(&r);
  } else {
    plan.label = fmt::format("{}", fmt::join(choice, "+"));
    for (const auto& c : choice) {
      auto it = std::find(names.begin(), names.end(), c);
      if (it == names.end())
        throw ConfigError(where, fmt::format("unknown fusion group '{}'{} (groups: {}; or none / default)", c,
                                             did_you_mean(c, names), names.empty() ? "none yet" : fmt::format("{}", fmt::join(names, ", "))));
      rules.push_back(&fusion_rules()[it - names.begin()]);
    }
  }
  std::vector<bool> taken(g.ops.size(), false);
  for (size_t i = 0; i < g.ops.size(); ++i) {
    if (taken[i]) continue;
    KernelGroup grp{g.ops[i].name, "", {static_cast<int>(i)}};
    for (const FusionRule* r : rules) {
      if (!kind_in(g.ops[i].kind, r->chain[0])) continue;
      // Follow the chain through the first untaken consumer of each kind in turn.
      std::vector<int> chain{static_cast<int>(i)};
      for (size_t step = 1; step < r->chain.size(); ++step) {
        int found = -1;
        for (size_t j = chain.back() + 1; j < g.ops.size() && found < 0; ++j)
          if (!taken[j] && kind_in(g.ops[j].kind, r->chain[step]) && feeds(g.ops[chain.back()], g.ops[j]))
            found = static_cast<int>(j);
        if (found < 0) break;
        chain.push_back(found);
      }
      if (chain.size() == r->chain.size()) {
        grp = {r->name, r->name, chain};
        break;
      }
    }
    for (int o : grp.ops) taken[o] = true;
    plan.groups.push_back(std::move(grp));
  }
  return plan;
}

std::string format_plan(const Graph& g, const FusionPlan& plan) {
  std::string out = fmt::format("fusion {}: {} kernels\n", plan.label, plan.groups.size());
  for (const auto& grp : plan.groups) {
    std::vector<std::string> ops;
    for (int o : grp.ops) ops.push_back(g.ops[o].name + ":" + g.ops[o].kind);
    out += fmt::format("  {:<16} {}\n", grp.name, fmt::join(ops, " + "));
  }
  return out;
}

bool GraphRun::passed() const {
  for (const auto& k : kernels)
    for (const auto& v : k.validation)
      if (!v.v.passed) return false;
  return true;
}

namespace {

using Values = std::map<std::string, std::vector<double>>;

// Where each kernel tensor's values live in the graph: a tensor and an element offset into it
// (a grouped GEMM's per-expert weights are slices of one [E, K, N] tensor). An empty name is
// a tensor the kernel owns (a workspace).
struct Binding {
  std::string tensor;
  int64_t offset = 0;
};

struct Built {
  std::unique_ptr<kernels::Kernel> kernel;
  std::vector<Binding> bind;
};

class Executor {
 public:
  Executor(const Graph& g, const sim::HardwareSpec& hw, const GraphRunOptions& opt) : g_(g), hw_(hw), opt_(opt) {}

  GraphRun run(const FusionPlan& plan);

 private:
  const TensorDesc& port(const OpNode& op, const std::string& role, bool output = false) const {
    const auto& ports = output ? op.outputs : op.inputs;
    return g_.tensor(ports.at(role));
  }
  bool has(const OpNode& op, const std::string& role) const { return op.inputs.count(role) > 0; }
  Built build(const KernelGroup& grp);
  Built build_single(const OpNode& op);
  const std::vector<int32_t>& routing();  // the expert ids the routed kernels are lowered for
  void generate_inputs();
  std::vector<double> graph_input(const TensorDesc& t, size_t index) const;
  void set_ids(const std::string& tensor);

  const Graph& g_;
  const sim::HardwareSpec& hw_;
  const GraphRunOptions& opt_;
  Values values_;
  std::vector<int32_t> ids_;
  std::string ids_tensor_;
  int64_t experts_ = 0, topk_ = 0;
};

const std::vector<int32_t>& Executor::routing() {
  if (!ids_.empty()) return ids_;
  if (opt_.routing.distribution == "from_gate") {
    auto it = values_.find(ids_tensor_);
    if (it == values_.end())
      throw ConfigError(SourceLoc{g_.model, 0, 0, "workload.routing.distribution"},
                        "routing from_gate needs the gate's outputs: run functionally (--functional / validate), "
                        "or draw the routing (uniform | zipf | hot_expert)");
    ids_.assign(it->second.begin(), it->second.end());
    return ids_;
  }
  kernels::RoutingSpec spec;
  spec.experts = experts_, spec.topk = topk_, spec.tokens = g_.tensor(ids_tensor_).shape[0];
  spec.distribution = opt_.routing.distribution, spec.s = opt_.routing.s;
  spec.hot_fraction = opt_.routing.hot_fraction, spec.seed = opt_.routing.seed;
  ids_ = kernels::draw_routing(spec);
  return ids_;
}

// Values for a graph input, seeded per tensor. Weights are scaled by 1/sqrt(fan-in) so that
// activations keep unit scale through the block (and the SwiGLU clamp sees realistic values).
std::vector<double> Executor::graph_input(const TensorDesc& t, size_t index) const {
  kernels::Rng rng(opt_.inputs.seed * 0x9E3779B97F4A7C15ull + 977 * (index + 1));
  std::vector<double> v(static_cast<size_t>(t.elements()));
  std::string role;
  const OpNode* consumer = nullptr;
  for (const auto& op : g_.ops)
    for (const auto& [r, name] : op.inputs)
      if (name == t.name && !consumer) consumer = &op, role = r;
  if (consumer && consumer->kind == "hash_topk" && role == "input_ids") {
    const int64_t vocab = port(*consumer, "tid2eid").shape[0];
    for (auto& x : v) x = static_cast<double>(rng.next() % static_cast<uint64_t>(vocab));
    return v;
  }
  if (consumer && consumer->kind == "hash_topk" && role == "tid2eid") {  // distinct experts per row
    const int64_t K = t.shape[1], E = port(*consumer, "scores").shape[1];
    std::vector<int> perm(E);
    for (int64_t r = 0; r < t.shape[0]; ++r) {
      for (int64_t e = 0; e < E; ++e) perm[e] = static_cast<int>(e);
      for (int64_t j = 0; j < K; ++j) {
        std::swap(perm[j], perm[j + rng.next() % static_cast<uint64_t>(E - j)]);
        v[r * K + j] = perm[j];
      }
    }
    return v;
  }
  kernels::InputSpec spec = opt_.inputs;
  spec.seed = spec.seed * 1000003 + index;
  if (consumer && role == "b" && (consumer->kind == "gemm" || consumer->kind == "grouped_gemm"))
    spec.scale /= std::sqrt(static_cast<double>(t.shape[t.shape.size() - 2]));
  if (role == "bias") spec.scale *= 0.1;
  kernels::TensorInfo info{t.name, t.dtype, 1, t.elements(), kernels::TensorLayout::RowMajor, 0, false};
  return kernels::generate_input(spec, info, static_cast<int>(index));
}

void Executor::generate_inputs() {
  for (size_t i = 0; i < g_.tensors.size(); ++i)
    if (g_.producer(g_.tensors[i].name) < 0) values_[g_.tensors[i].name] = graph_input(g_.tensors[i], i);
}

Built Executor::build_single(const OpNode& op) {
  using namespace kernels;
  const std::string& k = op.kind;
  Built b;
  auto bind = [&](std::initializer_list<std::string> names) {
    for (const auto& n : names) b.bind.push_back({n, 0});
  };
  if (k == "gemm") {
    const TensorDesc &a = port(op, "a"), &w = port(op, "b"), &c = port(op, "c", true);
    GemmShape s{a.shape[0], w.shape[1], a.shape[1], a.dtype, c.dtype, TensorLayout::RowMajor, TensorLayout::ColMajor};
    b.kernel = std::make_unique<GemmKernel>(s, default_gemm_tiling(s, hw_), true);
    bind({a.name, w.name, c.name});
  } else if (k == "grouped_gemm") {
    const TensorDesc &a = port(op, "a"), &w = port(op, "b"), &c = port(op, "c", true);
    GemmShape s{0, w.shape[2], w.shape[1], a.dtype, c.dtype, TensorLayout::RowMajor, TensorLayout::ColMajor};
    std::vector<int64_t> rows = tokens_per_expert(routing(), w.shape[0]);
    GemmTiling t = default_grouped_gemm_tiling(s, rows, hw_);
    b.kernel = std::make_unique<GroupedGemmKernel>(s, rows, t, true);
    b.bind.push_back({a.name, 0});
    for (int64_t e = 0; e < w.shape[0]; ++e) b.bind.push_back({w.name, e * w.shape[1] * w.shape[2]});
    b.bind.push_back({c.name, 0});
  } else if (k == "swiglu") {
    const TensorDesc &h = port(op, "h"), &a = port(op, "a", true);
    SwigluShape s;
    s.rows = h.shape[0], s.inter = a.shape[1], s.in = h.dtype, s.out = a.dtype;
    if (!op.attrs["clamp"].is_null()) s.clamp = op.attrs["clamp"].get<double>();
    s.gate_first = op.attrs["halves"] == "gate_first";
    s.row_weights = has(op, "row_weights");
    b.kernel = std::make_unique<SwigluKernel>(s, default_swiglu_tiling(s, hw_), true);
    b.bind.push_back({h.name, 0});
    if (s.row_weights) b.bind.push_back({op.inputs.at("row_weights"), 0});
    b.bind.push_back({a.name, 0});
  } else if (k == "combine") {
    const TensorDesc &y = port(op, "y"), &o = port(op, "out", true);
    CombineShape s;
    s.tokens = o.shape[0], s.hidden = o.shape[1], s.topk = port(op, "row_idx").shape[0] / o.shape[0];
    s.dtype = o.dtype;
    s.weighted = has(op, "weights"), s.shared = has(op, "shared"), s.residual = has(op, "residual");
    s.expert_of = routing();
    b.kernel = std::make_unique<CombineKernel>(s, default_combine_tiling(s, hw_), true);
    b.bind.push_back({y.name, 0});
    for (const char* r : {"weights", "shared", "residual"})
      if (has(op, r)) b.bind.push_back({op.inputs.at(r), 0});
    b.bind.push_back({o.name, 0});
  } else if (k == "permute") {
    const TensorDesc &x = port(op, "x"), &rows = port(op, "rows", true);
    PermuteShape s;
    s.tokens = x.shape[0], s.hidden = x.shape[1], s.topk = rows.shape[0] / x.shape[0], s.dtype = x.dtype;
    s.weights = has(op, "weights");
    s.expert_of = routing();
    b.kernel = std::make_unique<PermuteKernel>(s, default_permute_tiling(s, hw_), true);
    b.bind.push_back({x.name, 0});
    if (s.weights) b.bind.push_back({op.inputs.at("weights"), 0});
    b.bind.push_back({rows.name, 0});
    if (s.weights) b.bind.push_back({op.outputs.at("row_weights"), 0});
  } else {
    throw ConfigError(op.loc, fmt::format("op {} ({}): no kernel runs this op kind yet", op.name, op.kind));
  }
  return b;
}

Built Executor::build(const KernelGroup& grp) {
  if (grp.rule.empty()) return build_single(g_.ops[grp.ops[0]]);
  throw InternalError("fusion rule " + grp.rule + " has no kernel");
}

GraphRun Executor::run(const FusionPlan& plan) {
  for (const auto& op : g_.ops)
    if (op.kind == "topk" || op.kind == "hash_topk") {
      ids_tensor_ = op.outputs.at("ids");
      experts_ = port(op, "scores").shape[1];
      topk_ = g_.tensor(ids_tensor_).shape[1];
    }
  if (opt_.functional) generate_inputs();
  GraphRun run;
  run.launch_us = hw_.launch_overhead_us;
  std::map<std::string, int> written_by;  // tensor -> kernel index
  for (const auto& grp : plan.groups) {
    KernelRun kr;
    kr.group = grp;
    Built b = build(grp);
    kernels::Status st = b.kernel->can_implement(hw_);
    const OpNode& first = g_.ops[grp.ops[0]];
    if (!st.ok) throw ConfigError(first.loc, fmt::format("kernel {} ({}) cannot run: {}", grp.name, b.kernel->name(), st.reason));
    const auto tensors = b.kernel->tensors();
    if (tensors.size() != b.bind.size())
      throw InternalError(fmt::format("{}: {} tensors, {} bindings", b.kernel->name(), tensors.size(), b.bind.size()));
    std::set<int> after;
    for (size_t i = 0; i < tensors.size(); ++i)
      if (!tensors[i].output)
        if (auto it = written_by.find(b.bind[i].tensor); it != written_by.end()) after.insert(it->second);
    kr.after.assign(after.begin(), after.end());

    sim::Program prog = b.kernel->lower(hw_, opt_.functional);
    sim::SimOptions so = opt_.sim;
    so.record_work = opt_.functional;
    kr.sim = sim::simulate(hw_, prog, so);
    kr.time_us = hw_.cycles_to_us(kr.sim.cycles);
    if (opt_.functional) {
      sim::FunctionalMemory mem(hw_, prog);
      std::vector<std::vector<double>> inputs;
      for (size_t i = 0; i < tensors.size(); ++i) {
        if (tensors[i].output) continue;
        const auto& all = values_.at(b.bind[i].tensor);
        const size_t n = static_cast<size_t>(tensors[i].rows * tensors[i].cols);
        inputs.emplace_back(all.begin() + b.bind[i].offset, all.begin() + b.bind[i].offset + n);
        kernels::write_tensor(mem.gm(), tensors[i], inputs.back());
      }
      sim::run_functional(prog, kr.sim, mem);
      kr.validation = kernels::validate_outputs(*b.kernel, inputs, mem.gm());
      for (size_t i = 0; i < tensors.size(); ++i)
        if (tensors[i].output) {
          std::vector<double> v = kernels::read_tensor(mem.gm(), tensors[i]);
          auto& dst = values_[b.bind[i].tensor];
          dst.resize(static_cast<size_t>(g_.tensor(b.bind[i].tensor).elements()));
          std::copy(v.begin(), v.end(), dst.begin() + b.bind[i].offset);
        }
      kr.sim.work.clear();
      kr.sim.work.shrink_to_fit();
    }
    for (size_t i = 0; i < tensors.size(); ++i)
      if (tensors[i].output) written_by[b.bind[i].tensor] = static_cast<int>(run.kernels.size());
    // A drawn routing replaces the gate's picks from here on (the gate still ran and was judged).
    if (written_by.count(ids_tensor_) && written_by[ids_tensor_] == static_cast<int>(run.kernels.size()) &&
        opt_.routing.distribution != "from_gate" && opt_.functional) {
      const auto& ids = routing();
      values_[ids_tensor_].assign(ids.begin(), ids.end());
    }
    kr.kernel = std::move(b.kernel);
    run.kernels.push_back(std::move(kr));
  }
  if (!ids_tensor_.empty()) {
    run.tokens_per_expert = kernels::tokens_per_expert(routing(), experts_);
    run.imbalance = kernels::imbalance(run.tokens_per_expert);
    run.routing_source = opt_.routing.distribution;
  }
  // Serial stream and the critical path through the kernel DAG (kernels are in topological order).
  std::vector<double> finish(run.kernels.size(), 0);
  std::vector<int> pred(run.kernels.size(), -1);
  for (size_t i = 0; i < run.kernels.size(); ++i) {
    const auto& k = run.kernels[i];
    run.serial_us += k.time_us + run.launch_us;
    double start = 0;
    for (int a : k.after)
      if (finish[a] > start) start = finish[a], pred[i] = a;
    finish[i] = start + k.time_us + run.launch_us;
  }
  int last = -1;
  for (size_t i = 0; i < finish.size(); ++i)
    if (last < 0 || finish[i] > finish[last]) last = static_cast<int>(i);
  if (last >= 0) run.critical_path_us = finish[last];
  for (int i = last; i >= 0; i = pred[i]) run.critical_path.insert(run.critical_path.begin(), i);
  return run;
}

}  // namespace

GraphRun run_graph(const Graph& g, const FusionPlan& plan, const sim::HardwareSpec& hw, const GraphRunOptions& opt) {
  Executor ex(g, hw, opt);
  return ex.run(plan);
}

}  // namespace npusim::graphs
