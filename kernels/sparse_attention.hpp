// Sparse MLA attention in MQA mode (KERNELS.md 2.5, 3.1, 3.3; Ascend SparseFlashAttention /
// SparseAttnSharedKV, FlashMLA sparse): one latent KV head shared by every query head, K = V (a KV
// row holds d_qk values, V is its first d_v), each query attending the rows its index lists name,
// from one or two KV sources (V3.2 DSA: the latent cache with the indexer's top-k; V4 CSA: the
// window ring plus the compressed cache's top-k; V4 HCA: the window plus every visible compressed
// entry). The convention is ref::sparse_attention's: sink in the denominator only, natural-log
// lse without the sink, out 0 and lse +inf for a query with no valid index, -1 or >= rows invalid.
//
// The shape carries the indices the run drew, so the lowering issues the real gathers. Work items
// are (token, head block, split); item i runs on AIC i % cores and its AIVs, which split the
// item's heads in whole 32-byte fp32 vectors (8 heads): over all the AIC's AIVs when head_block /
// aiv_per_aic is a multiple of 8, else over the most AIVs that each get a multiple of 8 heads, down
// to one (8 heads on a pair: AIV 0 takes the whole block). An AIV without heads (the "idle" one)
// still shares the gathers (gather: aiv) and the split-KV merge, and consumes the AIC's READY /
// FREE broadcasts (cross-core mode 2 reaches every AIV of the pair), while the AIC counts the
// hand-offs of the active AIVs only; so the flag protocol is the same, with fewer answering AIVs.
// (Alternating whole items between the AIVs would keep both busy, at the price of tracking each
// block's owner in every hand-off and UB slot; the toy sizes this serves do not need the vector
// throughput, and head counts that are multiples of 16 keep the even split.) The
// flags an AIV raises towards the AIC are per AIV (their own ids), so a set from an AIV that runs
// ahead never stands in for a lagging one's. Per item the AIC loads Q^T once, then per block of
// kv_block valid rows:
//   gather  each valid row is one small GM transfer into a K tile of L1, by the AIC's MTE2 (ND->NZ),
//           or (gather: aiv) by the AIVs' MTE2 into UB and on into L1 (3510, UB->L1) or a GM
//           workspace tile the AIC loads (2201); an invalid index costs its scalar check only;
//   C1      S^T = K Q^T (M = the block's rows, N = the head block, K = d_qk), so the AIVs get the
//           scores head-minor and every softmax step is a flat vector op over the block;
//   V1      the online softmax on each AIV's heads: scale, block max (a tree of Max over row
//           halves), running max, P = exp(S - m) (the max broadcast by doubling copies), block
//           sum (the same tree), l = l alpha + sum, P cast to bf16 and handed back;
//   C2      O_blk = P V (M = heads, N = d_v in L0B-sized chunks, K = the block's rows), V being
//           the same K tile in L1; the AIVs then rescale O by alpha row by row and add O_blk.
// C1 runs one block ahead of C2 (FlashAttention's preload), so the cube, the vector units and the
// gathers overlap. Hand-offs: a GM workspace (L2-resident) with cross-core READY/FREE flags on
// 2201; L0C->UB for S and O_blk and UB->L1 for P on 3510. With split_kv > 1 each split writes a
// normalised partial and its lse to a GM workspace; after an all-AIV barrier the AIVs merge
// (FlashDecoding's lse merge) and apply the sink.
//
// Why S^T and not S: the heads are C1's N dimension, not its M. The AIVs then hold the scores
// head-minor ([rows x heads]), so the per-head max and sum are folds of row halves and the max's
// broadcast is a row copied by doubling, flat vector ops over the block; in S's head-major layout
// every one of them is a per-row instruction (the vocabulary has no Brcb). The K tile is C1's A
// and C2's B in the same orientation, so one gathered tile serves both; P^T goes back read
// column-major (as the GEMM reads a column-major A). The O update stays head-major, one Muls per
// head row. The cube's work (fractals) is the same either way.
//
// Tensors, in order: q [T, H d_qk], kv0 [rows0, d_qk], idx0 [T, n0] int32, (kv1 [rows1, d_qk],
// idx1 [T, n1] int32), (sinks [1, H] fp32), out [T, H d_v], lse [T, H] fp32 (both outputs judged).
//
// YAML (make_sparse_attention):
//   workload: {op: sparse_attention, tokens: T, heads: H, d_qk, d_v, dtype: bf16 | fp16,
//              scale (d_qk^-0.5), sink (false), batch (1: sequences; token t belongs to sequence
//              t / (T / batch), its tokens at consecutive positions, the last one seeing `visible`),
//              sources: [one or two of {rows, per_query,
//                 select: topk (drawn: indices {distribution: uniform | recent_biased, tau,
//                         sink_tokens, seed}, kernels/indices.hpp) | window (the newest per_query
//                         positions; a ring of rows / batch slots holds position p in slot
//                         p mod rows / batch) | all (every visible entry, then -1),
//                 visible (rows / batch: entries the sequence's last token sees)}]}
//   Each source's rows split evenly over the sequences; an index is a row of the whole cache.
//   tiling: {kv_block, head_block, stages, gather: aic | aiv, split_kv, cores}; the default is
//   default_sparse_attention_tiling.
#pragma once

#include <optional>

#include "kernels/kernel.hpp"

