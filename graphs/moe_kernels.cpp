// Builders of the MoE (and plain GEMM) kernels of a graph: the routing the expert kernels are
// lowered for, and one kernel per op or fusion group.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "graphs/executor.hpp"
#include "kernels/combine.hpp"
#include "kernels/gating.hpp"
#include "kernels/gemm.hpp"
#include "kernels/grouped_gemm.hpp"
#include "kernels/grouped_gemm_finalize.hpp"
#include "kernels/grouped_gemm_swiglu.hpp"
#include "kernels/init_routing.hpp"
#include "kernels/permute.hpp"
#include "kernels/reference/moe.hpp"
#include "kernels/reference/reference.hpp"
#include "kernels/routing.hpp"
#include "kernels/swiglu.hpp"

namespace npusim::graphs::detail {

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

}  // namespace npusim::graphs::detail
