// Attention presets (KERNELS.md 2.5, 3.1, 6.1, 6.3) and the attention block graph built from them.
//
// A layer kind is what the model has:
//   dense  flash attention over the whole cache (V3 MLA: MQA form with the 576/512 latent in
//          decode, MHA with 192/128 heads in prefill);
//   dsa    V3.2: lightning indexer over the indexer-key cache, top-k, sparse MLA over the latent;
//   csa    V4: compressors (main KV and indexer keys, m = 4), indexer over the compressed keys,
//          top-k, then one softmax over the 128-token window and the selected compressed entries
//          with the attention sink;
//   hca    V4: compressor (m = 128), one softmax over the window and every visible compressed
//          entry, with the sink;
//   swa    V4: the window alone, with the sink.
// Decode: `batch` sequences, one new query token each, `context` tokens in each sequence's cache
// (the new token included). Prefill: one sequence of `tokens` new tokens after `context` cached
// ones. Queries and caches come in projected (the q / kv projections, the o projection and the
// norms are GEMMs and elementwise ops outside the block, not in this graph).
#pragma once

#include <string>
#include <vector>

#include "graphs/graph.hpp"

namespace npusim::graphs {

struct AttentionModel {
  std::string name;
  int64_t hidden = 0;
  int64_t heads = 0;                  // query heads
  int64_t d_qk = 0, d_v = 0;          // MQA form: one latent KV head, K = V (d_v its first columns)
  int64_t mha_d_qk = 0, mha_d_v = 0;  // dense prefill in MHA form (V3 MLA); 0: the MQA form
  int64_t index_heads = 0, index_dim = 0, index_topk = 0;
  int64_t window = 0;                 // V4 sliding window
  int64_t csa_ratio = 0, hca_ratio = 0;
  bool sink = false;                  // V4's per-head attention sink
  std::vector<std::string> layers;    // the kinds this model has
  int64_t prefill_tokens = 0, decode_batch = 0, default_context = 0;
  std::vector<std::string> notes;
  int64_t rope_dims = 64;             // rotated dims of the compressed entries (V4: the last 64)
};

const std::vector<AttentionModel>& attention_models();
const AttentionModel& attention_model(const std::string& name, const SourceLoc& where);

struct AttentionBlockOptions {
  std::string layer;         // dense | dsa | csa | hca | swa
  std::string phase = "decode";
  int64_t batch = 0;         // decode: sequences
  int64_t tokens = 0;        // prefill: new tokens
  int64_t context = 0;       // tokens in each sequence's cache, the new ones included
};

// The block's ops for one layer kind; a ConfigError at `where` when the model lacks the kind or the
// shapes cannot hold (top-k larger than the cache, a context shorter than the new tokens).
Graph build_attention_graph(const AttentionModel& m, const AttentionBlockOptions& opt, const SourceLoc& where);

}  // namespace npusim::graphs
