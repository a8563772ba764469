// DSA / V4 CSA lightning indexer (KERNELS.md 2.5 Indexer, 3.1, 3.3; CANN LightningIndexer 4.2):
//
//   I[t, s] = k_scale[s] * sum_h (w[t, h] * q_scale[t, h]) * ReLU(<q[t, h], k[s]>)   for visible s, else -inf
//
// q and k hold FP8 E4M3 code values with one ue8m0 (power-of-two) scale per 128-vector: per head
// row of q (q_scale [T, HI]) and per key row of k (k_scale [1, S_total]); w [T, HI] already holds
// the model's factors (weights_proj * HI^-0.5 * DI^-0.5). This is the kernel form of 3.1 (equal to
// sum_h w ReLU(<q_deq, k_deq>) since the scales are positive), accumulated in fp32.
//
// Dtypes: on 3510 the score GEMM runs on the fp8 cube (q, k stored fp8). The 2201 cube has no fp8;
// an E4M3 value has 4 significant bits and an exponent bf16 covers, so it is exact in bf16 and the
// products are the same: on 2201 q and k are stored as bf16 holding the fp8-grid values and the
// GEMM runs on the bf16 cube (half the fp8 MAC rate, twice the bytes). `dtype` picks it; the
// default is fp8 where the cube has it, else bf16.
//
// Sequences: `batch` sequences, each with its own `keys` (rows of k, consecutive per sequence) and
// `context` tokens; its queries are its last tokens (query j of Q at position context - Q + j).
// Visibility (3.3 item 6): key i of a sequence is visible to a query at position p iff
// (i + 1) ratio <= p + 1, i.e. the first min(keys, (p + 1) / ratio) keys (ratio 1: s <= p; V4
// CSA: ratio 4 over the compressed entries). Outputs: unfused, scores [T, max keys] fp32 (-inf
// where not visible); with `fused_topk` (a shape flag: it changes the outputs) indices [T, topk]
// int32 (the sequence's key numbers, descending score, ties to the lower key, -1 after the
// visible keys run out) and values [T, topk] fp32 (-inf at -1).
//
// Tensors (in this order): q [T, HI DI], k [S_total, DI] (fp8 or bf16), q_scale [T, HI], k_scale
// [1, S_total], w [T, HI] (fp32); then scores [T, max keys], or indices [T, topk] int32 and values
// [T, topk] fp32.
//
// Lowering (cube -> vector, the hand-off of cube_vector.hpp: GM workspace slots on 2201, L0C->UB on
// 3510, READY/FREE cross-core flags):
//  * Work: query blocks of `q_block` consecutive queries of one sequence; the key blocks
//    (`key_block` keys) up to the last query's visible count; each query block's key blocks split
//    into `splits` ranges; these units go to the AICs longest first, to the least loaded.
//  * AIC, per unit: the block's head rows Q (M = q_block x HI rows of DI, contiguous in q) go to L1
//    and stay in L0A; MTE2 brings K for `l1_blocks` key blocks at a time (K^T, through `stages`
//    L1 buffers), MTE1 moves each block to L0B (ping-pong, split to fit), the cube computes
//    S = Q K^T (fp32 in L0C, ping-pong when two fit) and FIXPIPE hands the block to the AIVs: AIV k
//    of the pair owns queries [k qa, (k + 1) qa), qa = ceil(q_block / 2), all HI rows of each.
//  * AIV, per unit: w * q_scale (one mul) broadcast into a weight tile [qa HI, key_block] (one dup
//    per head row, the scalar unit loading each weight; CANN's Brcb). Per key block: ReLU and the
//    weight tile's mul over all its rows (one instruction each), per query the heads summed by
//    halving adds (an odd tail folded first, as CANN's DoReduce), times k_scale (MTE2 brings it for
//    `merge_blocks` blocks at once) and -inf over the invisible tail (the scalar unit knows each
//    query's position). Unfused, MTE3 writes each row; columns past the computed blocks come from
//    a -inf buffer.
//  * Fused top-k: the running top-k of topk.hpp per query: a batch of up to `merge_blocks` blocks
//    the query sees (blocks it cannot see are skipped) is sorted (one arange, one sort32, merge
//    levels) and merged into the list. A unit ends with the query's list extracted to indices /
//    values, or, with splits > 1, written to a GM workspace for stage 2 (topk.hpp TopkStage2)
//    after an all-AIV barrier.
// Instruction counts per key block are what bound a long context's simulation: a larger key_block
// halves them where L0C and UB allow it (3510: 256; 2201: 128, its UB holding two workspace
// copies and the weight tile of 64 x 128 fp32).
//
// YAML: workload {op: lightning_indexer, tokens (T, split evenly over the sequences), keys (int, or
// a list per sequence), topk, heads (64), head_dim (128), ratio (1), batch (1), context (int or
// list; default keys x ratio), fused_topk (true), dtype (fp8 | bf16; default by cube)};
// tiling {q_block, key_block, l1_blocks (2), stages (2), slots (2), merge_blocks, splits, cores}.
// Default tiling: q_block the multiple of 2 giving M = q_block HI >= 64 (at most the queries of a
// sequence, 2 for HI 64); key_block the largest of 512, 256, ... 32 whose double-buffered L0C
// tile, L1 stages and UB fit, merge_blocks the most (up to topk / key_block; unfused 2048 keys)
// UB then holds; splits from choose_splits (topk.hpp; stage 2 priced as one list merge per split,
// fewer while stage 2 does not fit UB); cores = min(AICs, units).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels/kernel.hpp"

