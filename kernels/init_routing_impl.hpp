// What init-routing's kernel interface (init_routing.cpp) and its lowering (init_routing_lower.cpp)
// share: limits, the capacity-mode predicates and the UB layout. Internal to the kernel.
#pragma once

#include "kernels/init_routing.hpp"

namespace npusim::kernels::init_routing_impl {

using ref::CapacityMode;
using ref::PadMode;
using sim::DType;
using sim::TileLayout;


inline constexpr int64_t kMaxChunk = 255 * 32;      // sort32 covers at most 255 repeats of 32 pairs
inline constexpr int64_t kMaxVecBytes = 255 * 256;  // an elementwise instruction: 255 repeats of 256 bytes
inline constexpr int64_t kTableBlockBytes = 8192;   // count-table rows core 0 loads at a time
inline constexpr int kPadEvent = 1;  // V -> MTE3 event of the zero tile (0 orders the sort passes)

inline bool drops(const InitRoutingShape& s) {
  return s.routing.mode != CapacityMode::Dropless;
}
inline bool by_probability(const InitRoutingShape& s) {
  return s.routing.mode == CapacityMode::Probability;
}
inline int64_t entries(const InitRoutingShape& s) {
  return s.tokens * s.topk;
}

// UB byte offsets of everything the lowering keeps on chip (32-byte aligned regions).
struct UbLayout {
  uint64_t keys, idx, p0, p1, sorted, offs, dest, flat, wts;  // chunk-sized sort buffers
  uint64_t hist, acc, kept, sums, block;                      // per-expert counts
  uint64_t stage, zero, tile;                                 // row gather slots, zero tile
  int64_t block_rows;
  uint64_t end;
};


inline sim::TileRef flat(uint64_t offset, DType dt) {
  return {offset, 0, 0, 0, TileLayout::Flat, dt};
}

UbLayout ub_layout(const InitRoutingShape& s, const InitRoutingTiling& t);

}  // namespace npusim::kernels::init_routing_impl
