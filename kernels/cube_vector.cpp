#include "kernels/cube_vector.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace npusim::kernels {

using sim::Path;
using sim::Pipe;

CubeVectorSlots CubeVectorSlots::for_hardware(const sim::HardwareSpec& hw, int slots) {
  CubeVectorSlots s;
  s.via_ub = hw.path(Path::L0CToUb).available;
  s.slots = slots;
  s.aiv_per_aic = std::max(1, hw.aiv_per_aic);
  return s;
}

std::pair<int64_t, int64_t> CubeVectorSlots::aiv_rows(int64_t mb, int k) const {
  const int64_t h = max_aiv_rows(mb), begin = std::min(mb, k * h);
  return {begin, std::min(mb, begin + h)};
}

void CubeVectorSlots::install(GemmBlocks& blocks) const {
  const int slots_ = slots, aivs = aiv_per_aic;
  blocks.before_item = [slots_, aivs](sim::CoreBuilder& b, int, int64_t n) {
    if (n >= slots_)
      for (int k = 0; k < aivs; ++k) b.cross_wait(Pipe::Fixpipe, free_flag(k));
  };
  blocks.after_item = [](sim::CoreBuilder& b, int, int64_t) { b.cross_set(Pipe::Fixpipe, 2, kReady); };
}

void CubeVectorSlots::write_block(sim::CoreBuilder& b, int core, int64_t n, const sim::TileRef& c_tile, int64_t mb,
                                  int64_t nb, sim::DType dt, int64_t ws_col, int64_t ws_ld, uint64_t ub_offset) const {
  const int64_t e = sim::dtype_bytes(dt);
  if (!via_ub) {
    const uint64_t dst = ws_slot(core, n) + static_cast<uint64_t>(ws_col * e);
    sim::Operands o;
    o.rows = uint32_t(mb), o.cols = uint32_t(nb), o.src = c_tile;
    o.dst = {dst, uint32_t(ws_ld), 0, 0, sim::TileLayout::Nd, dt};
    b.copy(Path::L0CToGmNz2Nd, uint32_t(mb * nb * e), sim::GmRegion{dst, uint32_t(mb), uint32_t(nb * e), uint64_t(ws_ld * e)}, o);
    return;
  }
  for (int k = 0; k < aiv_per_aic; ++k) {
    const auto [r0, r1] = aiv_rows(mb, k);
    if (r1 <= r0) continue;
    sim::Operands o;
    o.rows = uint32_t(r1 - r0), o.cols = uint32_t(nb), o.src = c_tile, o.src.row0 = uint32_t(r0);
    o.dst = {ub_slot(n) + ub_offset, uint32_t(nb), 0, 0, sim::TileLayout::Nd, dt};
    o.sibling = static_cast<uint8_t>(k);
    b.copy(Path::L0CToUb, uint32_t((r1 - r0) * nb * e), {}, o);
  }
}

void CubeVectorSlots::drain(sim::Program& prog, int cores, int64_t items, bool functional) const {
  for (int c = 0; c < cores; ++c) {
    const int64_t mine = (items - c + cores - 1) / cores;
    sim::CoreBuilder b(prog.cores[static_cast<size_t>(c)], functional);
    for (int64_t i = 0; i < std::min<int64_t>(mine, slots); ++i)
      for (int k = 0; k < aiv_per_aic; ++k) b.cross_wait(Pipe::Fixpipe, free_flag(k));
  }
}

Status CubeVectorSlots::check(const sim::HardwareSpec& hw) const {
  if (hw.aiv_per_aic < 1 || hw.aiv_per_aic > 2 || hw.sync.cross_flag_ids < kFlags + 2)
    return Status::bad("hardware", fmt::format("a cube->vector pipeline needs 1 or 2 AIVs per AIC and {} cross-core flags",
                                               kFlags + 2));
  if (slots < 1 || slots > hw.sync.cross_max_pending)
    return Status::bad("tiling.slots", fmt::format("slots must be 1..{} (an AIC holds at most {} pending sets of a flag), found {}",
                                                   hw.sync.cross_max_pending, hw.sync.cross_max_pending, slots));
  if (!via_ub && (!hw.path(Path::GmToUb).available || !hw.path(Path::UbToGm).available))
    return Status::bad("hardware", "the preset has neither L0C->UB nor the GM<->UB paths a GM workspace needs");
  return Status::good();
}

}  // namespace npusim::kernels
