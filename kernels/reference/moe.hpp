// CPU references for MoE routing: the gate (scores, bias for choosing, group-limited stable top-k,
// normalisation, route scale), the V4 hash gate, init-routing (sort by expert, capacity modes,
// padding, row gather) and finalize (the weighted combine). Definitions follow
// /work/shared/design/KERNELS.md sections 1.2, 1.4, 1.5, 2.3 and 4.1.
//
// Contract: as reference.hpp (fp64 throughout, deterministic for every thread count with rows
// computed on one thread each, std::invalid_argument on bad arguments before anything is written,
// dense row-major arrays, pointers valid for the sizes given). Expert ids and row indices are
// int32, as on the device; flat entries are token-major, f = t * K + j (KERNELS.md 1.4).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace npusim::ref {

// ---- Gate (KERNELS.md 1.2, 2.3) ----

// Score functions: sigmoid(z); softmax over the row of E logits; sqrt(softplus(z)) with
// softplus(z) = z if z > 20 else log1p(exp(z)) (TileKernels' threshold, so z = 20 takes the log1p
// branch).
enum class ScoreFunc { Sigmoid, Softmax, SqrtSoftplus };
// Group score of group-limited routing: the sum of the two largest selection scores of the group
// (DeepSeek-V3 with bias; a group of one expert scores that expert) or their maximum (no bias).
enum class GroupScore { Top2Sum, Max };

struct GateConfig {
  ScoreFunc score = ScoreFunc::Sigmoid;
  int64_t topk = 1;         // K
  int64_t groups = 1;       // G; experts must divide into G equal groups
  int64_t topk_groups = 1;  // groups a token may use (G_k); ignored when groups == 1
  GroupScore group_score = GroupScore::Top2Sum;
  // Divide the K weights by their sum + eps. Unset: on for sigmoid and sqrtsoftplus, off for
  // softmax.
  std::optional<bool> renormalize;
  double eps = 1e-20;
  double route_scale = 1.0;

  bool renormalizes() const { return renormalize.value_or(score != ScoreFunc::Softmax); }
};

// scores (tokens x experts) = the unbiased scores of `logits` under `f`. NaN propagates.
void gate_scores(int64_t tokens, int64_t experts, const double* logits, ScoreFunc f,
                 double* scores);

// The gate, per token t:
//   s = score(logits[t]);  c = s + bias (bias: `experts` values or null, used only for choosing)
//   groups > 1: group score per group from c; the topk_groups best groups are kept (stable: the
//               lower group wins ties) and every expert of the other groups gets c = -inf (the
//               official code's mask; a 0 mask differs once biased scores go negative)
//   picks[t] = the K largest c, descending, the lower expert index winning ties (stable top-k;
//              NaN ranks as -inf, as ref::topk)
//   weights[t] = gate_weights_for(s, picks[t])   (from the UNBIASED scores)
// picks and weights are tokens x K; scores (tokens x experts, may be null) receives s. Requires
// 1 <= K <= topk_groups * experts / groups, experts <= INT32_MAX, eps >= 0.
void gate(int64_t tokens, int64_t experts, const double* logits, const double* bias,
          const GateConfig& config, int32_t* picks, double* weights, double* scores = nullptr);

// The weights of given picks (tokens x K) from unbiased scores (tokens x experts):
// w_j = s[pick_j]; when config.renormalizes(), w_j /= (sum_j w_j + eps) (sum left to right); then
// w_j *= route_scale. Validation uses it to judge the weights that go with a device's
// tie-equivalent picks. Picks must lie in [0, experts).
void gate_weights_for(int64_t tokens, int64_t experts, const double* scores, const int32_t* picks,
                      const GateConfig& config, double* weights);

// DeepSeek-V4 hash routing (KERNELS.md 2.3): picks[t] = tid2eid[input_ids[t]] (tid2eid is
// vocab x K expert ids), weights from score(logits[t]) as gate_weights_for. Only the score,
// topk (K), renormalize, eps and route_scale of `config` apply; groups must be 1. Ids outside
// [0, vocab) and table entries outside [0, experts) throw.
void hash_gate(int64_t tokens, int64_t experts, const double* logits, const int64_t* input_ids,
               int64_t vocab, const int32_t* tid2eid, const GateConfig& config, int32_t* picks,
               double* weights, double* scores = nullptr);

// ---- Init routing (KERNELS.md 1.4 steps 1-5, 1.5, 4.1 MoeInitRoutingV2) ----

// Which entries an expert keeps: all (dropless), its first C in flat order (position: Switch /
// Ascend drop-pad), or its C with the largest weights (probability: Megatron "probs"; ties go to
// the lower flat index, NaN ranks as -inf).
enum class CapacityMode { Dropless, Position, Probability };
// Rows each expert occupies in expanded_x: its kept entries (None), those rounded up to a
// multiple p (MegaBlocks), or exactly C (drop modes only: the [E, C, H] layout).
enum class PadMode { None, Multiple, Capacity };

struct RoutingConfig {
  int64_t experts = 0;  // E >= 1
  CapacityMode mode = CapacityMode::Dropless;
  int64_t capacity = 0;  // C >= 0, drop modes
  PadMode pad = PadMode::None;
  int64_t pad_multiple = 0;  // p >= 1, PadMode::Multiple
};

struct Routing {
  // All T K flat entries in sort order: by expert ascending; within an expert by flat index
  // (dropless, position: KERNELS.md 1.4's stable sort) or by weight descending then flat index
  // (probability, so that an expert's kept entries are the first C of its run). sorted_row_idx.
  std::vector<int32_t> perm;
  // Per flat entry f: the expanded_x row it lands in, -1 when dropped. expanded_row_idx.
  std::vector<int32_t> expanded_row_idx;
  std::vector<int64_t> counts;           // per expert: entries kept (after capacity)
  std::vector<int64_t> cumsum;           // inclusive cumsum of counts (group_list cumsum form)
  std::vector<int64_t> before_capacity;  // per expert: entries routed to it (pre-drop histogram)
  std::vector<int64_t> offsets;          // per expert: its first row in expanded_x
  int64_t rows = 0;                      // rows of expanded_x, padding included
  // rows x hidden: expert e's kept entries at rows offsets[e] .. offsets[e] + counts[e] - 1 in
  // perm order, each the token row x[f / K]; padding rows are zero.
  std::vector<double> expanded_x;
};

// picks: tokens x topk expert ids in [0, E); weights (tokens x topk) is required in probability
// mode and ignored otherwise; x: tokens x hidden (hidden may be 0 for the layout alone). Requires
// tokens * topk <= INT32_MAX and rows <= INT32_MAX.
Routing init_routing(int64_t tokens, int64_t topk, const int32_t* picks, const double* weights,
                     const double* x, int64_t hidden, const RoutingConfig& config);

// ---- Finalize (KERNELS.md 1.4 step 9, CANN MoeFinalizeRouting) ----

// out[t] = residual[t] + shared[t] + sum_j w[t, j] * y[inv[t K + j]], summed left to right in
// that order, skipping entries with inv = -1 (dropped). y is y_rows x hidden (expert outputs in
// expanded order); inv = expanded_row_idx (tokens x topk) in [-1, y_rows). weights (tokens x topk)
// may be null, meaning 1 (DeepSeek-V4 weights before W2, so its combine is a plain sum); residual
// and shared (tokens x hidden) may be null.
void finalize(int64_t tokens, int64_t topk, int64_t hidden, const double* y, int64_t y_rows,
              const int32_t* expanded_row_idx, const double* weights, const double* residual,
              const double* shared, double* out);

}  // namespace npusim::ref
