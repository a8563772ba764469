// Functional execution: the effects of a timed program's work instructions replayed on real bytes
// (GM plus each core's L1, L0A, L0B, L0C and UB), in the order the timing run moved their data:
// an instruction reads its inputs when its data phase begins and writes its outputs when it
// completes. A program whose flags do not order a producer before its consumer therefore reads
// stale data here, as it would on the chip.
//
// Semantics: copies move tiles between layouts (ND, column-major, NZ fractal), zero-filling NZ
// padding, and cast when source and destination dtypes differ (FIXPIPE: round to nearest even);
// an accumulating copy into GM adds to what is there (atomic add, one rounding); L0C->UB writes
// the UB of the AIC's sibling AIV the operands name, UB->L1 the L1 of the AIV's own AIC;
// MMAD multiplies the L0A and L0B tiles and accumulates in fp32 into L0C (int8 inputs accumulate
// exactly into int32), one instruction at a time in program order; vector instructions compute in
// double and round once to the instruction's dtype (exactly rounded, where the hardware's
// transcendental units may be off by an ulp).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "sim/engine.hpp"

namespace npusim::sim {

enum class Buffer : uint8_t { Gm, L1, L0A, L0B, L0C, Ub, Count };

class FunctionalMemory {
 public:
  FunctionalMemory(const HardwareSpec& hw, const Program& prog);
  // Bytes a functional run of `prog` allocates (GM image plus every core's buffers).
  static uint64_t bytes_needed(const HardwareSpec& hw, const Program& prog);

  std::vector<uint8_t>& gm() { return gm_; }
  const std::vector<uint8_t>& gm() const { return gm_; }
  // Pointer to byte `offset` of a buffer; throws SimError unless [offset, end) lies inside it.
  uint8_t* buffer(uint32_t unit, Buffer b, uint64_t offset, uint64_t end);
  // The unit of the program that is AIV `sibling` of the AIC at `aic_unit` (L0C->UB copies).
  uint32_t sibling_unit(uint32_t aic_unit, int sibling) const;
  // The unit of the program that is the AIC the AIV at `aiv_unit` belongs to (UB->L1 copies).
  uint32_t parent_unit(uint32_t aiv_unit) const;

 private:
  std::vector<uint8_t> gm_;
  std::vector<int> aiv_unit_;  // AIV index -> program unit (-1: not in the program)
  std::vector<int> aic_unit_;  // AIC index -> program unit (-1: not in the program)
  std::vector<int> core_index_;  // program unit -> its core index
  int aiv_per_aic_ = 0;
  std::vector<std::array<std::vector<uint8_t>, static_cast<int>(Buffer::Count)>> local_;
};

// Replays `timed.work` (from simulate() with record_work) on `mem`. Throws SimError when an
// operand falls outside its buffer.
void run_functional(const Program& prog, const SimResult& timed, FunctionalMemory& mem);

}  // namespace npusim::sim
