#include "graphs/attention.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "common/text.hpp"

namespace npusim::graphs {

using sim::DType;

const std::vector<AttentionModel>& attention_models() {
  // KERNELS.md 6.1 (tokens per device), 2.5 and 3.1 (the layers), 6.3 (what each query attends).
  static const std::vector<AttentionModel> kModels{
      {"deepseek-v3", 7168, 128, 576, 512, 192, 128, 0, 0, 0, 0, 0, 0, false, {"dense"}, 16384, 96, 131072,
       {"MLA: decode in the MQA form over the 576-dim latent (512 + 64 rope), prefill in the MHA form (qk 192, v 128)",
        "decode batch 96 sequences (192 tokens = 96 seqs x 2 with MTP-1, KERNELS.md 6.1), one query each here"}},
      {"deepseek-v3.2", 7168, 128, 576, 512, 0, 0, 64, 128, 2048, 0, 0, 0, false, {"dsa"}, 32560, 12, 131072,
       {"DSA: lightning indexer 64 x 128 (fp8 q/k, per-vector power-of-two scales), top-k 2048, sparse MLA in the "
        "MQA form (576 / 512)",
        "decode batch 12 (4 seqs x 3 with MTP-2, KERNELS.md 6.1)"}},
      {"deepseek-v4-flash", 4096, 64, 512, 512, 0, 0, 64, 128, 512, 128, 4, 128, true, {"csa", "hca", "swa"}, 4096, 60,
       131072,
       {"V4 attention: one 512-dim latent KV head (K = V, rope inside), window 128, CSA m = 4 with indexer top-k 512, "
        "HCA m = 128, per-head sink (KERNELS.md 2.5; preview release, shapes from the 3P port)"}},
      {"deepseek-v4-pro", 7168, 128, 512, 512, 0, 0, 64, 128, 1024, 128, 4, 128, true, {"csa", "hca", "swa"}, 4096, 120,
       131072,
       {"as V4-Flash with 128 heads and indexer top-k 1024 (medium confidence: one mirror says 512, KERNELS.md 6.1)"}},
      {"toy", 256, 8, 80, 64, 0, 0, 4, 32, 32, 16, 4, 16, true, {"dense", "dsa", "csa", "hca", "swa"}, 64, 4, 512,
       {"toy (KERNELS.md 6.1, estimated): every layer kind at small sizes: MQA latent 64 + rope 16, indexer 4 x 32 "
        "top-k 32, window 16, CSA m = 4, HCA m = 16"},
       16},
  };
  return kModels;
}

const AttentionModel& attention_model(const std::string& name, const SourceLoc& where) {
  std::vector<std::string> names;
  for (const auto& m : attention_models()) {
    if (m.name == name) return m;
    names.push_back(m.name);
  }
  throw ConfigError(where, fmt::format("unknown model '{}'{} (presets: {}; or a path to a graph YAML)", name,
                                       did_you_mean(name, names), fmt::join(names, ", ")));
}

namespace {

class Builder {
 public:
  Builder(Graph& g, const SourceLoc& loc) : g_(g), loc_(loc) {}
  void tensor(const std::string& name, std::vector<int64_t> shape, DType dt) {
    g_.tensors.push_back({name, std::move(shape), dt, loc_});
  }
  void op(const std::string& name, const std::string& kind, std::map<std::string, std::string> in,
          std::map<std::string, std::string> out, nlohmann::json attrs = nlohmann::json::object()) {
    OpNode o{name, kind, std::move(in), std::move(out), nlohmann::json::object(), loc_};
    for (const auto& a : op_kind(kind).attrs) o.attrs[a.name] = attrs.contains(a.name) ? attrs[a.name] : a.default_value;
    g_.ops.push_back(std::move(o));
  }

