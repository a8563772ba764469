// Builders of the attention kernels of a graph: flash attention, the lightning indexer (alone or
// with its top-k fused), the standalone top-k, sparse attention, and the compressor.
//
// Index sets. Sparse attention is lowered for the rows it actually reads. Per source:
//   a window (op attr `window`): each query's last `window` positions, from the sequence's ring of
//   rows (decode) or the whole sequence (prefill); every visible compressed entry (`all_visible`);
//   or the list an indexer / top-k op produced: the device's picks in a functional run when
//   `indices: from_indexer`, else a seeded draw over the visible entries (kernels/indices.hpp).
// Lists hold per-sequence positions, as the indexer emits them; the kernel reads sequence b's
// cache rows from b x rows-per-sequence (the page table's job on the device), so the executor
// adds that base when it hands the lists over.
#include <fmt/format.h>

#include <algorithm>

#include "graphs/executor.hpp"
#include "kernels/compressor.hpp"
#include "kernels/flash_attention.hpp"
#include "kernels/indices.hpp"
#include "kernels/lightning_indexer.hpp"
#include "kernels/sparse_attention.hpp"
#include "kernels/topk.hpp"

namespace npusim::graphs::detail {

namespace {

// Query j of a sequence's q queries sits at position context - q + j.
int64_t position(int64_t context, int64_t queries, int64_t j) { return context - queries + j; }

}  // namespace

Built Executor::build_flash(const OpNode& op) {
  using namespace kernels;
  const TensorDesc &q = port(op, "q"), &k = port(op, "k"), &o = port(op, "out", true);
  FlashAttentionShape s;
  s.batch = op.attrs["batch"];
  s.heads_kv = op.attrs["heads_kv"];
  s.d_qk = k.shape[1] / s.heads_kv;
  s.heads_q = q.shape[1] / s.d_qk;
  s.d_v = o.shape[1] / s.heads_q;
  s.q_len = q.shape[0] / s.batch;
  s.kv_len = k.shape[0] / s.batch;
  s.dtype = q.dtype;
  s.causal = op.attrs["causal"];
  s.scale = op.attrs["scale"];
  s.sink = has(op, "sinks");
  s.kv_shared = !has(op, "v");
  s.lse_base2 = op.attrs["lse_base"] == "2";
  Built b;
  b.kernel = std::make_unique<FlashAttentionKernel>(s, default_flash_attention_tiling(s, hw_), true);
  std::map<std::string, std::string> names{{"q", q.name}, {"k", k.name}, {"out", o.name}};
  if (!s.kv_shared) names["v"] = op.inputs.at("v");
  if (s.sink) names["sinks"] = op.inputs.at("sinks");
  names["lse"] = op.outputs.count("lse") ? op.outputs.at("lse") : "";
  bind_by_name(b, names);
  return b;
}

// The indexer alone (scores) or with the top-k that follows it fused (indices, values).
Built Executor::build_indexer(const OpNode& op, const OpNode* topk) {
  using namespace kernels;
  const TensorDesc &q = port(op, "q"), &k = port(op, "k"), &w = port(op, "w");
  const int64_t B = op.attrs["batch"], context = op.attrs["context"];
  IndexerShape s;
  s.heads = w.shape[1];
  s.head_dim = k.shape[1];
  s.ratio = op.attrs["ratio"];
  s.keys.assign(static_cast<size_t>(B), k.shape[0] / B);
  s.context.assign(static_cast<size_t>(B), context);
  s.queries.assign(static_cast<size_t>(B), q.shape[0] / B);
  s.fused_topk = topk != nullptr;
  s.topk = topk ? port(*topk, "indices", true).shape[1] : 1;
  s.dtype = indexer_dtype_for(hw_);
  Built b;
  b.kernel = std::make_unique<LightningIndexerKernel>(s, default_indexer_tiling(s, hw_), true);
  std::map<std::string, std::string> names{{"q", q.name}, {"k", k.name}, {"q_scale", op.inputs.at("q_scale")},
                                           {"k_scale", op.inputs.at("k_scale")}, {"w", w.name}};
  if (topk) {
    names["indices"] = topk->outputs.at("indices");
    names["values"] = topk->outputs.count("values") ? topk->outputs.at("values") : "";
  } else {
    names["scores"] = op.outputs.at("scores");
  }
  bind_by_name(b, names);
  // The quantized q / k and their scales must agree: the kernel draws them (functional runs).
  b.own_inputs = {"q", "k", "q_scale", "k_scale", "w"};
  return b;
}

Built Executor::build_topk(const OpNode& op) {
  using namespace kernels;
  const TensorDesc &sc = port(op, "scores"), &idx = port(op, "indices", true);
  TopkShape s;
  s.rows = sc.shape[0], s.cols = sc.shape[1], s.k = idx.shape[1];
  Built b;
  b.kernel = std::make_unique<TopkKernel>(s, default_topk_tiling(s, hw_), true);
  bind_by_name(b, {{"scores", sc.name}, {"indices", idx.name},
                   {"values", op.outputs.count("values") ? op.outputs.at("values") : ""}});
  return b;
}

// Per query: how many entries of a source holding `ratio`-token entries it sees (3.3 item 6).
std::vector<int64_t> Executor::visible_entries(const OpNode& op, int64_t rows_per_seq, int64_t ratio) const {
  const int64_t B = op.attrs["batch"], context = op.attrs["context"], T = port(op, "q").shape[0], per = T / B;
  std::vector<int64_t> v(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t)
    v[t] = std::min(rows_per_seq, (position(context, per, t % per) + 1) / ratio);
  return v;
}

// The index list of one source of a sparse attention op, as global cache rows.
kernels::SparseKvSource Executor::sparse_source(const OpNode& op, const std::string& kv_role, const std::string& idx_role) {
  const TensorDesc &kv = port(op, kv_role), &idx = port(op, idx_role);
  const int64_t B = op.attrs["batch"], context = op.attrs["context"], T = idx.shape[0], per = T / B, n = idx.shape[1];
  const int64_t rows_per_seq = kv.shape[0] / B;
  kernels::SparseKvSource src;
  src.rows = kv.shape[0], src.per_query = n;
  src.idx.assign(static_cast<size_t>(T * n), -1);
  const bool first = kv_role == "kv";
  const int64_t window = op.attrs["window"], ratio = first ? 1 : static_cast<int64_t>(op.attrs["ratio"]);
  std::vector<int32_t> local;  // per-sequence positions, query-major
  if (first && window > 0) {
    local.assign(src.idx.size(), -1);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t p = position(context, per, t % per), lo = std::max<int64_t>(0, p - window + 1);
      for (int64_t q = lo, j = 0; q <= p && j < n; ++q, ++j)
        local[t * n + j] = static_cast<int32_t>(rows_per_seq >= context ? q : q % rows_per_seq);  // ring in decode
    }
  } else if (!first && op.attrs["all_visible"].get<bool>()) {
    local.assign(src.idx.size(), -1);
    const auto vis = visible_entries(op, rows_per_seq, ratio);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < std::min(vis[t], n); ++j) local[t * n + j] = static_cast<int32_t>(j);
  } else if (g_.producer(idx.name) >= 0) {
    index_source_ = opt_.indices.distribution;
    auto it = values_.find(idx.name);
    if (opt_.indices.distribution == "from_indexer") {
      if (it == values_.end())
        throw ConfigError(opt_.indices.where, "indices: from_indexer times the attention on the indexer's own picks, which only a "
                                  "functional run (npusim validate / run --functional) has; for timing, draw them "
                                  "(distribution: uniform or recent_biased)");
      local.assign(it->second.begin(), it->second.end());
    } else {
      local = kernels::draw_indices(opt_.indices, visible_entries(op, rows_per_seq, ratio), n);
    }
  } else {
    throw ConfigError(op.loc, fmt::format("op {}: {} is a graph input with no rule to compute it (give the op a window, "
                                          "all_visible, or an indexer producing it)", op.name, idx.name));
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < n; ++j)
      if (const int32_t l = local[t * n + j]; l >= 0 && l < rows_per_seq)
        src.idx[t * n + j] = static_cast<int32_t>((t / per) * rows_per_seq + l);
  return src;
}

