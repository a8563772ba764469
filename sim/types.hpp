// Vocabulary shared by the hardware description and programs: pipes, data paths, data types and
// vector operations. Enumerations are dense so hot paths index arrays with them.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "common/numerics.hpp"

namespace npusim::sim {

// In-order instruction pipes. AIC: S, MTE2, MTE1, M, FIXPIPE. AIV: S, MTE2, V, MTE3.
enum class Pipe : uint8_t { S, Mte2, Mte1, M, Fixpipe, V, Mte3, Count };
inline constexpr int kNumPipes = static_cast<int>(Pipe::Count);
std::string_view pipe_name(Pipe p);

enum class CoreKind : uint8_t { Aic, Aiv };
std::string_view core_kind_name(CoreKind k);

// Data paths an MTE or FIXPIPE instruction can take. Names follow HARDWARE.md / calibration/.
enum class Path : uint8_t {
  GmToL1,        // MTE2, ND copy
  GmToL1Nd2Nz,   // MTE2, ND -> NZ fractal conversion on the fly
  GmToUb,        // MTE2 (AIV)
  GmToL0A,       // MTE2 (2201 only)
  GmToL0B,       // MTE2 (2201 only)
  L1ToL0A,       // MTE1
  L1ToL0B,       // MTE1
  L1ToBt,        // MTE1
  L1ToFb,        // MTE1
  L0CToGm,       // FIXPIPE, NZ kept
  L0CToGmNz2Nd,  // FIXPIPE, NZ -> ND on the fly
  L0CToL1,       // FIXPIPE
  L0CToUb,       // FIXPIPE (3510 only)
  UbToGm,        // MTE3 (AIV)
  UbToUb,        // V-side copy
  UbToL1,        // MTE3 (3510 only)
  L1ToUb,        // MTE1 (3510 only)
  Count
};
inline constexpr int kNumPaths = static_cast<int>(Path::Count);
std::string_view path_name(Path p);           // "gm_to_l1" (config key)
std::string_view path_label(Path p);          // "GM->L1" (calibration table name)
std::optional<Path> path_from_name(std::string_view name);
Pipe path_pipe(Path p);
bool path_reads_gm(Path p);
bool path_writes_gm(Path p);

enum class DType : uint8_t { Fp16, Bf16, Fp32, Int8, Int32, Fp8, Count };  // Fp8: OCP E4M3FN
inline constexpr int kNumDTypes = static_cast<int>(DType::Count);
std::string_view dtype_name(DType d);
std::optional<DType> dtype_from_name(std::string_view name);
int dtype_bytes(DType d);
num::Format number_format(DType d);  // the bit-exact format functional runs use for `d`

// Vector instructions with calibrated throughput. Binary ops read two sources. The ops from
// ReduceSum on (reductions, index generation, sorting, data-dependent moves, scans) give operands
// their own meaning, documented with Operands in program.hpp; their timing is the same start-up +
// ceil(m / rate), with m the element count named there.
enum class VecOp : uint8_t {
  Add, Sub, Mul, Max, Min, Muls, Adds, Maxs, Mins, Exp, Ln, Sqrt, Div, Relu, Cast, Dup,
  ReduceSum, ReduceMax, Arange, Sort32, MrgSort, Extract, Gather, Scatter, Histogram, Cumsum,
  Count
};
inline constexpr int kNumVecOps = static_cast<int>(VecOp::Count);
std::string_view vec_op_name(VecOp op);
std::optional<VecOp> vec_op_from_name(std::string_view name);
int vec_op_sources(VecOp op);  // UB operands read (src, src2); the scalar of Dup and Arange is not one
// True for the ops after Dup, whose operands do not follow the elementwise src/src2 -> dst form.
bool vec_op_structured(VecOp op);
// Bytes of one sort element: an fp32 key followed by its int32 index (Sort32, MrgSort, Extract).
inline constexpr int kSortPairBytes = 8;

}  // namespace npusim::sim
