// The tiling spaces of the grouped GEMM family: the GEMM space over the groups' rows
// (gemm_search_space: L1 / L0 tiles, swizzle, stages; cores follow the blocks, as a `tiling:`
// without cores gives), then what a fused kernel adds on its AIVs: sub-tile rows, buffer sets and
// the cube->vector slots, constrained by the same UB accounting can_implement uses.
#include <algorithm>

#include "kernels/grouped_gemm.hpp"
#include "kernels/grouped_gemm_finalize.hpp"
#include "kernels/grouped_gemm_swiglu.hpp"
#include "kernels/space_util.hpp"

namespace npusim::kernels {

namespace {

int64_t most_rows(const std::vector<int64_t>& rows) {
  return rows.empty() ? 1 : std::max<int64_t>(1, *std::max_element(rows.begin(), rows.end()));
}

// The fused kernels' AIV and hand-off parameters multiply the GEMM space, so each offers the few
// values that change the pipeline: sub-tile rows 4..32 (powers of two), one or two buffer sets,
// two or four slots in flight (one would serialise the cube and the vector units); plus `current`.
std::vector<int64_t> sub_tile_rows(int64_t current) {
  return space::with({4, 8, 16, 32}, current);
}
std::vector<int64_t> buffer_counts(int64_t current) {
  return space::with({1, 2}, current);
}
std::vector<int64_t> slot_counts(const sim::HardwareSpec& hw, int64_t current) {
  std::vector<int64_t> v;
  for (int64_t n : {2, 4})
    if (n <= hw.sync.cross_max_pending) v.push_back(n);
  return space::with(v, current);
}

// A fused kernel's items are whole L1 blocks leaving L0C for the AIVs: its L0 tile spans the L1
// tile in M and N (an L0A / L0B overflow is a smaller k0's to avoid), which keeps the fused
// spaces at about the size of the GEMM's.
void require_whole_l0_blocks(SearchSpace& sp) {
  const int m1 = sp.index_of("m1"), n1 = sp.index_of("n1"), m0 = sp.index_of("m0"),
            n0 = sp.index_of("n0");
  sp.require("L0 tile narrower than the fused item", {m1, m0},
             [=](const int64_t* p) { return p[m0] == p[m1]; });
  sp.require("L0 tile narrower than the fused item", {n1, n0},
             [=](const int64_t* p) { return p[n0] == p[n1]; });
}


// The AIV side of a fused cube -> vector kernel, after the GEMM parameters: sub-tile rows, buffer
// sets and slots, held to the UB bytes `ub_bytes(tiling)` reports.
template <class Tiling, class UbBytes>
void add_vector_side(SearchSpace& sp, const Tiling& base, const std::vector<int64_t>& group_rows,
                     const sim::HardwareSpec& hw, UbBytes ub_bytes) {
  const int kM1 = sp.index_of("m1"), kN1 = sp.index_of("n1");
  const std::vector<int64_t> rows = sub_tile_rows(base.rows_per_tile);
  const int kRows = sp.add("rows_per_tile", rows);
  const int kBuffers = sp.add("buffers", buffer_counts(base.buffers));
  const int kSlots = sp.add("slots", slot_counts(hw, base.slots));
  const int A = std::max(1, hw.aiv_per_aic);
  const int64_t most = most_rows(group_rows);
  // Sub-tiles at least an AIV's share of an item all run it in one go.
  sp.require("rows_per_tile beyond an AIV's rows", {kM1, kRows}, [=](const int64_t* p) {
    return space::within_reach(rows, p[kRows], ceil_div(std::min(p[kM1], most), A));
  });
  const int64_t ub = hw.aiv.ub_bytes;
  sp.require("UB capacity", {kM1, kN1, kRows, kBuffers, kSlots}, [=](const int64_t* p) {
    Tiling t = base;
    t.gemm.m1 = p[kM1], t.gemm.n1 = p[kN1], t.rows_per_tile = p[kRows];
    t.buffers = static_cast<int>(p[kBuffers]), t.slots = static_cast<int>(p[kSlots]);
    return ub_bytes(t) <= ub;
  });
  sp.tiling = [=](const int64_t* p) {
    nlohmann::json j = gemm_space_tiling(p);
    j["rows_per_tile"] = p[kRows], j["buffers"] = p[kBuffers], j["slots"] = p[kSlots];
    return j;
  };
}

}  // namespace

SearchSpace GroupedGemmKernel::search_space(const sim::HardwareSpec& hw) const {
  return gemm_search_space(s_, rows_, hw);
}

SearchSpace GroupedGemmSwigluKernel::search_space(const sim::HardwareSpec& hw) const {
  // The tiling's n1 counts intermediate columns (one gate and one up block per item), as the parser
  // reads it; the estimate is that of the W13 GEMM those items make, 2 x inter wide.
  GemmShape g = s_.gemm;
  g.n = s_.act.inter;
  SearchSpace sp = gemm_search_space(g, s_.rows, hw);
  sp.estimate = gemm_search_space(s_.gemm, s_.rows, hw).estimate;
  require_whole_l0_blocks(sp);
  add_vector_side(sp, t_, s_.rows, hw,
                  [s = s_, hw](const GroupedGemmSwigluTiling& t) { return grouped_gemm_swiglu_ub_bytes(s, t, hw); });
  return sp;
}

SearchSpace GroupedGemmFinalizeKernel::search_space(const sim::HardwareSpec& hw) const {
  SearchSpace sp = gemm_search_space(s_.gemm, rows_, hw);
  // (cols_per_tile, the accumulator chunk of the init and cast phases, stays the kernel's: those
  // phases stream tokens x hidden once and do not trade against the GEMM.)
  require_whole_l0_blocks(sp);
  add_vector_side(sp, t_, rows_, hw,
                  [s = s_, hw](const GroupedGemmFinalizeTiling& t) { return grouped_gemm_finalize_ub_bytes(s, t, hw); });
  return sp;
}

}  // namespace npusim::kernels
