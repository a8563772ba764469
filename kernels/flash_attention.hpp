// Dense flash attention (KERNELS.md 2.5, 3.3, 4.2; the convention of kernels/reference/attention.hpp),
// built as Ascend's FusedInferAttentionScore and catlass FA build it: a C1 -> V1 -> C2 pipeline
// between each AIC and its AIVs, an online softmax in fp32, and a flash-decode split of the keys.
//
// Shape: batch B, q_len S1 (each sequence's last S1 tokens; query i sits at position S2 - S1 + i),
// kv_len S2, heads_q N1, heads_kv N2 (MHA, GQA, MQA), d_qk, d_v, fp16 or bf16, causal, scale
// (0: d_qk^-0.5), sink (one fp32 per query head, in the denominator only), kv_shared (K = V, MLA's
// latent: V is the first d_v columns of K).
// Tensors, in order: q [B S1, N1 d_qk], k [B S2, N2 d_qk], v [B S2, N2 d_v] (not with kv_shared),
// sinks [1, N1] fp32 (with sink); outputs out [B S1, N1 d_v] and lse [B S1, N1] fp32 (natural log,
// sink excluded; a row with no key would give 0 and +inf, which dense attention with S1 <= S2
// never has).
//
// Work. A query block is `q_block` rows of one KV head's query heads: the g = N1 / N2 heads that
// share a KV head are folded into the M dimension (whole queries' head groups when g < q_block,
// else one query and q_block of its heads), so decode with S1 = 1-2 and 64-128 heads still fills
// the cube. Rows run head-major or query-major, whichever moves a block in fewer copies. An item
// is one (batch, KV head, query block) and, with split_kv, one of its key ranges. Items are dealt
// one KV head after another, longest first within a head, each to the least-loaded AIC (the next
// free core takes the next item): the cores share a few heads' K and V in L2 and finish together.
// Causal items stop at their last visible block; fully masked blocks are never computed.
//
// Per item and key block of kv_block keys, one AIC and its two AIVs (each owning its share of the
// rows, rounded to 16-row fractals):
//   C1 (AIC)  S = Q K^T in L0C (Q stays in L1 for the item; K (and V) tiles in `stages` buffers).
//   V1 (AIV)  S *= scale; causal / tail columns set to -inf; row max m, alpha = exp(m_old - m),
//             P = exp(S - m), row sum l = l alpha + sum P, P cast to the input type.
//   C2 (AIC)  O_blk = P V, in chunks of W output columns.
//   V2 (AIV)  O = O alpha + O_blk in fp32 in UB; after the item's last block O / (l + exp(sink - m))
//             (or O / l and the partial lse for a split) and lse = m + ln l.
// C1 runs one block ahead of C2, so V1 of block j overlaps C2 of block j - 1 and C1 of block
// j + 1, and the K loads run stages - 2 blocks ahead of C1 (a stage is free once C2 of its last
// block has read V; one stage runs C1 -> V1 -> C2 -> V2 in turn). Hand-offs: on 2201 S, P and O
// chunks go through per-AIC GM workspaces (they stay in L2) with cross-core READY / FREE flags;
// on 3510 FIXPIPE writes S and O chunks straight into each AIV's UB (L0C->UB) and the AIVs write P
// into the AIC's L1 (UB->L1). An AIV's FREE and READY go to the AIC on its own flag id: with one
// shared id, an AIV with no rows in a block (blocks of 16 rows or fewer) would answer ahead and
// stand in for its sibling. On the AIVs S, P and O are kept NZ (16-column strips), as the cube
// produces and consumes them: the row max and sum are a tree of strip-wise max / add followed by
// one 16-wide reduction, which stands for the strided vector ops of the Ascend kernels, and a
// per-row broadcast (m, alpha, 1 / l) is a UB->UB copy of a row vector into a 64-column tile,
// which stands for Brcb (it moves that tile's bytes, a little more than Brcb). With kv_shared K
// is loaded once: C2 reads V as a sub-tile of K, and C1 moves K^T into L0B one 16-dimension strip
// per copy (the transposing LoadData of the hardware, one instruction there).
// Split-KV (flash decode): each split item writes O / l and its lse (fp32) to a GM workspace; after
// an all-AIV barrier the AIVs merge each group's splits by lse (sink in the denominator), the
// parts streamed through UB one split at a time, so the UB need does not grow with split_kv.
//
// YAML: workload {op: flash_attention, batch, q_len, kv_len, heads_q, heads_kv (heads_q), d_qk,
// d_v (d_qk), dtype (fp16 | bf16), causal (false), scale (0), sink (false), kv_shared (false), lse_base (e | 2)};
// tiling {q_block, kv_block, stages, split_kv, cores}. Default tiling (default_flash_attention_tiling):
// the first that fits L1, L0A / L0B, L0C and UB of: 3 stages before 2 and 1, then q_block 128, 64,
// 32, 16, then kv_block 128 down to 64 in steps of 16 (below 64 only if nothing else fits): d 128
// gives 128 x 128 x 3, d 576 / 512 (MLA) 64 x 112 x 3. split_kv 1 unless there are fewer (query
// block, head group) items than AICs; then the split count (<= 64, whose merge fits UB) minimising
// ceil(items x splits / cores) x ceil(blocks / splits). cores: every AIC that gets an item.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "kernels/kernel.hpp"

