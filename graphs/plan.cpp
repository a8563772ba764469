#include "graphs/plan.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <cmath>
#include <map>
#include <set>

#include "common/text.hpp"
#include "kernels/combine.hpp"
#include "kernels/gating.hpp"
#include "kernels/init_routing.hpp"
#include "kernels/gemm.hpp"
#include "kernels/grouped_gemm.hpp"
#include "kernels/grouped_gemm_finalize.hpp"
#include "kernels/grouped_gemm_swiglu.hpp"
#include "kernels/permute.hpp"
#include "kernels/reference/moe.hpp"
#include "kernels/reference/reference.hpp"
#include "kernels/rng.hpp"
#include "kernels/routing.hpp"
#include "kernels/swiglu.hpp"
#include "sim/functional.hpp"

namespace npusim::graphs {

const std::vector<FusionRule>& fusion_rules() {
  static const std::vector<FusionRule> kRules{
      {"gating", {{"gating_score"}, {"topk", "hash_topk"}, {"normalize"}}, "gating",
       "scores, top-k (or hash) and normalization in one AIV kernel (CANN MoeGatingTopK): the scores and the raw "
       "weights stay in UB"},
      {"init_routing", {{"routing_sort"}, {"permute"}}, "init_routing",
       "sort by expert, expanded row index, tokens per expert and the row gather in one AIV kernel (CANN "
       "MoeInitRoutingV2); applies when the permute carries no weights"},
      {"gmm1_swiglu", {{"grouped_gemm"}, {"swiglu"}}, "grouped_gemm_swiglu",
       "GMM1 on the cube feeding SwiGLU on the AIVs block by block (through a GM workspace on 2201, L0C->UB on "
       "3510): H never goes to HBM as a tensor"},
      {"indexer_topk", {{"lightning_indexer"}, {"index_topk"}}, "lightning_indexer",
       "the index scores and their top-k in one kernel (CANN LightningIndexer): the [T, S] score matrix never "
       "goes to HBM, a running top-k per key block keeps only the candidates"},
      {"gmm2_finalize", {{"grouped_gemm"}, {"combine"}}, "grouped_gemm_finalize",
       "GMM2 on the cube, each expert row scaled and atomically added into residual + shared token rows by the "
       "AIVs (CANN GroupedMatmulFinalizeRouting): Y never goes to HBM as a tensor"},
  };
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
      // The init-routing kernel gathers rows only: a permute that also carries weights stays apart.
      if (r->name == "init_routing" && chain.size() == 2 && g.ops[chain[1]].inputs.count("weights")) break;
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

std::string kernel_of_op(const std::string& kind) {
  if (kind == "gating_score" || kind == "topk" || kind == "hash_topk" || kind == "normalize") return "gating";
  if (kind == "routing_sort") return "init_routing";
  if (kind == "index_topk") return "topk";
  return kind;  // gemm, grouped_gemm, swiglu, combine, permute: a kernel of the same name
}

std::string format_plan(const Graph& g, const FusionPlan& plan) {
  std::string out = fmt::format("fusion {}: {} kernels\n", plan.label, plan.groups.size());
  for (const auto& grp : plan.groups) {
    std::vector<std::string> ops;
    for (int o : grp.ops) ops.push_back(g.ops[o].name + ":" + g.ops[o].kind);
    std::string kernel = kernel_of_op(g.ops[grp.ops[0]].kind);
    for (const auto& r : fusion_rules())
      if (r.name == grp.rule) kernel = r.kernel;
    out += fmt::format("  {:<16} {:<22} {}\n", grp.name, kernel, fmt::join(ops, " + "));
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
  Built build_gating(const std::vector<const OpNode*>& ops);
  Built build_init_routing(const std::vector<const OpNode*>& ops);
  Built build_gmm_swiglu(const OpNode& gmm, const OpNode& act);
  Built build_gmm_finalize(const OpNode& gmm, const OpNode& combine);
  void bind_expert_weights(Built& b, const TensorDesc& w) const;
  const std::vector<double>& input_values(const std::string& tensor);
  const std::vector<int32_t>& routing();  // the expert ids the routed kernels are lowered for
  void generate_inputs();
  std::vector<double> graph_input(const TensorDesc& t, size_t index) const;
  std::vector<int32_t> reference_picks() const;
  void simulate_all(std::vector<KernelRun>& kernels) const;

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
    if (auto it = values_.find(ids_tensor_); it != values_.end()) {  // the device's picks
      ids_.assign(it->second.begin(), it->second.end());
    } else {
      ids_ = reference_picks();
    }
    return ids_;
  }
  kernels::RoutingSpec spec;
  spec.experts = experts_, spec.topk = topk_, spec.tokens = g_.tensor(ids_tensor_).shape[0];
  spec.distribution = opt_.routing.distribution, spec.s = opt_.routing.s;
  spec.hot_fraction = opt_.routing.hot_fraction, spec.seed = opt_.routing.seed;
  ids_ = kernels::draw_routing(spec);
  return ids_;
}

// Timing-only runs routed from the gate: the CPU reference gate on the same generated inputs a
// functional run would use (router GEMM in fp64, then ref::gate / ref::hash_gate). Near-ties may
// pick differently from the device's fp32 gate; the token counts differ only there.
std::vector<int32_t> Executor::reference_picks() const {
  const OpNode* select = nullptr;
  for (const auto& op : g_.ops)
    if (op.outputs.count("ids") && op.outputs.at("ids") == ids_tensor_) select = &op;
  const std::string scores = select->inputs.at("scores");
  const OpNode& score = g_.ops[g_.producer(scores)];
  const std::string logits_name = score.inputs.at("logits");
  const int p = g_.producer(logits_name);
  if (p < 0 || g_.ops[p].kind != "gemm")
    throw ConfigError(select->loc, "routing from_gate needs the logits to come from a router gemm in the graph");
  const OpNode& router = g_.ops[p];
  auto input = [&](const std::string& name) {
    for (size_t i = 0; i < g_.tensors.size(); ++i)
      if (g_.tensors[i].name == name) return graph_input(g_.tensors[i], i);
    throw InternalError("no tensor " + name);
  };
  const TensorDesc& xt = port(router, "a");
  const int64_t T = xt.shape[0], D = xt.shape[1], E = port(*select, "scores").shape[1];
  std::vector<double> x = input(xt.name), w = input(router.inputs.at("b")), logits(static_cast<size_t>(T * E));
  ref::gemm(T, E, D, x.data(), w.data(), logits.data());
  const OpNode* norm = nullptr;
  for (const auto& op : g_.ops)
    if (op.kind == "normalize" && op.inputs.at("weights") == select->outputs.at("weights")) norm = &op;
  ref::GateConfig cfg;
  const std::string f = score.attrs["score"];
  cfg.score = f == "softmax" ? ref::ScoreFunc::Softmax : f == "sqrtsoftplus" ? ref::ScoreFunc::SqrtSoftplus : ref::ScoreFunc::Sigmoid;
  cfg.topk = topk_;
  if (norm) {
    cfg.renormalize = norm->attrs["renormalize"].get<bool>();
    cfg.eps = norm->attrs["eps"], cfg.route_scale = norm->attrs["route_scale"];
  }
  std::vector<int32_t> picks(static_cast<size_t>(T * topk_));
  std::vector<double> weights(picks.size());
  if (select->kind == "hash_topk") {
    std::vector<double> ids = input(select->inputs.at("input_ids")), table = input(select->inputs.at("tid2eid"));
    std::vector<int64_t> ids64(ids.begin(), ids.end());
    std::vector<int32_t> table32(table.begin(), table.end());
    ref::hash_gate(T, E, logits.data(), ids64.data(), port(*select, "tid2eid").shape[0], table32.data(), cfg,
                   picks.data(), weights.data());
  } else {
    cfg.groups = select->attrs["groups"], cfg.topk_groups = select->attrs["topk_groups"];
    cfg.group_score = select->attrs["group_select"] == "max" ? ref::GroupScore::Max : ref::GroupScore::Top2Sum;
    std::vector<double> bias;
    if (select->inputs.count("bias")) bias = input(select->inputs.at("bias"));
    ref::gate(T, E, logits.data(), bias.empty() ? nullptr : bias.data(), cfg, picks.data(), weights.data());
  }
  return picks;
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

kernels::SwigluShape swiglu_shape(const OpNode& op, const TensorDesc& h, const TensorDesc& a) {
  kernels::SwigluShape s;
  s.rows = h.shape[0], s.inter = a.shape[1], s.in = h.dtype, s.out = a.dtype;
  if (!op.attrs["clamp"].is_null()) s.clamp = op.attrs["clamp"].get<double>();
  s.gate_first = op.attrs["halves"] == "gate_first";
  s.row_weights = op.inputs.count("row_weights") > 0;
  return s;
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
    bind_expert_weights(b, w);
    b.bind.push_back({c.name, 0});
  } else if (k == "swiglu") {
    const TensorDesc &h = port(op, "h"), &a = port(op, "a", true);
    const SwigluShape s = swiglu_shape(op, h, a);
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

// Binds a kernel's tensors to graph tensors by the kernel's tensor names.
void bind_by_name(Built& b, const std::map<std::string, std::string>& names) {
  for (const auto& t : b.kernel->tensors()) {
    auto it = names.find(t.name);
    if (it == names.end()) throw InternalError(fmt::format("{}: no graph tensor for its tensor {}", b.kernel->name(), t.name));
    b.bind.push_back({it->second, 0});
  }
}

kernels::GateScore gate_score(const std::string& f) {
  using kernels::GateScore;
  return f == "softmax" ? GateScore::Softmax : f == "sqrtsoftplus" ? GateScore::SqrtSoftplus : GateScore::Sigmoid;
}

// The gating kernel for any part of score -> top-k / hash -> normalize (`ops` in chain order).
Built Executor::build_gating(const std::vector<const OpNode*>& ops) {
  using namespace kernels;
  GatingShape s;
  std::map<std::string, std::string> names;
  const bool has_score = ops.front()->kind == "gating_score", has_norm = ops.back()->kind == "normalize";
  const OpNode* select = nullptr;
  for (const OpNode* op : ops)
    if (op->kind == "topk" || op->kind == "hash_topk") select = op;
  s.stage = ops.size() == 3 ? GateStage::Fused
            : has_score     ? GateStage::Score
            : has_norm      ? GateStage::Normalize
                            : GateStage::Select;
  if (ops.size() == 2) throw InternalError("gating kernels run one stage or all three");
  // Shapes: tokens and experts from the scores, top-k from the weights.
  for (const OpNode* op : ops) {
    if (op->kind == "gating_score") {
      s.score = gate_score(op->attrs["score"]);
      s.tokens = port(*op, "logits").shape[0], s.experts = port(*op, "logits").shape[1];
      names["logits"] = op->inputs.at("logits");
      names["scores"] = op->outputs.at("scores");
    } else if (op->kind == "normalize") {
      s.tokens = port(*op, "weights").shape[0], s.topk = port(*op, "weights").shape[1];
      s.renormalize = op->attrs["renormalize"], s.eps = op->attrs["eps"], s.route_scale = op->attrs["route_scale"];
      names["raw_weights"] = op->inputs.at("weights");
      names["weights"] = op->outputs.at("weights");
    }
  }
  if (select) {
    s.tokens = port(*select, "scores").shape[0], s.experts = port(*select, "scores").shape[1];
    s.topk = port(*select, "ids", true).shape[1];
    names["scores"] = select->inputs.at("scores");
    names["ids"] = select->outputs.at("ids");
    names["raw_weights"] = select->outputs.at("weights");
    if (select->kind == "hash_topk") {
      s.hash_vocab = port(*select, "tid2eid").shape[0];
      names["input_ids"] = select->inputs.at("input_ids");
      names["tid2eid"] = select->inputs.at("tid2eid");
      const auto& ids = input_values(select->inputs.at("input_ids"));
      s.input_ids.assign(ids.begin(), ids.end());
    } else {
      s.groups = select->attrs["groups"], s.topk_groups = select->attrs["topk_groups"];
      s.group_select = select->attrs["group_select"] == "max" ? GroupSelect::Max : GroupSelect::Top2Sum;
      s.bias = select->inputs.count("bias") > 0;
      if (s.bias) names["bias"] = select->inputs.at("bias");
    }
  }
  // A lone score or normalize stage does not see the other ops' attributes: find them in the graph.
  for (const auto& op : g_.ops) {
    if (!has_score && op.kind == "gating_score") {
      s.score = gate_score(op.attrs["score"]);
    }
    if (!has_norm && op.kind == "normalize") s.renormalize = op.attrs["renormalize"];
    if (!select && (op.kind == "topk" || op.kind == "hash_topk"))
      s.experts = port(op, "scores").shape[1], s.topk = port(op, "ids", true).shape[1];
  }
  Built b;
  b.kernel = std::make_unique<GatingKernel>(s, default_gating_tiling(s, hw_), true);
  bind_by_name(b, names);
  return b;
}

// The init-routing kernel: the routing sort alone (layout only, hidden 0) or with the row gather.
Built Executor::build_init_routing(const std::vector<const OpNode*>& ops) {
  using namespace kernels;
  const OpNode& sort = *ops.front();
  const OpNode* permute = ops.size() > 1 ? ops[1] : nullptr;
  InitRoutingShape s;
  const TensorDesc& ids = port(sort, "ids");
  s.tokens = ids.shape[0], s.topk = ids.shape[1];
  s.routing.experts = port(sort, "expert_tokens", true).shape[0];
  s.expert_of = routing();
  std::map<std::string, std::string> names{{"ids", ids.name},
                                           {"expanded_row_idx", sort.outputs.at("row_idx")},
                                           {"expert_tokens", sort.outputs.at("expert_tokens")}};
  if (permute) {
    const TensorDesc& x = port(*permute, "x");
    s.hidden = x.shape[1], s.dtype = x.dtype;
    names["x"] = x.name;
    names["expanded_x"] = permute->outputs.at("rows");
  } else {
    s.dtype = sim::DType::Bf16;
  }
  Built b;
  b.kernel = std::make_unique<InitRoutingKernel>(s, default_init_routing_tiling(s, hw_), true);
  for (const auto& t : b.kernel->tensors()) {
    auto it = names.find(t.name);
    b.bind.push_back({it == names.end() ? "" : it->second, 0});  // hidden 0: x / expanded_x are empty
  }
  return b;
}

// The per-expert weights of a grouped GEMM: slices of one [E, K, N] tensor.
void Executor::bind_expert_weights(Built& b, const TensorDesc& w) const {
  for (int64_t e = 0; e < w.shape[0]; ++e) b.bind.push_back({w.name, e * w.shape[1] * w.shape[2]});
}

Built Executor::build_gmm_swiglu(const OpNode& gmm, const OpNode& act) {
  using namespace kernels;
  const TensorDesc &x = port(gmm, "a"), &w = port(gmm, "b"), &h = port(gmm, "c", true), &a = port(act, "a", true);
  GroupedGemmSwigluShape s;
  s.gemm = {0, w.shape[2], w.shape[1], x.dtype, h.dtype, TensorLayout::RowMajor, TensorLayout::ColMajor};
  s.rows = tokens_per_expert(routing(), w.shape[0]);
  s.act = swiglu_shape(act, h, a);
  Built b;
  GroupedGemmSwigluTiling t = default_grouped_gemm_swiglu_tiling(s, hw_);
  b.kernel = std::make_unique<GroupedGemmSwigluKernel>(s, t, true);
  b.bind.push_back({x.name, 0});
  bind_expert_weights(b, w);
  if (s.act.row_weights) b.bind.push_back({act.inputs.at("row_weights"), 0});
  b.bind.push_back({a.name, 0});
  return b;
}

Built Executor::build_gmm_finalize(const OpNode& gmm, const OpNode& combine) {
  using namespace kernels;
  const TensorDesc &x = port(gmm, "a"), &w = port(gmm, "b"), &o = port(combine, "out", true);
  GroupedGemmFinalizeShape s;
  s.gemm = {0, w.shape[2], w.shape[1], x.dtype, sim::DType::Fp32, TensorLayout::RowMajor, TensorLayout::ColMajor};
  s.tokens = o.shape[0], s.topk = port(combine, "row_idx").shape[0] / o.shape[0], s.experts = w.shape[0];
  s.out = o.dtype;
  s.weighted = has(combine, "weights"), s.shared = has(combine, "shared"), s.residual = has(combine, "residual");
  s.expert_of = routing();
  Built b;
  GroupedGemmFinalizeTiling t = default_grouped_gemm_finalize_tiling(s, hw_);
  b.kernel = std::make_unique<GroupedGemmFinalizeKernel>(std::move(s), t, true);
  b.bind.push_back({x.name, 0});
  bind_expert_weights(b, w);
  for (const char* r : {"weights", "shared", "residual"})
    if (has(combine, r)) b.bind.push_back({combine.inputs.at(r), 0});
  b.bind.push_back({o.name, 0});
  return b;
}

// Graph input values: generated on first use (timing-only runs need only the routing's inputs).
const std::vector<double>& Executor::input_values(const std::string& tensor) {
  auto it = values_.find(tensor);
  if (it != values_.end()) return it->second;
  for (size_t i = 0; i < g_.tensors.size(); ++i)
    if (g_.tensors[i].name == tensor) return values_[tensor] = graph_input(g_.tensors[i], i);
  throw InternalError("no tensor " + tensor);
}

Built Executor::build(const KernelGroup& grp) {
  std::vector<const OpNode*> ops;
  for (int o : grp.ops) ops.push_back(&g_.ops[o]);
  const std::string& k = ops.front()->kind;
  const std::string kernel = grp.rule.empty() ? kernel_of_op(k) : "";
  if (grp.rule == "gating" || kernel == "gating") return build_gating(ops);
  if (grp.rule == "init_routing" || kernel == "init_routing") return build_init_routing(ops);
  if (grp.rule == "gmm1_swiglu") return build_gmm_swiglu(*ops[0], *ops[1]);
  if (grp.rule == "gmm2_finalize") return build_gmm_finalize(*ops[0], *ops[1]);
  if (grp.rule.empty()) return build_single(*ops.front());
  throw InternalError("fusion rule " + grp.rule + " has no kernel");
}

// Timing-only runs know the routing before any kernel runs (a draw, or the reference gate), so the
// kernels are independent simulations: run them on every worker thread, the largest first.
void Executor::simulate_all(std::vector<KernelRun>& kernels) const {
  std::vector<size_t> order(kernels.size());
  std::vector<double> size(kernels.size());
  for (size_t i = 0; i < kernels.size(); ++i) order[i] = i, size[i] = kernels[i].kernel->estimated_instructions();
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return size[a] > size[b]; });
  std::atomic<size_t> next{0};
  const int workers = std::max(1, std::min<int>(tbb::this_task_arena::max_concurrency(), static_cast<int>(order.size())));
  tbb::parallel_for(0, workers, [&](int) {
    for (size_t j; (j = next++) < order.size();) {
      KernelRun& kr = kernels[order[j]];
      const sim::Program prog = kr.kernel->lower(hw_, false);
      kr.sim = sim::simulate(hw_, prog, opt_.sim);
      kr.time_us = hw_.cycles_to_us(kr.sim.cycles);
    }
  });
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
    // Dependencies follow the graph's edges: a kernel may read data through its lowering (row
    // counts, gather indices) rather than as a tensor.
    std::set<int> after;
    for (int o : grp.ops)
      for (const auto& [role, t] : g_.ops[o].inputs)
        if (auto it = written_by.find(t); it != written_by.end()) after.insert(it->second);
    kr.after.assign(after.begin(), after.end());

    kr.kernel = std::move(b.kernel);
    if (opt_.functional) {
      sim::Program prog = kr.kernel->lower(hw_, true);
      sim::SimOptions so = opt_.sim;
      so.record_work = true;
      kr.sim = sim::simulate(hw_, prog, so);
      kr.time_us = hw_.cycles_to_us(kr.sim.cycles);
      sim::FunctionalMemory mem(hw_, prog);
      std::vector<std::vector<double>> inputs;
      for (size_t i = 0; i < tensors.size(); ++i) {
        if (tensors[i].output) continue;
        const size_t n = static_cast<size_t>(tensors[i].rows * tensors[i].cols);
        if (b.bind[i].tensor.empty()) {  // a tensor with no graph counterpart (an empty x)
          inputs.emplace_back(n, 0.0);
        } else {
          const auto& all = values_.at(b.bind[i].tensor);
          inputs.emplace_back(all.begin() + b.bind[i].offset, all.begin() + b.bind[i].offset + n);
        }
        kernels::write_tensor(mem.gm(), tensors[i], inputs.back());
      }
      sim::run_functional(prog, kr.sim, mem);
      kr.validation = kernels::validate_outputs(*kr.kernel, inputs, mem.gm());
      for (size_t i = 0; i < tensors.size(); ++i)
        if (tensors[i].output && !b.bind[i].tensor.empty()) {
          std::vector<double> v = kernels::read_tensor(mem.gm(), tensors[i]);
          auto& dst = values_[b.bind[i].tensor];
          dst.resize(static_cast<size_t>(g_.tensor(b.bind[i].tensor).elements()));
          std::copy(v.begin(), v.end(), dst.begin() + b.bind[i].offset);
        }
      kr.sim.work.clear();
      kr.sim.work.shrink_to_fit();
    }
    for (int o : grp.ops)
      for (const auto& [role, t] : g_.ops[o].outputs) written_by[t] = static_cast<int>(run.kernels.size());
    // A drawn routing replaces the gate's picks from here on (the gate still ran and was judged).
    if (written_by.count(ids_tensor_) && written_by[ids_tensor_] == static_cast<int>(run.kernels.size()) &&
        opt_.routing.distribution != "from_gate" && opt_.functional) {
      const auto& ids = routing();
      values_[ids_tensor_].assign(ids.begin(), ids.end());
    }
    run.kernels.push_back(std::move(kr));
  }
  if (!opt_.functional) simulate_all(run.kernels);
  if (!ids_tensor_.empty()) {
    run.tokens_per_expert = kernels::tokens_per_expert(routing(), experts_);
    run.imbalance = kernels::imbalance(run.tokens_per_expert);
    run.routing_source = opt_.routing.distribution;
  }
  if (opt_.functional)
    for (auto& [name, v] : values_)
      if (g_.producer(name) >= 0) run.values[name] = std::move(v);
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