namespace npusim::kernels {

// One KV source: a cache [rows, d_qk] and the index list each query drew from it.
struct SparseKvSource {
  int64_t rows = 0;
  int64_t per_query = 0;
  std::vector<int32_t> idx;  // tokens x per_query, query-major; -1 or >= rows: invalid
};

struct SparseAttentionShape {
  int64_t tokens = 0, heads = 0, d_qk = 0, d_v = 0;
  sim::DType dtype = sim::DType::Bf16;
  double scale = 0;
  bool sink = false;
  bool lse_base2 = false;  // lse as log2-sum-exp2 instead of the natural log (KERNELS.md 3.3 item 5)
  std::vector<SparseKvSource> sources;  // one or two
};

enum class GatherBy { Aic, Aiv };

struct SparseAttentionTiling {
  int64_t kv_block = 128;  // valid KV rows per block: C1's M, C2's K
  int64_t head_block = 0;  // heads per item: C1's N, C2's M; a multiple of 8, each active AIV (see
                           // sparse_attention_active_aivs) takes head_block / active AIVs
  int stages = 2;          // K tiles in L1 (gathering block k + 1 while C2 still reads block k - 1 needs 3)
  GatherBy gather = GatherBy::Aic;
  int split_kv = 1;        // splits of each token's index positions, merged on the AIVs
  int cores = 0;           // AICs, each with its AIVs
};

// The AIVs of a pair that split a head block: the most (at most aiv_per_aic) that each get a whole
// number of 32-byte fp32 vectors of heads (a multiple of 8); 0 when head_block is no multiple of 8.
int sparse_attention_active_aivs(int64_t head_block, int aiv_per_aic);

// What the lowering, the estimates and the same-precision reference share: each token's valid
// rows in scan order (source 0's list, then source 1's), and the items the tiling cuts them into.
// Split s of a token covers index positions [s N / S, (s + 1) N / S) of its N positions; a block
// is kv_block consecutive valid rows of one split.
struct SparsePlan {
  struct Row {
    int32_t source;
    int32_t pos;  // position in the token's concatenated index list
    int64_t row;  // row of that source's cache
  };
  struct Item {
    int64_t token;
    int64_t group;       // head block: heads [group * head_block, ...)
    int split;
    int64_t r0, r1;      // valid rows [r0, r1) of `rows`
    int64_t p0, p1;      // index positions scanned
    int64_t blocks;
  };
  int64_t positions = 0;            // index positions per token
  std::vector<Row> rows;            // token-major
  std::vector<int64_t> token_rows;  // tokens + 1 offsets into rows
  std::vector<Item> items;          // token, head block, split order
  int64_t kv_block = 0;

  // Rows [first, last) of block b of an item, and the index positions its scalar checks cover.
  std::pair<int64_t, int64_t> block_rows(const Item& it, int64_t b) const;
  std::pair<int64_t, int64_t> block_positions(const Item& it, int64_t b) const;
  // Whether split s of token t holds a valid row.
  bool split_nonempty(int64_t t, int split, int splits) const;
};

SparsePlan make_sparse_plan(const SparseAttentionShape& s, const SparseAttentionTiling& t);

// Buffer sizes the lowering uses (bytes), for feasibility checks and the default tiling.
struct SparseL0 {
  int64_t k0 = 0;   // C1's K slice (d_qk columns per MMAD)
  int64_t n0 = 0;   // C2's N chunk (d_v columns per MMAD)
};
SparseL0 sparse_attention_l0(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw);
int64_t sparse_attention_ub_bytes(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw);
int64_t sparse_attention_l1_bytes(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw);
int64_t sparse_attention_l0c_bytes(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw);

class SparseAttentionKernel : public Kernel {
 public:
  SparseAttentionKernel(SparseAttentionShape s, SparseAttentionTiling t, bool is_default);
  std::string op() const override { return "sparse_attention"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                 const std::vector<std::vector<double>>& device) const override;
  double flops() const override;
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override {
    return 2.0 * hw.cube_macs_per_cycle(s_.dtype) * hw.num_aic;
  }
  double estimated_instructions() const override;
  std::vector<double> make_input(size_t index, const InputSpec& spec) const override;
  nlohmann::json details() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

  const SparseAttentionShape& shape() const { return s_; }
  const SparseAttentionTiling& tiling() const { return t_; }
  const SparsePlan& plan() const { return plan_; }

 private:
  SparseAttentionShape s_;
  SparseAttentionTiling t_;
  bool default_;
  SparsePlan plan_;
  int64_t distinct_rows_ = 0;  // (source, row) pairs gathered at least once
};

// The documented default (see the definition): the largest head block and then the largest
// kv_block whose buffers fit UB and L1, 3 L1 stages when they fit, gathers on the AIC, split_kv
// when the (token, head block) items would leave AICs idle, every AIC that gets an item.
SparseAttentionTiling default_sparse_attention_tiling(const SparseAttentionShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section (kv_block, head_block, stages, gather, split_kv, cores) over `base`; without
// cores, every AIC that gets an item of the resulting tiling.
SparseAttentionTiling parse_sparse_attention_tiling(const YamlNode& tiling, SparseAttentionTiling base,
                                                    const SparseAttentionShape& s, const sim::HardwareSpec& hw);

// Lowering (sparse_attention_lower.cpp).
sim::Program lower_sparse_attention(const SparseAttentionShape& s, const SparseAttentionTiling& t, const SparsePlan& plan,
                                    const std::vector<TensorInfo>& tensors, const sim::HardwareSpec& hw, bool functional,
                                    const std::string& name);

std::unique_ptr<Kernel> make_sparse_attention(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                              const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
