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

struct CoreProgram {
  CoreKind kind = CoreKind::Aic;
  int index = 0;  // AIC index, or AIV index (AIV 2i and 2i+1 pair with AIC i)
  std::vector<Instr> code;
};

struct Program {
  std::string name;
  std::vector<CoreProgram> cores;
  uint64_t gm_footprint_bytes = 0;  // highest GM address used + 1
  size_t instruction_count() const;
};

// Builds one core's stream with the vocabulary Ascend C kernels use.
class CoreBuilder {
 public:
  explicit CoreBuilder(CoreProgram& p) : p_(p) {}
  void copy(Path path, uint32_t bytes, GmRegion gm = {});
  void mmad(uint32_t m, uint32_t n, uint32_t k, DType in);
  void vec(VecOp op, DType dt, uint32_t elems);
  void set_flag(Pipe src, Pipe dst, int id);
  void wait_flag(Pipe src, Pipe dst, int id);
  void barrier(Pipe p);
  void cross_set(Pipe p, int mode, int id);
  void cross_wait(Pipe p, int id);

 private:
  CoreProgram& p_;
};

}  // namespace npusim::sim
