#include "graphs/models.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/text.hpp"

namespace npusim::graphs {

const std::vector<MoeModel>& moe_models() {
  static const std::vector<MoeModel> kModels = [] {
    std::vector<MoeModel> v;
    MoeModel m;
    m.name = "deepseek-v3";  // KERNELS.md 1.1 (config_671B.json) and 6.1
    m.hidden = 7168, m.experts = 256, m.shared_experts = 1, m.topk = 8, m.inter = 2048;
    m.groups = 8, m.topk_groups = 4, m.score = "sigmoid", m.bias = true, m.route_scale = 2.5;
    m.dense_layers = 3, m.layers = 61, m.vocab = 129280;
    m.prefill_tokens = 16384, m.decode_tokens = 192;
    m.notes = {"shapes: official config_671B.json (KERNELS.md 1.1)",
               "tokens per device: vllm-ascend recipes (V3.1 P-node 16384; decode 96 seqs x 2 with MTP-1)"};
    v.push_back(m);
    m.name = "deepseek-v3.2";  // same MoE as V3; DSA changes only attention
    m.prefill_tokens = 32560, m.decode_tokens = 12;
    m.notes = {"shapes: V3.2-Exp config, MoE identical to V3 (KERNELS.md 6.1)",
               "tokens per device: vllm-ascend recipe (64 seqs with DSA-CP; decode 4 seqs x 3 with MTP-2)"};
    v.push_back(m);
    MoeModel f;
    f.name = "deepseek-v4-flash";  // KERNELS.md 2.2, 2.3, 6.1
    f.hidden = 4096, f.experts = 256, f.shared_experts = 1, f.topk = 6, f.inter = 2048;
    f.score = "sqrtsoftplus", f.bias = true, f.route_scale = 1.5, f.swiglu_limit = 10.0, f.weight_before_w2 = true;
    f.hash_layers = 3, f.layers = 43, f.vocab = 129280;
    f.prefill_tokens = 4096, f.decode_tokens = 60;
    f.notes = {"shapes: high confidence (several mirrors of config.json, NeMo defaults; KERNELS.md 2.2)",
               "vocab 129280 for the hash table: estimate (V3's tokenizer)",
               "tokens per device: vllm-ascend tutorial (16 seqs prefill; decode 30 seqs x 2 with MTP-1)"};
    v.push_back(f);
    f.name = "deepseek-v4-pro";
    f.hidden = 7168, f.experts = 384, f.inter = 3072, f.route_scale = 2.5, f.layers = 61;
    f.decode_tokens = 120;
    f.notes = {"shapes: high confidence for hidden, experts, top-k, inter and route scale (KERNELS.md 2.2)",
               "vocab 129280 for the hash table: estimate (V3's tokenizer)",
               "tokens per device: vllm-ascend tutorial (16 seqs prefill; decode 60 seqs x 2 with MTP-1)"};
    v.push_back(f);
    MoeModel t;
    t.name = "toy";  // KERNELS.md 6.1 toy row (all estimates, for tests)
    t.hidden = 256, t.experts = 16, t.shared_experts = 1, t.topk = 4, t.inter = 128;
    t.groups = 4, t.topk_groups = 2, t.score = "sigmoid", t.bias = true, t.route_scale = 2.5;
    t.hash_layers = 1, t.layers = 4, t.vocab = 1024;
    t.prefill_tokens = 64, t.decode_tokens = 4;
    t.notes = {"toy shapes for tests (KERNELS.md 6.1, estimates); layer 0 routes by hash, route scale 2.5 and "
               "vocab 1024 are estimates"};
    v.push_back(t);
    return v;
  }();
  return kModels;
}

const MoeModel& moe_model(const std::string& name, const SourceLoc& where) {
  std::vector<std::string> names;
  for (const auto& m : moe_models()) {
    if (m.name == name) return m;
    names.push_back(m.name);
  }
  throw ConfigError(where, fmt::format("unknown model '{}'{} (presets: {}; or a path to a graph YAML)", name,
                                       did_you_mean(name, names), fmt::join(names, ", ")));
}

Graph build_moe_graph(const MoeModel& m, const MoeBlockOptions& opt) {
  const int layer = opt.layer >= 0 ? opt.layer : std::max(m.dense_layers, m.hash_layers);
  const bool hashed = layer < m.hash_layers;
  const int64_t T = opt.tokens, D = m.hidden, E = m.experts, K = m.topk, I = m.inter;
  const int64_t Is = m.shared_experts * m.inter;
  using sim::DType;
  Graph g;
  g.model = m.name;
  g.name = fmt::format("{} moe layer {} T={}", m.name, layer, T);
  g.notes = m.notes;
  g.notes.push_back("weights modelled as bf16; the checkpoints' FP8 (V3) / FP4 (V4) expert weights are not modelled yet");
  const SourceLoc loc{m.name, 0, 0, "workload.model"};
  auto tensor = [&](std::string name, std::vector<int64_t> shape, DType dt) {
    g.tensors.push_back({std::move(name), std::move(shape), dt, loc});
  };
  auto op = [&](std::string name, std::string kind, std::map<std::string, std::string> in,
                std::map<std::string, std::string> out, nlohmann::json attrs = nlohmann::json::object()) {
    OpNode o{std::move(name), std::move(kind), std::move(in), std::move(out), nlohmann::json::object(), loc};
    for (const auto& a : op_kind(o.kind).attrs) o.attrs[a.name] = attrs.contains(a.name) ? attrs[a.name] : a.default_value;
    g.ops.push_back(std::move(o));
  };

  tensor("x", {T, D}, DType::Bf16);
  tensor("w_gate", {D, E}, DType::Bf16);
  tensor("logits", {T, E}, DType::Fp32);
  tensor("scores", {T, E}, DType::Fp32);
  if (m.bias && !hashed) tensor("bias", {E}, DType::Fp32);
  if (hashed) {
    tensor("input_ids", {T}, DType::Int32);
    tensor("tid2eid", {m.vocab, K}, DType::Int32);
  }
  tensor("topk_ids", {T, K}, DType::Int32);
  tensor("topk_scores", {T, K}, DType::Fp32);
  tensor("topk_weights", {T, K}, DType::Fp32);
  tensor("row_idx", {T * K}, DType::Int32);
  tensor("expert_tokens", {E}, DType::Int32);
  tensor("rows", {T * K, D}, DType::Bf16);
  if (m.weight_before_w2) tensor("row_weights", {T * K}, DType::Fp32);
  tensor("w13", {E, D, 2 * I}, DType::Bf16);
  tensor("h", {T * K, 2 * I}, DType::Bf16);
  tensor("act", {T * K, I}, DType::Bf16);
  tensor("w2", {E, I, D}, DType::Bf16);
  tensor("y", {T * K, D}, DType::Bf16);
  if (opt.shared && Is > 0) {
    tensor("ws13", {D, 2 * Is}, DType::Bf16);
    tensor("hs", {T, 2 * Is}, DType::Bf16);
    tensor("acts", {T, Is}, DType::Bf16);
    tensor("ws2", {Is, D}, DType::Bf16);
    tensor("ys", {T, D}, DType::Bf16);
  }
  if (opt.residual) tensor("residual", {T, D}, DType::Bf16);
  tensor("out", {T, D}, DType::Bf16);

  nlohmann::json clamp = m.swiglu_limit ? nlohmann::json(*m.swiglu_limit) : nlohmann::json(nullptr);
  if (opt.shared && Is > 0) {  // independent of the routing: a second branch of the DAG
    op("shared_up", "gemm", {{"a", "x"}, {"b", "ws13"}}, {{"c", "hs"}});
    op("shared_act", "swiglu", {{"h", "hs"}}, {{"a", "acts"}}, {{"clamp", clamp}});
    op("shared_down", "gemm", {{"a", "acts"}, {"b", "ws2"}}, {{"c", "ys"}});
  }
  op("router", "gemm", {{"a", "x"}, {"b", "w_gate"}}, {{"c", "logits"}});
  op("score", "gating_score", {{"logits", "logits"}}, {{"scores", "scores"}}, {{"score", m.score}});
  if (hashed) {
    op("select", "hash_topk", {{"scores", "scores"}, {"input_ids", "input_ids"}, {"tid2eid", "tid2eid"}},
       {{"ids", "topk_ids"}, {"weights", "topk_scores"}});
  } else {
    std::map<std::string, std::string> in{{"scores", "scores"}};
    if (m.bias) in["bias"] = "bias";
    op("select", "topk", in, {{"ids", "topk_ids"}, {"weights", "topk_scores"}},
       {{"groups", m.groups}, {"topk_groups", m.topk_groups}, {"group_select", m.bias ? "top2sum" : "max"}});
  }
  op("normalize", "normalize", {{"weights", "topk_scores"}}, {{"weights", "topk_weights"}},
     {{"renormalize", m.score != "softmax"}, {"route_scale", m.route_scale}});
  op("sort", "routing_sort", {{"ids", "topk_ids"}}, {{"row_idx", "row_idx"}, {"expert_tokens", "expert_tokens"}});
  if (m.weight_before_w2) {
    op("permute", "permute", {{"x", "x"}, {"row_idx", "row_idx"}, {"weights", "topk_weights"}},
       {{"rows", "rows"}, {"row_weights", "row_weights"}});
  } else {
    op("permute", "permute", {{"x", "x"}, {"row_idx", "row_idx"}}, {{"rows", "rows"}});
  }
  op("gmm1", "grouped_gemm", {{"a", "rows"}, {"b", "w13"}, {"expert_tokens", "expert_tokens"}}, {{"c", "h"}});
  std::map<std::string, std::string> act_in{{"h", "h"}};
  if (m.weight_before_w2) act_in["row_weights"] = "row_weights";
  op("swiglu", "swiglu", act_in, {{"a", "act"}}, {{"clamp", clamp}});
  op("gmm2", "grouped_gemm", {{"a", "act"}, {"b", "w2"}, {"expert_tokens", "expert_tokens"}}, {{"c", "y"}});
  std::map<std::string, std::string> comb_in{{"y", "y"}, {"row_idx", "row_idx"}};
  if (!m.weight_before_w2) comb_in["weights"] = "topk_weights";
  if (opt.residual) comb_in["residual"] = "residual";
  if (opt.shared && Is > 0) comb_in["shared"] = "ys";
  op("combine", "combine", comb_in, {{"out", "out"}});
  check_graph(g);
  return g;
}

}  // namespace npusim::graphs