 private:
  Graph& g_;
  SourceLoc loc_;
};

}  // namespace

Graph build_attention_graph(const AttentionModel& m, const AttentionBlockOptions& opt, const SourceLoc& where) {
  if (std::find(m.layers.begin(), m.layers.end(), opt.layer) == m.layers.end())
    throw ConfigError(where, fmt::format("{} has no '{}' attention layer (it has: {})", m.name, opt.layer,
                                         fmt::join(m.layers, ", ")));
  const bool decode = opt.phase == "decode";
  const int64_t B = decode ? opt.batch : 1, Tq = decode ? opt.batch : opt.tokens, L = opt.context;
  const int64_t new_per_seq = decode ? 1 : opt.tokens;
  if (L < new_per_seq)
    throw ConfigError(where, fmt::format("context {} is shorter than the {} new tokens of a sequence (context counts them)", L,
                                         new_per_seq));
  Graph g;
  g.model = m.name;
  g.name = fmt::format("{} attention {} {} {}={} context={}", m.name, opt.layer, opt.phase, decode ? "batch" : "tokens",
                       decode ? B : Tq, L);
  g.notes = m.notes;
  const SourceLoc loc{m.name, 0, 0, "workload.model"};
  Builder b(g, loc);
  const int64_t H = m.heads;
  auto attrs_common = [&]() { return nlohmann::json{{"batch", B}, {"context", L}}; };

  if (opt.layer == "dense") {
    const bool mha = !decode && m.mha_d_qk > 0;
    const int64_t dqk = mha ? m.mha_d_qk : m.d_qk, dv = mha ? m.mha_d_v : m.d_v, hkv = mha ? H : 1;
    b.tensor("q", {Tq, H * dqk}, DType::Bf16);
    b.tensor("k_cache", {B * L, hkv * dqk}, DType::Bf16);
    if (mha) b.tensor("v_cache", {B * L, hkv * dv}, DType::Bf16);
    b.tensor("out", {Tq, H * dv}, DType::Bf16);
    b.tensor("lse", {Tq, H}, DType::Fp32);
    std::map<std::string, std::string> in{{"q", "q"}, {"k", "k_cache"}};
    if (mha) in["v"] = "v_cache";
    b.op("attention", "flash_attention", in, {{"out", "out"}, {"lse", "lse"}},
         {{"batch", B}, {"heads_kv", hkv}, {"causal", true}});
    return g;
  }

  // The window of a V4 layer: the last `window` tokens of each sequence, kept as a ring.
  const int64_t W = std::min(m.window, L);
  const bool v4 = opt.layer == "csa" || opt.layer == "hca" || opt.layer == "swa";
  b.tensor("q", {Tq, H * m.d_qk}, DType::Bf16);
  if (v4) {
    // Decode keeps each sequence's window as a ring of W rows; prefill reads the whole sequence.
    b.tensor("window_kv", {B * (decode ? W : L), m.d_qk}, DType::Bf16);
    b.tensor("window_idx", {Tq, m.window}, DType::Int32);
    b.tensor("sinks", {H}, DType::Fp32);
  }
  b.tensor("out", {Tq, H * m.d_v}, DType::Bf16);
  b.tensor("lse", {Tq, H}, DType::Fp32);
  std::map<std::string, std::string> attn_in{{"q", "q"}};
  if (v4) attn_in.insert({{"kv", "window_kv"}, {"idx", "window_idx"}, {"sinks", "sinks"}});

  // Compressed sources (V4): entries of m tokens each; the compressor turns the new tokens' hidden
  // states into the entries this step completes and carries the partial block in its state.
  auto compressed = [&](const std::string& prefix, int64_t ratio, int64_t d) {
    const int64_t c = ratio == 4 ? 2 : 1, entries = L / ratio;
    const int64_t emitted = B * (L / ratio - (L - new_per_seq) / ratio);
    if (!g.has_tensor("x")) b.tensor("x", {Tq, m.hidden}, DType::Bf16);
    b.tensor(prefix + "_w_kv", {m.hidden, c * d}, DType::Bf16);
    b.tensor(prefix + "_w_gate", {m.hidden, c * d}, DType::Bf16);
    b.tensor(prefix + "_ape", {ratio, c * d}, DType::Fp32);
    b.tensor(prefix + "_norm", {d}, DType::Fp32);
    std::map<std::string, std::string> in{{"x", "x"}, {"w_kv", prefix + "_w_kv"}, {"w_gate", prefix + "_w_gate"},
                                          {"ape", prefix + "_ape"}, {"norm", prefix + "_norm"}};
    std::map<std::string, std::string> out;
    for (const char* st : {"kv_state", "score_state"}) {  // fp32, updated in place on the device
      b.tensor(prefix + "_" + st, {B * c * ratio, c * d}, DType::Fp32);
      b.tensor(prefix + "_" + st + "_out", {B * c * ratio, c * d}, DType::Fp32);
      in[st] = prefix + "_" + st;
      out[st] = prefix + "_" + st + "_out";
    }
    b.tensor(prefix + "_cache", {B * std::max<int64_t>(entries, 1), d}, DType::Bf16);
    if (emitted > 0) {
      b.tensor(prefix + "_new", {emitted, d}, DType::Bf16);
      b.tensor(prefix + "_rope_cos", {emitted, m.rope_dims}, DType::Fp32);
      b.tensor(prefix + "_rope_sin", {emitted, m.rope_dims}, DType::Fp32);
      out["entries"] = prefix + "_new";
      in["rope_cos"] = prefix + "_rope_cos", in["rope_sin"] = prefix + "_rope_sin";
    }
    nlohmann::json a = attrs_common();
    a["ratio"] = ratio;
    a["rope_dims"] = m.rope_dims;
    a["quant"] = d == m.d_qk ? "fp8" : "none";  // the main KV cache stores fp8 (2.6); indexer keys' FP4 is not modelled
    b.op(prefix + "_compress", "compressor", in, out, a);
    return entries;
  };

  // The indexer and its top-k: over the indexer-key cache (DSA) or the compressed indexer keys (CSA).
  auto indexer = [&](int64_t keys_per_seq, int64_t ratio, const std::string& key_cache) {
    // Early prefill queries see fewer keys than the top-k: their lists end in -1.
    const int64_t HI = m.index_heads, DI = m.index_dim, K = m.index_topk;
    b.tensor("index_q", {Tq, HI * DI}, DType::Bf16);
    b.tensor("index_q_scale", {Tq, HI}, DType::Fp32);
    b.tensor("index_k_scale", {B * keys_per_seq}, DType::Fp32);
    b.tensor("index_w", {Tq, HI}, DType::Fp32);
    b.tensor("index_scores", {Tq, keys_per_seq}, DType::Fp32);
    b.tensor("topk_idx", {Tq, K}, DType::Int32);
    nlohmann::json a = attrs_common();
    a["ratio"] = ratio;
    std::map<std::string, std::string> in{{"q", "index_q"}, {"k", key_cache}, {"q_scale", "index_q_scale"},
                                          {"k_scale", "index_k_scale"}, {"w", "index_w"}};
    if (g.has_tensor("cidx_new")) in["after"] = "cidx_new";  // this step's compressed keys are in the cache
    b.op("indexer", "lightning_indexer", in, {{"scores", "index_scores"}}, a);
    b.op("topk", "index_topk", {{"scores", "index_scores"}}, {{"indices", "topk_idx"}});
  };

  if (opt.layer == "dsa") {
    if (m.index_topk > L && decode)
      throw ConfigError(where, fmt::format("index top-k {} is larger than the cache of {} tokens", m.index_topk, L));
    b.tensor("index_k_cache", {B * L, m.index_dim}, DType::Bf16);
    indexer(L, 1, "index_k_cache");
    b.tensor("kv_cache", {B * L, m.d_qk}, DType::Bf16);
    attn_in.insert({{"kv", "kv_cache"}, {"idx", "topk_idx"}});
  } else if (opt.layer == "csa") {
    const int64_t entries = compressed("ckv", m.csa_ratio, m.d_qk);
    compressed("cidx", m.csa_ratio, m.index_dim);  // the indexer keys have their own compressor (d = index_dim)
    if (m.index_topk > entries && decode)
      throw ConfigError(where, fmt::format("index top-k {} is larger than the {} compressed entries of a {}-token context",
                                           m.index_topk, entries, L));
    indexer(entries, m.csa_ratio, "cidx_cache");
    attn_in.insert({{"kv1", "ckv_cache"}, {"idx1", "topk_idx"}});
    if (g.has_tensor("ckv_new")) attn_in["after"] = "ckv_new";
  } else if (opt.layer == "hca") {
    const int64_t entries = compressed("hkv", m.hca_ratio, m.d_qk);
    b.tensor("hca_idx", {Tq, std::max<int64_t>(entries, 1)}, DType::Int32);
    attn_in.insert({{"kv1", "hkv_cache"}, {"idx1", "hca_idx"}});
    if (g.has_tensor("hkv_new")) attn_in["after"] = "hkv_new";
  }
  nlohmann::json attn = attrs_common();
  attn["heads"] = H;
  if (v4) attn["window"] = m.window;
  if (opt.layer == "csa") attn["ratio"] = m.csa_ratio;
  if (opt.layer == "hca") attn["ratio"] = m.hca_ratio, attn["all_visible"] = true;
  b.op("attention", "sparse_attention", attn_in, {{"out", "out"}, {"lse", "lse"}}, attn);
  return g;
}

}  // namespace npusim::graphs