namespace npusim::kernels {

struct FlashAttentionShape {
  int64_t batch = 1, q_len = 1, kv_len = 1, heads_q = 1, heads_kv = 1, d_qk = 128, d_v = 128;
  sim::DType dtype = sim::DType::Bf16;
  bool causal = false;
  double scale = 0;  // 0: d_qk^-0.5
  bool sink = false;
  bool kv_shared = false;
  bool lse_base2 = false;  // lse as log2-sum-exp2 instead of the natural log (KERNELS.md 3.3 item 5)
  int64_t group() const { return heads_q / heads_kv; }
  double softmax_scale() const;
};

struct FlashAttentionTiling {
  int64_t q_block = 128;   // rows (query, head) of one KV head per block
  int64_t kv_block = 128;  // keys per block
  int stages = 2;          // K (and V) tiles in L1
  int split_kv = 1;        // key ranges per (batch, KV head, query block)
  int cores = 0;           // AICs used
};

FlashAttentionTiling default_flash_attention_tiling(const FlashAttentionShape& s, const sim::HardwareSpec& hw);

class FlashAttentionKernel : public Kernel {
 public:
  FlashAttentionKernel(FlashAttentionShape s, FlashAttentionTiling t, bool is_default) : s_(s), t_(t), default_(is_default) {}
  std::string op() const override { return "flash_attention"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override { return references(inputs, {})[0]; }
  std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                 const std::vector<std::vector<double>>& device) const override;
  double flops() const override;
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override {
    return 2.0 * hw.cube_macs_per_cycle(s_.dtype) * hw.num_aic;
  }
  double estimated_instructions() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;
  const FlashAttentionShape& shape() const { return s_; }
  const FlashAttentionTiling& tiling() const { return t_; }