Built Executor::build_sparse(const OpNode& op) {
  using namespace kernels;
  const TensorDesc &q = port(op, "q"), &kv = port(op, "kv"), &o = port(op, "out", true);
  SparseAttentionShape s;
  s.tokens = q.shape[0];
  s.heads = op.attrs["heads"];
  s.d_qk = kv.shape[1];
  s.d_v = o.shape[1] / s.heads;
  s.dtype = q.dtype;
  s.scale = op.attrs["scale"];
  s.sink = has(op, "sinks");
  s.lse_base2 = op.attrs["lse_base"] == "2";
  s.sources.push_back(sparse_source(op, "kv", "idx"));
  if (has(op, "kv1")) s.sources.push_back(sparse_source(op, "kv1", "idx1"));
  Built b;
  const SparseAttentionTiling t = default_sparse_attention_tiling(s, hw_);
  b.kernel = std::make_unique<SparseAttentionKernel>(std::move(s), t, true);
  std::map<std::string, std::string> names{{"q", q.name}, {"kv0", kv.name}, {"idx0", op.inputs.at("idx")}, {"out", o.name}};
  if (has(op, "kv1")) names["kv1"] = op.inputs.at("kv1"), names["idx1"] = op.inputs.at("idx1");
  if (has(op, "sinks")) names["sinks"] = op.inputs.at("sinks");
  names["lse"] = op.outputs.count("lse") ? op.outputs.at("lse") : "";
  bind_by_name(b, names);
  // The index lists are the global rows computed above, not the per-sequence positions upstream.
  b.own_inputs = {"idx0", "idx1"};
  return b;
}

