// Model presets (KERNELS.md 1.1, 2.2, 6.1) and the MoE block graph built from them.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "graphs/graph.hpp"

namespace npusim::graphs {

struct MoeModel {
  std::string name;
  int64_t hidden = 0, experts = 0, shared_experts = 0, topk = 0, inter = 0;
  int64_t groups = 1, topk_groups = 1;
  std::string score = "sigmoid";         // sigmoid | softmax | sqrtsoftplus
  std::string group_select = "top2sum";  // with the correction bias; `max` without
  bool bias = true;                      // e_score_correction_bias (used only to choose)
  double route_scale = 1.0;
  std::optional<double> swiglu_limit;    // V4's clamp on gate and up
  bool weight_before_w2 = false;         // V4 scales the SwiGLU output; V3 weights the combine
  int dense_layers = 0, hash_layers = 0, layers = 0;
  int64_t vocab = 0;                     // for hash routing's token-id table
  int64_t prefill_tokens = 0, decode_tokens = 0;  // per device, KERNELS.md 6.1
  std::vector<std::string> notes;        // confidence of the shapes
};

const std::vector<MoeModel>& moe_models();
// The preset called `name`; a ConfigError at `where` naming the presets when there is none.
const MoeModel& moe_model(const std::string& name, const SourceLoc& where);

struct MoeBlockOptions {
  int64_t tokens = 0;
  int layer = -1;         // -1: the first layer routed by top-k
  bool shared = true;     // the shared experts' MLP
  bool residual = true;   // the block's residual add in the combine
};

// The MoE block as ops: router GEMM, gating (score, top-k or hash, normalize), routing sort,
// permute, GMM1, SwiGLU, GMM2, combine, and the shared expert's GEMM / SwiGLU / GEMM.
// Activations and weights are bf16 (the FP8/FP4 expert weights of the real checkpoints are
// not modelled: a note on the graph says so).
Graph build_moe_graph(const MoeModel& m, const MoeBlockOptions& opt);

}  // namespace npusim::graphs
