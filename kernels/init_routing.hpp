// MoE init-routing (dispatch; CANN MoeInitRoutingV2, KERNELS.md 1.4 steps 1-5, 1.5 and 4.1):
// from expert ids [T, K] (and, to drop by probability, the routing weights [T, K] fp32), with the
// token-major flat index f = t K + j,
//   expanded_x              the token rows sorted by expert, x[f / K] at row expanded_row_idx[f];
//                           zero rows where an expert is padded
//   expanded_row_idx [T K]  where flat entry f landed, -1 when its expert dropped it
//   expert_tokens [E]       entries each expert kept, or their inclusive cumsum
//   tokens_before_capacity  (drop modes) entries routed to each expert before dropping
// Capacity modes (KERNELS.md 1.5): dropless; position (an expert keeps its first C entries in flat
// order); probability (its C heaviest, ties to the lower flat index, laid out heaviest first).
// Padding: none, to a multiple p of rows per expert (MegaBlocks), or to exactly C (the [E, C, H]
// layout of Ascend's drop/pad mode).
//
// Config: `workload: {op: init_routing, hidden, dtype: fp16 | bf16 | fp32, routing: {experts,
// tokens, topk, distribution, s, hot_fraction, seed, weights: uniform | ties}, capacity: {mode:
// dropless | position | probability, factor: CF (C = ceil(CF T K / E)) | rows: C}, pad: none |
// capacity | {multiple: p}, expert_tokens: count | cumsum}`, `tiling: {chunk, rows_per_tile,
// cols_per_tile, buffers, cores}`. The routing block is the combine's and the grouped GEMM's; its
// `weights` (probability mode only) draws the routing weights, uniform in (0, 1] or four levels.
//
// Lowering, on the AIVs. The flat entries are cut into chunks of `chunk` (a UB-sized sort),
// dealt contiguously to the cores. The scalar unit's knowledge of the routing (the per-chunk
// counts it reads back after the barrier, the row each gathered entry comes from) is taken from
// the routing the kernel is lowered for and charged with scalar instructions; in probability mode
// the gathered rows follow the weight ranks, so the weights are drawn with the routing and are
// what make_input supplies. Every value the outputs hold is computed by vector instructions and
// moved by copies.
//  1. Per chunk: load the ids, histogram them, store the counts to a GM table [chunks, E].
//     All-core barrier (cross-core flag, mode 0).
//  2. Core 0 sums the table (int32 adds): tokens before capacity; min with C (drop modes) and an
//     optional cumsum give expert_tokens.
//  3. Per chunk: keys = -expert (fp32), indices = f (arange); sort32 and merge rounds of four
//     runs (mrgsort) sort them descending, so experts ascend and equal experts keep flat order;
//     extract the flat indices. Each (chunk, expert) segment of the sorted run gets its
//     destination rows with one arange (start = the expert's row offset + the entries of earlier
//     chunks: the scalar unit's sum over the table), -1 past the capacity by a dup; a scatter by
//     f puts them back in flat order and one copy stores the chunk's expanded_row_idx. The
//     segment's kept rows are gathered x row -> UB -> expanded_x, one GM read per row and one
//     write per tile of consecutive destination rows.
// Probability mode needs each expert's entries ordered by weight across all chunks, which no
// chunk sees alone, so step 3 instead gathers the chunk's weights into expert order and stores
// them, per segment, into a GM workspace laid out by expert (and the chunk's sort positions to a
// second one); after a barrier each core sorts the weights of whole experts (one UB sort each,
// so an expert may hold at most `chunk` entries), derives each entry's destination by rank,
// stores them by expert and gathers the kept rows in rank order; after a last barrier each chunk
// reads its segments' destinations back and scatters them into flat order as in step 3. One
// global sort by expert, then one sort per expert by weight, is what the layout asks for: a
// composite (expert, weight) key does not fit one fp32 key, and two stable passes per chunk
// would still leave the chunks' runs unmerged.
//  4. Padding rows: a zero tile in UB (dup) copied over each padded expert's tail, expert e by
//     core e mod cores.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "kernels/kernel.hpp"
#include "kernels/reference/moe.hpp"

namespace npusim::kernels {

// The layout init-routing produces, from the routing alone (expert ids, and the weights in
// probability mode). Grouped GEMMs take their rows per expert from it and combines their gathers,
// so every MoE kernel agrees on where each entry sits.
struct RoutingLayout {
  std::vector<int32_t> order;    // flat entries in sort order (ref::Routing::perm)
  std::vector<int32_t> dest;     // per flat entry: its expanded_x row, -1 when dropped
  std::vector<int64_t> routed;   // per expert: entries routed to it (before capacity)
  std::vector<int64_t> kept;     // per expert: entries kept
  std::vector<int64_t> start;    // per expert: its first position in `order`
  std::vector<int64_t> offset;   // per expert: its first row in expanded_x
  std::vector<int64_t> rows_of;  // per expert: rows it occupies in expanded_x, padding included
  int64_t rows = 0;              // rows of expanded_x
};

// expert_of: the flat entries' expert ids in [0, experts); weights: one per entry (probability
// mode only, else empty).
RoutingLayout routing_layout(const std::vector<int32_t>& expert_of,
                             const std::vector<double>& weights, const ref::RoutingConfig& config);

struct InitRoutingShape {
  int64_t tokens = 0, hidden = 0, topk = 0;
  sim::DType dtype = sim::DType::Bf16;
  ref::RoutingConfig routing;      // experts, capacity mode, C, padding
  bool cumsum = false;             // expert_tokens as the inclusive cumsum of the counts
  std::vector<int32_t> expert_of;  // tokens x topk expert ids (the routing)
  std::vector<double> weights;     // tokens x topk fp32 values, probability mode only
};

struct InitRoutingTiling {
  int64_t chunk = 0;          // flat entries per UB sort (a multiple of 32)
  int64_t rows_per_tile = 4;  // gathered rows per UB -> GM copy
  int64_t cols_per_tile = 0;  // columns per row copy
  int buffers = 2;            // row-gather UB slots
  int cores = 0;
};

class InitRoutingKernel : public Kernel {
 public:
  InitRoutingKernel(InitRoutingShape s, InitRoutingTiling t, bool is_default);
  std::string op() const override { return "init_routing"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                 const std::vector<std::vector<double>>& device) const override;
  double flops() const override { return 0; }
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override { return hw.num_aiv; }
  double estimated_instructions() const override;
  std::vector<double> make_input(size_t index, const InputSpec& spec) const override;
  nlohmann::json details() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

  const RoutingLayout& layout() const { return layout_; }
  // UB bytes the lowering uses for shape `s` under tiling `t`.
  static int64_t ub_bytes(const InitRoutingShape& s, const InitRoutingTiling& t);

 private:
  InitRoutingShape s_;
  InitRoutingTiling t_;
  bool default_;
  RoutingLayout layout_;
};

// Chunks that split the entries over every AIV (at most what UB sorts), whole rows per copy when
// they fit, every AIV that gets a chunk.
InitRoutingTiling default_init_routing_tiling(const InitRoutingShape& s,
                                              const sim::HardwareSpec& hw);

// A `tiling:` section (chunk, rows_per_tile, cols_per_tile, buffers, cores) over `base`.
InitRoutingTiling parse_init_routing_tiling(const YamlNode& tiling, InitRoutingTiling base);

std::unique_ptr<Kernel> make_init_routing(const YamlNode& workload,
                                          const std::optional<YamlNode>& tiling,
                                          const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
