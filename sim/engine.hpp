// The event-driven timing engine. simulate() runs a Program on a HardwareSpec and returns cycles,
// per-pipe busy time, traffic per memory level and (optionally) trace slices.
//
// Model, per core: the scalar unit dispatches instructions in program order into bounded per-pipe
// queues (a full queue stalls it). Each pipe runs in order. An instruction issues when its pipe's
// issue slot is free and its waits are satisfied; it then starts up (pipelined: the next
// instruction may issue `gap` cycles later) and moves data in the pipe's data phase, which is
// serialised per pipe. A queue slot is freed when its instruction's data phase begins. SetFlag and
// PipeBarrier wait until earlier work on their pipe completes. GM transfers go through the shared
// L2 and HBM links (memory.hpp), so their data phase stretches when other cores move data.
//
// The engine is event-driven: work local to a core is computed ahead as far as it is known;
// anything touching shared state (GM transfers, cross-core flags) happens at its simulated time.
// A program that can never finish raises SimError naming each stuck core, pipe and flag.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "sim/hardware_spec.hpp"
#include "sim/program.hpp"

namespace npusim::sim {

struct PipeStats {
  double busy_cycles = 0;  // union of [issue, completion] of compute and copy instructions
  uint64_t instructions = 0;
  uint64_t bytes = 0;
};

struct UnitStats {
  CoreKind kind = CoreKind::Aic;
  int index = 0;
  double finish_cycles = 0;
  std::array<PipeStats, kNumPipes> pipes{};
};

struct MemoryStats {
  uint64_t gm_read_bytes = 0;     // requested by transfers
  uint64_t gm_write_bytes = 0;
  uint64_t l2_read_lines = 0;
  uint64_t l2_read_hit_lines = 0;
  uint64_t l2_write_lines = 0;
  uint64_t hbm_read_bytes = 0;    // L2 read misses (line granularity)
  uint64_t hbm_write_bytes = 0;   // dirty lines written back during the kernel
  uint64_t hbm_flush_bytes = 0;   // dirty lines still in L2 at the end (written back later)
  double l2_hit_rate() const {
    return l2_read_lines ? static_cast<double>(l2_read_hit_lines) / l2_read_lines : 0.0;
  }
};

struct TraceSlice {
  uint32_t unit;  // index into SimResult::units
  Pipe pipe;
  Op op;
  uint8_t sub;  // Path for copies, VecOp for vector, DType for MMAD
  double start, end;
};

// When a work instruction moved its data: inputs are read at `start` (the data phase begins),
// outputs written at `end`. The functional pass replays effects in this order.
struct WorkRecord {
  uint32_t unit;
  uint32_t pc;
  double start, end;
};

struct SimOptions {
  bool trace = false;
  bool record_work = false;  // fill SimResult::work (functional runs)
};

struct SimResult {
  double cycles = 0;
  uint64_t instructions = 0;
  uint64_t events = 0;
  std::vector<UnitStats> units;
  MemoryStats mem;
  std::array<uint64_t, kNumPaths> path_bytes{};
  std::vector<TraceSlice> slices;
  std::vector<WorkRecord> work;
};

// Checks that every instruction is legal on this hardware (pipes of the core kind, available
// paths, supported dtypes, flag ids in range); throws SimError naming the core and instruction.
void check_program(const HardwareSpec& hw, const Program& prog);

SimResult simulate(const HardwareSpec& hw, const Program& prog, const SimOptions& opt = {});

}  // namespace npusim::sim