// The compressor of the new tokens: each sequence's new tokens start at context - new; the rope
// tables of the entries it completes are its inputs (the kernel draws them from the positions).
Built Executor::build_compressor(const OpNode& op) {
  using namespace kernels;
  const TensorDesc &x = port(op, "x"), &wkv = port(op, "w_kv"), &norm = port(op, "norm");
  const int64_t B = op.attrs["batch"], context = op.attrs["context"], per = x.shape[0] / B;
  CompressorShape s;
  auto& c = s.cfg;
  c.hidden = x.shape[1];
  c.head_dim = norm.shape[0];
  c.ratio = op.attrs["ratio"];
  c.overlap = wkv.shape[1] == 2 * c.head_dim;
  c.rope.dims = op.attrs["rope_dims"];
  c.fp8 = op.attrs["quant"] == "fp8";
  c.tokens = per;
  c.starts.assign(static_cast<size_t>(B), context - per);
  s.dtype = x.dtype;
  Built b;
  b.kernel = std::make_unique<CompressorKernel>(s, default_compressor_tiling(s, hw_), true);
  auto in = [&](const char* role) { return op.inputs.count(role) ? op.inputs.at(role) : std::string(); };
  auto out = [&](const char* role) { return op.outputs.count(role) ? op.outputs.at(role) : std::string(); };
  bind_by_name(b, {{"x", x.name}, {"w_kv", wkv.name}, {"w_gate", in("w_gate")}, {"ape", in("ape")},
                   {"norm_weight", norm.name}, {"rope_cos", in("rope_cos")}, {"rope_sin", in("rope_sin")},
                   {"kv_state", in("kv_state")}, {"score_state", in("score_state")}, {"c", out("entries")},
                   {"kv_state_out", out("kv_state")}, {"score_state_out", out("score_state")}});
  // The state rows a sequence has not reached hold no valid position and the rope tables follow
  // the positions: the kernel draws both consistently.
  b.own_inputs = {"kv_state", "score_state", "rope_cos", "rope_sin"};
  return b;
}

}  // namespace npusim::graphs::detail
