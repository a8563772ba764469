// The lightning indexer's work plan, on-chip layouts and GM placement, shared by
// lightning_indexer.cpp (the plan, the kernel's interface) and lightning_indexer_lower.cpp (the AIC /
// AIV programs). Internal to the kernel; lightning_indexer.hpp is its API.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cube_vector.hpp"
#include "kernels/lightning_indexer.hpp"

namespace npusim::kernels::indexer_impl {

using sim::DType;
using sim::TileLayout;

inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr int kBarrier = CubeVectorSlots::kFlags;  // cross-core flag of the all-AIV barrier before stage 2 (after READY, FREE)
inline constexpr int kUnitBuf = 2;       // AIV V<->MTE2 event of the unit's weights (2201 score copies use 0, 1)
inline constexpr int kScaleBuf = 3;      // AIV V<->MTE2 events of the k_scale groups (3, 4)
inline constexpr int kOut = 0;           // AIV MTE3->V: the fused outputs / lists have left the areas (1, 2: keys rows)
inline constexpr int kSync = 3;          // AIV V->MTE3: the fill buffer is ready; everything is done before the barrier
inline constexpr int64_t kMaxFill = 2048;

inline uint32_t u32(int64_t v) { return static_cast<uint32_t>(v); }
inline uint32_t r16(int64_t v) { return u32(round_up(v, 16)); }
inline int64_t k_align(DType d) { return 32 / sim::dtype_bytes(d); }
inline uint64_t align32(int64_t bytes) { return static_cast<uint64_t>(round_up(bytes, 32)); }
inline int64_t fill_len(const IndexerShape& s) { return std::min(s.max_keys(), kMaxFill); }
inline sim::TileRef flat(uint64_t off, DType d) { return {off, 0, 0, 0, TileLayout::Flat, d}; }

// ---- Work plan: query blocks, their key-block ranges (units) and the AIC each unit runs on ----

struct QBlock {
  int64_t t0, nq, key_base, vis_max, blocks;
  int splits;
};
struct Unit {
  int qb, split;
  int64_t b0, b1;
};
struct Plan {
  int64_t qa = 1;  // queries per AIV of an item
  std::vector<QBlock> qblocks;
  std::vector<Unit> units;
  std::vector<std::vector<int>> per_core;  // unit ids in ascending order
  int max_splits = 1;
  bool stage2 = false;
  int64_t items = 0;
};

Plan make_plan(const IndexerShape& s, const IndexerTiling& t, int aiv_per_aic);

// Calls f(first token, queries, visible keys of its last query, key blocks, splits) for each query
// block: each sequence's queries cut into runs of q_block, their key blocks split into at most
// `splits` ranges (at least one block each). `vis` is s.visible().
template <class F>
void for_each_qblock(const IndexerShape& s, const std::vector<int64_t>& vis, int64_t q_block, int64_t key_block, int splits, F&& f) {
  int64_t t0 = 0;
  for (size_t b = 0; b < s.queries.size(); t0 += s.queries[b++])
    for (int64_t j = 0; j < s.queries[b]; j += q_block) {
      const int64_t nq = std::min(q_block, s.queries[b] - j), first = t0 + j;
      const int64_t vmax = vis[static_cast<size_t>(first + nq - 1)], blocks = ceil_div(vmax, key_block);
      f(first, nq, vmax, blocks, static_cast<int>(std::clamp<int64_t>(splits, 1, std::max<int64_t>(1, blocks))));
    }
}

// ---- On-chip layouts ----

struct AicLayout {
  uint64_t q_l1, k_l1, k_stage, l0b_half, l0c_buf;
  int64_t n0;
  int l0c_bufs;
  int64_t l1_bytes;
};

AicLayout aic_layout(const IndexerShape& s, const IndexerTiling& t, const sim::HardwareSpec& hw);

struct AivUb {
  uint64_t slot_bytes = 0, scores[2] = {0, 0}, kscale[2] = {0, 0}, wbuf = 0, qsbuf = 0, wtile = 0;
  uint64_t keys[2] = {0, 0}, idx = 0, areas = 0, area_bytes = 0, fill = 0, bytes = 0;
  uint64_t s2_area[2] = {0, 0}, s2_out = 0, s2_bytes = 0;
  uint64_t area(int64_t i, int which) const { return areas + static_cast<uint64_t>(2 * i + which) * area_bytes; }
};

AivUb aiv_ub(const IndexerShape& s, const IndexerTiling& t, bool via_ub, int64_t qa, int max_splits);

// ---- GM placement: the tensors, then the workspaces ----

struct Gm {
  uint64_t q, k, qs, ks, w, scores = 0, idx = 0, vals = 0, end;
};

Gm place(const IndexerShape& s);

}  // namespace npusim::kernels::indexer_impl
