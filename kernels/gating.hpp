// MoE gate on the AIVs (KERNELS.md 1.2, 2.3, 4.1; CANN MoeGatingTopK and vllm-ascend
// MoeGatingTopKHash). From router logits x [T, E] (fp32), per token:
//   s   = score(x)      sigmoid | softmax | sqrtsoftplus = sqrt(softplus) (V4), softplus(z) = z for
//                       z > 20, else log1p(exp(z))
//   c   = s + bias      (optional fp32 [E], used ONLY for choosing)
//   groups G > 1: group score = sum of the 2 largest c of the group (top2sum) or its max; the
//       topk_groups best groups stay (ties: lower group), the others' c become -inf
//   ids = stable top-k of c (ties: lower expert)  -- hash routing: ids = tid2eid[input_ids[t], :]
//   w   = s[ids] (UNBIASED); renormalize (default for sigmoid / sqrtsoftplus): w /= sum w + eps;
//         w *= route_scale
// Outputs: weights [T, K] fp32 and ids [T, K] int32. `stage` lets the graph layer run the chain
// fused or as three kernels with GM between them: score (logits -> scores [T, E]), select (scores
// [+ bias] -> raw weights s[ids] and ids; hash: input_ids + tid2eid -> ids), normalize (raw
// weights -> weights). Each stage runs exactly the instructions of its part of the fused kernel,
// so the chain gives the fused kernel's bits.
//
// Lowering. Tokens are split evenly over the AIVs in tiles of `rows_per_tile` rows, `buffers` UB
// sets overlapping MTE2 in, vector work and MTE3 out. The work is data-independent: the vector unit
// computes everything from UB data and the scalar unit only loops (hash routing excepted: the
// scalar unit reads each token id from GM to address its tid2eid row, as the Ascend op does; the
// lowering therefore holds the kernel's own input_ids, drawn from `hash.seed`, which make_input
// returns).
//  * Row layout: each row is G segments (1 without groups) of E/G experts, each segment padded to
//    a multiple of 32 (one Sort32 block). MTE2 places the logits there; the pads of the logits
//    tile are -inf (set once per core), which every score function maps to 0 (softmax: the pads
//    drop out of the max and the sum), so no copy ever pads a row.
//  * Keys c = s + B with one add, where B (built once per core) holds the bias (or 0) in the
//    expert columns and -inf in the pads: the pads sort last and are never picked.
//  * Scores: muls / exp / adds / div with a ones tile (sigmoid); mins, exp, adds, ln and
//    adds, maxs, add, sqrt (sqrtsoftplus: ln(1 + exp(min(z, 20))) + max(z - 20, 0)); reduce_max,
//    per-row adds, exp, reduce_sum, div, per-row muls (softmax). The per-row scalars stand for
//    Ascend's Brcb broadcast of row statistics.
//  * Selection: sort32 over (key, column) pairs, then mrgsort levels of chunk 128, 512, ...
//    capped at the padded row; a strided UB->UB copy keeps each row's first K pairs; extract gives
//    the columns (mapped to expert ids by a gather from a column->expert table when groups are
//    padded); gather reads s at column + r * row.
//  * Groups: top2sum sorts each segment the same way and sums the keys of its first two pairs
//    (strided copy, extract, reduce_sum); `max` is one reduce_max per segment. The G group scores
//    (padded to 32 with -inf) are sorted, the first topk_groups give a penalty row (dup -inf,
//    scatter 0 at the chosen groups), and one adds per (row, group) adds it to that group's keys
//    before the full-row sort.
//  * Normalize: reduce_sum over K, adds eps, a ones tile divided by it, muls route_scale, per-row
//    muls.
//
// YAML: workload {op: gating, tokens, experts, topk, score (sigmoid), bias (false), groups (1),
// topk_groups (groups), group_select (top2sum with bias, else max), route_scale (1), eps (1e-20),
// renormalize (not for softmax), stage (fused), hash: {vocab, seed (1)}}; tiling {rows_per_tile,
// buffers (2), cores}. Default tiling: the rows each AIV would get, at most 64, fewer while two
// buffer sets do not fit UB; as many AIVs as there are tiles.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernel.hpp"

namespace npusim::kernels {

enum class GateScore { Sigmoid, Softmax, SqrtSoftplus };
enum class GateStage { Fused, Score, Select, Normalize };
enum class GroupSelect { Top2Sum, Max };

struct GatingShape {
  int64_t tokens = 0, experts = 0, topk = 0;
  GateScore score = GateScore::Sigmoid;
  bool bias = false;
  int64_t groups = 1, topk_groups = 1;
  GroupSelect group_select = GroupSelect::Max;
  double route_scale = 1.0, eps = 1e-20;
  bool renormalize = true;
  GateStage stage = GateStage::Fused;
  int64_t hash_vocab = 0;  // > 0: hash routing (ids from tid2eid[input_ids])
  uint64_t hash_seed = 1;  // seeds the kernel's input_ids
  std::vector<int32_t> input_ids;  // hash routing: the token ids, when given (a graph's input)
  bool grouped() const { return groups > 1 && hash_vocab == 0; }
};

struct GatingTiling {
  int64_t rows_per_tile = 1;
  int buffers = 2;
  int cores = 0;
};

class GatingKernel : public Kernel {
 public:
  GatingKernel(GatingShape s, GatingTiling t, bool is_default);
  std::string op() const override { return "gating"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  // Expert ids are judged tie-aware (KERNELS.md 5.4, also at the group level); weights against
  // the scores gathered at the device's ids, so an accepted tie swap does not fail them.
  std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                 const std::vector<std::vector<double>>& device) const override;
  double flops() const override;
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override;
  double estimated_instructions() const override;
  std::vector<double> make_input(size_t index, const InputSpec& spec) const override;
  nlohmann::json details() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

  // The stable reference picks (T x K, fp64 scores; hash: the table rows) of a select or fused
  // kernel, from its inputs in tensors() order.
  std::vector<int32_t> reference_ids(const std::vector<std::vector<double>>& inputs) const;
  // UB bytes `rows` rows per tile need with `buffers` buffer sets (per-core constants included).
  static int64_t ub_bytes(const GatingShape& s, int64_t rows, int buffers);

 private:
  GatingShape s_;
  GatingTiling t_;
  bool default_;
  std::vector<int32_t> hash_ids_;  // input_ids of hash routing (the lowering addresses tid2eid with them)
};

// Default: the rows each AIV would get (at most 64) while two buffer sets fit UB.
GatingTiling default_gating_tiling(const GatingShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section (rows_per_tile, buffers, cores) over `base`.
GatingTiling parse_gating_tiling(const YamlNode& tiling, GatingTiling base);

std::unique_ptr<Kernel> make_gating(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                    const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
