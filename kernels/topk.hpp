// Row top-k on the AIVs (the unfused plan's selection after the indexer scores; KERNELS.md 3.3,
// 4.2 LightningIndexer's running top-k) and the running top-k machinery the fused
// lightning_indexer shares.
//
// Per row of a [T, S] fp32 score matrix: the k largest scores, descending, ties to the lower
// column; a row with fewer than k finite scores is padded with index -1 and value -inf (-inf and
// NaN scores are never picked). Outputs indices [T, k] int32 and values [T, k] fp32.
//
// The running top-k (CANN LightningIndexer: InitSortOutBuf, SortAll, MergeSort). Pairs are
// (fp32 key, int32 index), 8 bytes. A row's state is two UB areas of k + cap pairs; the current
// one holds the list (the k best so far, sorted, initially k padding pairs of key -inf) followed
// by the candidates. New keys arrive in batches of up to `cap` (a multiple of 32, with their
// columns from arange): sort32 sorts each block of 32 into the candidates, merge levels of four
// runs (what one MrgSort of four queues does) turn them into one run, and one 2-way merge of list
// + candidates into the other area keeps its first k pairs as the new list. Sorts are stable and
// the list precedes the candidates, so ties go to the lower column, and the padding outranks any
// -inf score: a padded row's tail is exactly the padding, which leaves as index -1. The runs are
// written where the level ping-pong (between the two areas' candidate regions) ends in the
// current area, so nothing is copied back.
// Limits from MrgSort: a queue holds at most 4095 pairs, so cap <= 4064 and the list takes at
// most 3 queues (k <= 12285), as CANN's MergeSort splits a long list.
//
// Two stages. A long row can be split into `splits` column ranges handled by different AIVs
// (stage 1: each keeps the running top-k of its range and writes the sorted list, k pairs, to a GM
// workspace); after an all-AIV barrier (cross-core flag mode 0) stage 2 merges the splits' lists
// of each row (4-way merge levels over runs of k, splits in column order, so ties still go to the
// lower column) and extracts the first k. The default tiling splits rows when that balances the
// AIVs (few rows, long rows).
//
// Lowering (topk): units (row, split) are dealt to the AIVs in contiguous ranges; each unit loads
// its columns `chunk` at a time (double-buffered MTE2 into UB; a partial chunk's pad set to -inf),
// arange gives the columns, and each chunk is one batch (cap = chunk). Every instruction is data
// independent; the scalar unit only loops.
//
// YAML: workload {op: topk, tokens (rows T), cols (S), topk (k), causal_from (functional inputs: row
// t's columns beyond causal_from + t are -inf)}; tiling {chunk, splits, cores}.
// Default tiling: chunk = the row (32-aligned) up to 2048 while UB holds it; splits from 1..16
// minimizing the per-AIV work estimate (stage-1 chunks of the busiest AIV + stage-2 merges), fewer
// while stage 2's lists do not fit UB; cores = min(AIVs, units).
//
// Shared code: the tie-aware judge builds on validation.hpp's topk_sets_agree and the stable
// ref::topk. gating.cpp's sort idioms live in its anonymous namespace; TopkEmitter is the public
// form of the same vocabulary (sort32 / mrgsort levels / extract).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/kernel.hpp"

namespace npusim::kernels {

// MrgSort's queue length limit and what the running top-k derives from it.
inline constexpr int64_t kMaxMergeQueue = 4095;
inline constexpr int64_t kMaxTopkCap = 4064;             // candidates: one queue, 32-aligned
inline constexpr int64_t kMaxTopk = 3 * kMaxMergeQueue;  // the list: at most three queues

// The index a padding pair carries: the int32 with the bits of -inf, so that one int32 dup writes
// k (-inf, kPadIndex) pairs; extract_list clamps it to -1 (Maxs) on the way out.
inline constexpr int32_t kPadIndex = -8388608;  // 0xFF800000

// Vector idioms of the running top-k on one AIV's stream (offsets are UB bytes).
class TopkEmitter {
 public:
  struct State {
    uint64_t area[2] = {0, 0};
    int cur = 0;
  };

  TopkEmitter(sim::CoreBuilder& b, int64_t k) : b_(b), k_(k) {}
  static uint64_t area_bytes(int64_t k, int64_t cap) { return static_cast<uint64_t>(k + cap) * 8; }
  // Merge levels turning sort32 blocks of n pairs into one run: ceil(log4(n / 32)).
  static int levels(int64_t n);

  void reset(State& s) const;  // the list := k padding pairs (one int32 dup)
  // One batch: n keys (a multiple of 32, at most cap) with their int32 indices are sorted in blocks
  // of 32 into the candidates (of the area where the level ping-pong ends in the current one),
  // merged into one run, and list + run merged into the other area, whose first k pairs become the list.
  void merge_batch(State& s, uint64_t keys, uint64_t idx, int64_t n) const;
  uint64_t list(const State& s) const { return s.area[s.cur]; }
  // The first k pairs at `pairs` as values (fp32) and indices (int32, padding -1).
  void extract_list(uint64_t vals, uint64_t ids, uint64_t pairs) const;

