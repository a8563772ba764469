// A Program is what a kernel template lowers to: one instruction stream per participating core
// (AIC or AIV), in the order the core's scalar unit dispatches them. Each instruction names the
// pipe that executes it; pipes run in order and synchronise only through explicit flags, exactly
// as Ascend C kernels do (SetFlag/WaitFlag, PipeBarrier, CrossCoreSetFlag/WaitFlag).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sim/types.hpp"

namespace npusim::sim {

enum class Op : uint8_t {
  Copy,       // data movement along a Path
  Mmad,       // cube matrix multiply-accumulate into L0C
  Vector,     // vector instruction on UB data
  SetFlag,    // on pipe `pipe`: signal event `id` to pipe `other` once prior work on `pipe` is done
  WaitFlag,   // on pipe `pipe`: block until pipe `other` has signalled event `id`
  Barrier,    // on pipe P: wait until prior P work completes; on S: wait until every pipe drains
  CrossSet,   // cross-core flag `id` with mode `mode` (0: all cores of a kind, 1: sibling AIV, 2: AIC<->AIV)
  CrossWait,  // block until cross-core flag `id` has been set for this core
  Scalar,     // the scalar unit computes for `m` cycles (loop bookkeeping, address arithmetic)
};

// A GM region touched by a copy: `rows` rows of `row_bytes` bytes, `stride` bytes apart.
struct GmRegion {
  uint64_t addr = 0;
  uint32_t rows = 0;
  uint32_t row_bytes = 0;
  uint64_t stride = 0;
  uint64_t bytes() const { return static_cast<uint64_t>(rows) * row_bytes; }
};

struct Instr {
  Op op{};
  Pipe pipe{};
  Path path{};          // Copy
  DType dtype{};        // Mmad (input dtype), Vector
  VecOp vop{};          // Vector
  Pipe other{};         // SetFlag / WaitFlag: the peer pipe
  uint8_t id = 0;       // flag / event id
  uint8_t mode = 0;     // CrossSet mode
  uint32_t m = 0, n = 0, k = 0;  // Mmad shape; Vector: m = element count
  uint32_t bytes = 0;            // Copy: total bytes moved
  GmRegion gm;                   // Copy with a GM side
};

// Where a work instruction reads and writes, for functional runs (timing never looks at it).
// A tile is `rows` x `cols` elements. Matrices in on-chip buffers are kept NZ-fractal, as the
// cube expects them: 16-column strips of `ld` rows (ld a multiple of 16), each strip row-major
// 16 elements wide, so element (r, c) sits at ((c / 16) * ld + r) * 16 + c % 16. ND is row-major
// with row stride `ld`; NdT is column-major (the transpose stored row-major); Flat is a vector.
enum class TileLayout : uint8_t { Nd, NdT, Nz, Flat };

struct TileRef {
  uint64_t offset = 0;  // bytes into the buffer (a GM address for GM)
  uint32_t ld = 0;
  uint32_t row0 = 0, col0 = 0;  // origin of the tile inside the matrix the layout describes
  TileLayout layout = TileLayout::Nd;
  DType dtype = DType::Fp16;
};

// The structured vector ops (vec_op_structured) read and write contiguous vectors at their
// TileRefs' offsets (the layout is not used), in the TileRef's dtype, with m = Instr::m:
//   reduce_sum / reduce_max  src: m values; cols = segment length s (0: m; m % s == 0); dst: m / s
//                            values, dst[i] = sum / max of segment i. The sum accumulates in double
//                            and rounds once to the dtype; a NaN in a segment gives NaN.
//   arange      dst[i] = scalar + i, i < m.
//   sort32      src: m fp32 keys, src2: m int32 indices, dst: m pairs (kSortPairBytes each: the key,
//               then its index). m is a multiple of 32; each block of 32 pairs is sorted by key,
//               descending, equal keys keeping their input order, NaN keys after every other key
//               (-inf included). Ascend documents no tie order (KERNELS.md 7.5): stability is the
//               assumption here.
//   mrgsort     src: m pairs -> dst: m pairs (buffers must not overlap). rows = row length r in
//               pairs (0: m), cols = chunk c (0: r). Within each row, every consecutive chunk of c
//               pairs (the last may be shorter) is sorted as sort32 sorts, stably: what merging the
//               sorted runs the chunk holds gives.
//   extract     src: m pairs -> dst: m values; scalar 0 takes the keys (dst fp32), 1 the indices
//               (dst int32). The 4-byte words are moved as they are.
//   gather      dst[i] = src[idx[i]], i < m; idx: int32 element offsets from src2, relative to
//               src.offset; cols = elements of the src region (0: m). The op may read that whole
//               region; an index outside it is a SimError naming the instruction.
//   scatter     dst[idx[i]] = src[i], i < m, in order (a repeated index keeps the last value);
//               idx from src2 relative to dst.offset; cols = elements of the dst region (0: m).
//               Elements not addressed keep their bytes.
//   histogram   src: m int32 values; dst: cols int32 counts, dst[b] = #{i : src[i] == b}; values
//               outside [0, cols) are not counted.
//   cumsum      dst[i] = src[0] + ... + src[i] (inclusive), accumulated in double, each output
//               rounded once to the dtype (int32 saturates; the device would wrap).
struct Operands {
  TileRef src, src2, dst;  // copy: src -> dst; MMAD: A (L0A), B (L0B) -> C (L0C); vector: src, src2 -> dst
  uint32_t rows = 0, cols = 0;  // copy tile shape (padding up to the NZ fractal is zero-filled); structured vector ops above
  // MMAD: add into C instead of overwriting it. Copy into GM: an atomic add (SetAtomicAdd), the
  // destination becoming dst + src, rounded once to the destination dtype.
  bool accumulate = false;
  // L0CToUb: which of the AIC's AIVs receives the tile (AIV aic * aiv_per_aic + sibling).
  uint8_t sibling = 0;
  // Vector ops with a scalar operand (muls, adds, maxs, mins, dup; arange's start, extract's choice):
  // the immediate `scalar`, or, when `scalar_from_src2`, the value at src2 that the scalar unit
  // loaded (a routing weight, say).
  double scalar = 0;
  bool scalar_from_src2 = false;
};

struct CoreProgram {
  CoreKind kind = CoreKind::Aic;
  int index = 0;  // AIC index, or AIV index (AIV 2i and 2i+1 pair with AIC i)
  std::vector<Instr> code;
  std::vector<Operands> operands;  // parallel to `code` in functional programs, else empty
};

struct Program {
  std::string name;
  std::vector<CoreProgram> cores;
  uint64_t gm_footprint_bytes = 0;  // highest GM address used + 1
  size_t instruction_count() const;
};

// Builds one core's stream with the vocabulary Ascend C kernels use.
// Operands are recorded only when the builder is functional (timing-only programs stay small).
class CoreBuilder {
 public:
  explicit CoreBuilder(CoreProgram& p, bool functional = false) : p_(p), functional_(functional) {}
  void copy(Path path, uint32_t bytes, GmRegion gm = {}, const Operands& ops = {});
  void mmad(uint32_t m, uint32_t n, uint32_t k, DType in, const Operands& ops = {});
  void vec(VecOp op, DType dt, uint32_t elems, const Operands& ops = {});
  void set_flag(Pipe src, Pipe dst, int id);
  void wait_flag(Pipe src, Pipe dst, int id);
  void barrier(Pipe p);
  void cross_set(Pipe p, int mode, int id);
  void cross_wait(Pipe p, int id);
  void scalar(uint32_t cycles);

 private:
  void push(const Instr& i, const Operands& ops = {});
  CoreProgram& p_;
  bool functional_;
};

}  // namespace npusim::sim