 private:
  FlashAttentionShape s_;
  FlashAttentionTiling t_;
  bool default_;
};

// A `tiling:` section (q_block, kv_block, stages, split_kv, cores) over `base`; without cores,
// every AIC that gets an item of the resulting plan.
FlashAttentionTiling parse_flash_attention_tiling(const YamlNode& tiling, FlashAttentionTiling base, const FlashAttentionShape& s,
                                                  const sim::HardwareSpec& hw);

std::unique_ptr<Kernel> make_flash_attention(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                             const sim::HardwareSpec& hw);

// ---- Shared by flash_attention.cpp (planning, references) and flash_attention_lower.cpp ----
namespace fa {

// The rows of a query block: queries [q0, q0 + nq) of a sequence and heads [h0, h0 + nh) of the
// KV head's group; row r is (r % nq, r / nq) head-major, else (r / nh, r % nh).
struct Rows {
  int64_t q0 = 0, nq = 0, h0 = 0, nh = 0;
  bool head_major = false;
  int64_t count() const { return nq * nh; }
  int64_t query(int64_t r) const { return head_major ? r % nq : r / nh; }
  int64_t head(int64_t r) const { return head_major ? r / nq : r % nh; }
};

// A run of rows contiguous in a [tokens, heads x cols] tensor: one head's queries (head-major:
// a row stride of N1 x cols) or one query's heads (query-major: a stride of cols).
struct Segment {
  int64_t row, count, q, h;  // first row (of the block), rows, its query and head (block-relative)
};
std::vector<Segment> segments(const Rows& rows, int64_t r0, int64_t r1);

// Rows [first, second) of a block of `count` rows that AIV k of `aivs` owns: equal shares rounded
// up to whole 16-row fractals, so every AIV's rows start on a fractal boundary of the NZ tiles
// (a block of 16 rows or fewer goes to the first AIV alone).
inline std::pair<int64_t, int64_t> aiv_rows(int64_t count, int aivs, int k) {
  const int64_t h = round_up(ceil_div(count, aivs), 16), b = std::min(count, k * h);
  return {b, std::min(count, b + h)};
}

struct Group {  // one (batch, KV head, query block)
  int64_t b = 0, n2 = 0;
  Rows rows;
  int64_t blocks = 0;                // key blocks [0, blocks) some row sees
  std::vector<int64_t> split_begin;  // split s covers [split_begin[s], split_begin[s + 1])
  int64_t part = -1;                 // index in the split workspace, -1 when not split
  int splits() const { return static_cast<int>(split_begin.size()) - 1; }
};

struct Item {
  int64_t group;
  int split;
  int64_t j0, j1;  // key blocks
};

struct Plan {
  std::vector<Group> groups;
  std::vector<Item> items;
  std::vector<std::vector<int64_t>> core_items;  // per AIC, in processing order
  int64_t split_groups = 0;
  int max_splits = 1;
};
Plan make_plan(const FlashAttentionShape& s, const FlashAttentionTiling& t, int num_aic);

// The key blocks of the query block whose queries are [q0, q0 + nq): `blocks` some row sees,
// `full` every row sees whole, and the `splits` split_kv gives it (each starts on a full block).
struct KeyRange {
  int64_t blocks = 0, full = 0, splits = 1;
};
KeyRange key_range(const FlashAttentionShape& s, int64_t q0, int64_t nq, int64_t kv_block, int split_kv);

// What make_plan deals out for a tiling, counted without building it: groups, items, key-block
// steps over all items, the longest item's steps, and the groups that are split.
struct Work {
  int64_t groups = 0, items = 0, steps = 0, longest = 0, split_groups = 0;
};
Work count_work(const FlashAttentionShape& s, int64_t q_block, int64_t kv_block, int split_kv);

// Block sizes and buffer placement derived from the tiling and the hardware.
struct Dims {
  int64_t M = 0;     // rows of a full query block
  int64_t hb = 0, mq = 0;  // heads, queries of a full block
  int64_t Bk = 0;    // keys per block
  int64_t W = 0;     // O columns per C2 chunk (a divisor of d_v)
  int64_t Wb = 0;    // columns of the row-broadcast tile
  int64_t kq0 = 0;   // C1 K-chunk (of d_qk)
  int64_t kc0 = 0;   // C2 K-chunk (of the block's keys)
  int s_bufs = 1, o_bufs = 1, q_bufs = 1;  // L0C S and O buffers, L1 Q buffers
  // Blocks C1 runs ahead of C2 (`lead`: 1, or 0 with a single K stage, whose block C2 still reads
  // when C1 of the next would load it), and blocks the K (V) loads run ahead of C1 (`prefetch`:
  // the stages left, stages - 1 - lead; a stage is free once C2 of its previous block is done).
  int lead = 1, prefetch = 0;
  // (m, l, alpha) sets in UB: V1 of block j reads block j - 1's and V2 / the epilogue of block j
  // run after V1 of block j + lead, so two sets serve lead 0 and 1.
  static constexpr int kStatSets = 2;
  static constexpr int kSlots = 2;         // S, P and O-chunk hand-off slots
  int aivs = 2;
  int64_t R = 0;     // rows per AIV (most)
  bool via_ub = false;
  // L1 (bytes)
  uint64_t l1_q = 0, q_bytes = 0, l1_stage = 0, stage_bytes = 0, v_off = 0, l1_p = 0, p_bytes = 0, l1_end = 0;
  // L0C
  uint64_t s_bytes = 0, o_bytes = 0, l0c_end = 0;
  // UB of each AIV (bytes)
  uint64_t ub_s = 0, s_slot = 0, ub_tmp = 0, ub_bcast = 0, ub_oin = 0, oin_slot = 0, ub_acc = 0, ub_stage = 0,
           stage_slot = 0, ub_stats = 0, vec = 0, ub_vecs = 0, ub_end = 0;
  int64_t merge_rows = 0;  // rows one merge task takes
  uint64_t merge_bytes = 0;
};
Dims make_dims(const FlashAttentionShape& s, const FlashAttentionTiling& t, const sim::HardwareSpec& hw);
// UB of an AIV merging `rows` rows of up to `splits` splits: the fp32 accumulator, two part
// buffers (the parts stream through them), the parts' lse and weights, the broadcast tile and
// eight row vectors (NZ tiles in 16-row strips).
struct MergeUb {
  uint64_t acc, parts, part_bytes, plse, w, bcast, vecs, vec, end;
};
MergeUb merge_ub(const FlashAttentionShape& s, const Dims& d, int splits, int64_t rows);

// GM placement: the tensors, then the split workspace, then (2201) the per-AIC hand-off slots.
struct Gm {
  uint64_t q = 0, k = 0, v = 0, sinks = 0, out = 0, lse = 0;
  uint64_t part_o = 0, part_lse = 0;  // split workspace
  uint64_t ws = 0, ws_core = 0, ws_s = 0, ws_p = 0, ws_o = 0;  // per-AIC slots (2201)
  uint64_t footprint = 0;
};
Gm place(const FlashAttentionShape& s, const Dims& d, const Plan& p, int cores);

// Keys a query of the block sees in key block j (0 .. keys of the block); `pos` its position.
inline int64_t visible(const FlashAttentionShape& s, int64_t pos, int64_t k0, int64_t keys) {
  return s.causal ? std::clamp<int64_t>(pos - k0 + 1, 0, keys) : keys;
}

}  // namespace fa
}  // namespace npusim::kernels
