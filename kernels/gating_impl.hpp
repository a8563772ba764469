// What the gating kernel's lowering (gating.cpp) and its references (gating_reference.cpp) share:
// the padded row layout and which steps a stage runs. Internal to the kernel; gating.hpp is its API.
#pragma once

#include <limits>

#include "kernels/gating.hpp"

namespace npusim::kernels::gating_impl {

inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr int64_t kMaxRepeat = 255, kRepeatBytes = 256;
inline constexpr int64_t kWordsPerInstr = kMaxRepeat * kRepeatBytes / 4;  // 4-byte elements one instruction reaches
inline constexpr int64_t kPairsPerInstr = kMaxRepeat * kRepeatBytes / sim::kSortPairBytes;
inline constexpr int64_t kMaxPaddedRow = 2048;  // MoeGatingTopK: E/G aligned to 32, times G, <= 2048 (KERNELS.md 4.1)
inline constexpr double kSoftplusLinear = 20;   // softplus(z) = z above this (V4)

// The padded row layout (see the header).
struct Dims {
  int64_t seg, seg_len, seg_pad, row, gpad;
  bool col_is_expert;  // a key's column is its expert id (no padding inside the row)
};

inline Dims dims(const GatingShape& s) {
  Dims d;
  d.seg = s.grouped() ? s.groups : 1;
  d.seg_len = s.experts / d.seg;
  d.seg_pad = round_up(d.seg_len, 32);
  d.row = d.seg * d.seg_pad;
  d.gpad = round_up(s.groups, 32);
  d.col_is_expert = d.seg == 1 || d.seg_len == d.seg_pad;
  return d;
}

inline bool scoring(const GatingShape& s) { return s.stage == GateStage::Fused || s.stage == GateStage::Score; }
inline bool selecting(const GatingShape& s) { return s.stage == GateStage::Fused || s.stage == GateStage::Select; }
inline bool normalizing(const GatingShape& s) { return s.stage == GateStage::Fused || s.stage == GateStage::Normalize; }
inline bool sorting(const GatingShape& s) { return selecting(s) && !s.hash_vocab; }
// The keys get their own tile (c = s + key base) unless they are the scores as they stand.
inline bool separate_keys(const GatingShape& s) {
  return sorting(s) && (s.bias || s.grouped() || dims(s).row > s.experts);
}

}  // namespace npusim::kernels::gating_impl