namespace npusim::kernels {

struct IndexerShape {
  int64_t heads = 64, head_dim = 128, topk = 2048, ratio = 1;
  std::vector<int64_t> keys, context, queries;  // per sequence
  bool fused_topk = true;
  sim::DType dtype = sim::DType::Fp8;
  int64_t tokens() const { return std::accumulate(queries.begin(), queries.end(), int64_t{0}); }
  int64_t max_keys() const { return keys.empty() ? 0 : *std::max_element(keys.begin(), keys.end()); }
  int64_t total_keys() const { return std::accumulate(keys.begin(), keys.end(), int64_t{0}); }
  // Per token: its sequence's first row of k, and how many of the sequence's keys it sees.
  std::vector<int64_t> key_base() const;
  std::vector<int64_t> visible() const;
};

struct IndexerTiling {
  int64_t q_block = 2, key_block = 128, merge_blocks = 1, l1_blocks = 2;
  int stages = 2, slots = 2, splits = 1, cores = 1;
};

// fp8 where the hardware's cube has it, else bf16 (exact for fp8 values).
sim::DType indexer_dtype_for(const sim::HardwareSpec& hw);

class LightningIndexerKernel : public Kernel {
 public:
  LightningIndexerKernel(IndexerShape s, IndexerTiling t, bool is_default) : s_(std::move(s)), t_(t), default_(is_default) {}
  std::string op() const override { return "lightning_indexer"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  // Fused: indices tie-aware (KERNELS.md 5.4), values at the device's picks; unfused: the scores.
  std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                 const std::vector<std::vector<double>>& device) const override;
  double flops() const override;
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override {
    return 2.0 * hw.cube_macs_per_cycle(s_.dtype) * hw.num_aic;
  }
  double estimated_instructions() const override;
  // q / k: block-scaled FP8 of a normal (uniform, ones) source, one ue8m0 scale per head row / key
  // row; `ties` repeats three key rows so that scores tie exactly. w: normal x HI^-0.5 DI^-0.5.
  std::vector<double> make_input(size_t index, const InputSpec& spec) const override;
  nlohmann::json details() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

  const IndexerShape& shape() const { return s_; }
  const IndexerTiling& tiling() const { return t_; }
  // UB bytes one AIV needs (the larger of stage 1 and stage 2).
  static int64_t ub_bytes(const IndexerShape& s, const IndexerTiling& t, const sim::HardwareSpec& hw);

 private:
  IndexerShape s_;
  IndexerTiling t_;
  bool default_;
};

IndexerTiling default_indexer_tiling(const IndexerShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section (q_block, key_block, l1_blocks, stages, slots, merge_blocks, splits, cores)
// over `base`.
IndexerTiling parse_indexer_tiling(const YamlNode& tiling, IndexerTiling base);

std::unique_ptr<Kernel> make_lightning_indexer(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                               const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