  // The vocabulary underneath (fp32 unless named; chunked at 255 repeats of 256 B).
  void ew(sim::VecOp op, uint64_t dst, uint64_t src, int64_t n, double scalar = 0, uint64_t src2 = 0,
          sim::DType dt = sim::DType::Fp32) const;
  void dup(uint64_t dst, int64_t n, double v, sim::DType dt = sim::DType::Fp32) const { ew(sim::VecOp::Dup, dst, dst, n, v, 0, dt); }
  void arange(uint64_t dst, int64_t n, double start) const;
  void sort32(uint64_t dst, uint64_t keys, uint64_t idx, int64_t n) const;
  void mrgsort(uint64_t dst, uint64_t src, int64_t n, int64_t chunk) const;  // chunk 0: all n pairs at once
  void extract(uint64_t dst, uint64_t pairs, int64_t n, bool indices) const;

 private:
  sim::CoreBuilder& b_;
  int64_t k_;
};

// GM <-> UB copies of `rows` rows of `cols` 4-byte words (GM rows `gm_ld` words apart, UB rows
// `ub_ld` apart); a flat copy is rows = 1.
void copy_gm_to_ub(sim::CoreBuilder& b, uint64_t ub, int64_t ub_ld, uint64_t gm, int64_t gm_ld, int64_t rows,
                   int64_t cols, sim::DType dt);
void copy_ub_to_gm(sim::CoreBuilder& b, uint64_t gm, int64_t gm_ld, uint64_t ub, int64_t ub_ld, int64_t rows,
                   int64_t cols, sim::DType dt);

// Stage 2 of a split top-k on one AIV. After the AIV's stage-1 work (V, then MTE3 through V->MTE3
// event `sync`) the all-AIV barrier (cross-core flag `barrier`, mode 0); then per row (token t,
// s splits): MTE2 brings its s lists (k pairs each, at `lists` + t max_splits k pairs) into
// area[0], merge levels of four lists (splits in column order: ties stay with the lower column),
// and the first k leave as values / indices (row t, k apart) from `out` (values, then indices at
// out + align32(4k)). Events: V<->MTE2 0; MTE3->V and V->MTE3 `out_event` (the caller primes
// MTE3->V once).
struct TopkStage2 {
  uint64_t lists = 0, values = 0, indices = 0;  // GM
  uint64_t area[2] = {0, 0}, out = 0;           // UB
  int64_t k = 0;
  int max_splits = 1, barrier = 0, sync = 0, out_event = 0;
  static uint64_t ub_bytes(int64_t k, int max_splits);  // both areas and the outputs
};
void emit_topk_stage2(sim::CoreBuilder& b, const TopkStage2& s2, const std::vector<std::pair<int64_t, int>>& rows);

// How many of `rows` rows to split into how many column ranges: the s in 1..16 (at most `blocks`,
// the row's chunks) minimizing ceil(rows s / workers) ceil(blocks / s) + (s > 1) ceil(rows / workers)
// s stage2_cost (stage 2 in units of one block's stage-1 work), ties to the smaller s.
int choose_splits(int64_t rows, int64_t blocks, int workers, double stage2_cost);

// The judged outputs of a top-k (KERNELS.md 5.4): from the reference scores of each row, in fp64
// (`exact`) and with the device's rounding (`device`), rows x cols, and the device's index output
// (null: none yet), the goldens of indices and values. A device row stands when it is a
// tie-equivalent choice: its -1 padding as long as the reference's, its real picks distinct
// columns, the symmetric difference with the stable reference within delta = 2^-13 |r_k| + atol
// (fp32 policy, atol from the row's RMS) of the k-th score, and in non-increasing score order
// (within delta). Values are the scores at the chosen columns (the device's, when they are columns
// at all), -inf at -1.
std::pair<Golden, Golden> topk_goldens(int64_t rows, int64_t cols, int64_t k, const std::vector<double>& exact,
                                       const std::vector<double>& device, const std::vector<double>* device_idx);

struct TopkShape {
  int64_t rows = 0, cols = 0, k = 0;
  // Functional inputs only: >= 0 gives the scores a causal indexer leaves, row t's columns beyond
  // causal_from + t at -inf (rows with fewer than k finite scores are padded).
  int64_t causal_from = -1;
};

struct TopkTiling {
  int64_t chunk = 2048;
  int splits = 1;
  int cores = 0;
};

class TopkKernel : public Kernel {
 public:
  TopkKernel(TopkShape s, TopkTiling t, bool is_default) : s_(s), t_(t), default_(is_default) {}
  std::string op() const override { return "topk"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                 const std::vector<std::vector<double>>& device) const override;
  double flops() const override { return 0; }  // selection moves data; no arithmetic on the scores
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override;
  double estimated_instructions() const override;
  std::vector<double> make_input(size_t index, const InputSpec& spec) const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

  // UB bytes of stage 1 (buffers, list areas, outputs) and of stage 2 (the splits' lists).
  static int64_t ub_bytes(const TopkShape& s, const TopkTiling& t);

 private:
  TopkShape s_;
  TopkTiling t_;
  bool default_;
};

TopkTiling default_topk_tiling(const TopkShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section (chunk, splits, cores) over `base`; without cores, every AIV that gets a
// (row, split) unit.
TopkTiling parse_topk_tiling(const YamlNode& tiling, TopkTiling base, const TopkShape& s, const sim::HardwareSpec& hw);

std::unique_ptr<Kernel> make_topk(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                  const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
