// The cube->vector hand-off of fused kernels (a GEMM on the AIC feeding vector work on its AIVs),
// as catlass and CANN's fused MoE kernels build it:
//
//   AIC: for each of its items, the item's GEMM block(s) are written into slot n % slots, then
//        CrossCoreSetFlag(READY, mode 2) tells both AIVs; before writing item n >= slots, the AIC
//        waits for FREE from each AIV (they are done with the slot item n - slots used).
//   AIV k of the pair: for each item of its AIC, CrossCoreWaitFlag(READY), its share of the rows
//        (aiv_rows), then FREE (its own flag id) once nothing more reads the slot. An AIV with no
//        rows of an item still answers, so the counts stay balanced.
//
// Where a slot lives is the hardware's data path: on 2201 the cube cannot reach UB, so each AIC
// has `slots` slots in a GM workspace (FIXPIPE L0C->GM, then the AIVs' MTE2 GM->UB; the workspace
// stays in L2); on 3510 FIXPIPE writes each AIV's rows straight into slot n % slots of its UB.
#pragma once

#include <utility>

#include "kernels/gemm.hpp"

namespace npusim::kernels {

struct CubeVectorSlots {
  // Cross-core flag ids: READY (to both AIVs, each counts its own), and one FREE id per AIV of the
  // pair. A shared FREE id would be a race: an AIV with no rows answers early, and two of its
  // answers would pass for both AIVs' while the other still reads the slot.
  static constexpr int kReady = 0;
  static int free_flag(int aiv) { return 1 + aiv; }
  static constexpr int kFlags = 3;  // ids this hand-off uses (2 AIVs per AIC); kernels take theirs after

  bool via_ub = false;
  int slots = 2;
  int aiv_per_aic = 2;
  uint64_t ws = 0, ws_slot_bytes = 0;  // GM path: slot (core, n) at ws + (core * slots + n % slots) * ws_slot_bytes
  uint64_t ub_slot_bytes = 0;          // UB path: slot n at (n % slots) * ub_slot_bytes of each AIV's UB

  // The path the hardware offers, `slots` deep.
  static CubeVectorSlots for_hardware(const sim::HardwareSpec& hw, int slots);

  uint64_t ws_slot(int core, int64_t n) const { return ws + (static_cast<uint64_t>(core) * slots + n % slots) * ws_slot_bytes; }
  uint64_t ub_slot(int64_t n) const { return static_cast<uint64_t>(n % slots) * ub_slot_bytes; }
  // Rows [begin, end) of an item's mb rows that AIV k of the pair takes (the first gets the larger share).
  std::pair<int64_t, int64_t> aiv_rows(int64_t mb, int k) const;
  int64_t max_aiv_rows(int64_t m1) const { return ceil_div(m1, aiv_per_aic); }

  // The AIC's before/after hooks of every item (FREE waits, READY set).
  void install(GemmBlocks& blocks) const;
  // Writes an mb x nb accumulator tile (`dt` out of L0C) into slot n: on the GM path at column
  // `ws_col` of the AIC's workspace slot with row stride `ws_ld`; on the UB path each AIV's rows,
  // packed nb wide, at `ub_offset` into its slot.
  void write_block(sim::CoreBuilder& b, int core, int64_t n, const sim::TileRef& c_tile, int64_t mb, int64_t nb,
                   sim::DType dt, int64_t ws_col, int64_t ws_ld, uint64_t ub_offset) const;
  // After the GEMM: each AIC takes back the FREE sets of its last items (no flag left pending).
  void drain(sim::Program& prog, int cores, int64_t items, bool functional) const;
  // Checks the flags, pending-set limit and paths the hand-off needs.
  Status check(const sim::HardwareSpec& hw) const;
};

}  // namespace npusim::kernels
