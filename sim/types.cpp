#include "sim/types.hpp"

namespace npusim::sim {
namespace {

struct PathInfo {
  std::string_view name, label;
  Pipe pipe;
  bool reads_gm, writes_gm;
};

constexpr std::array<PathInfo, kNumPaths> kPaths{{
    {"gm_to_l1", "GM->L1", Pipe::Mte2, true, false},
    {"gm_to_l1_nd2nz", "GM->L1 (ND->NZ)", Pipe::Mte2, true, false},
    {"gm_to_ub", "GM->UB", Pipe::Mte2, true, false},
    {"gm_to_l0a", "GM->L0A", Pipe::Mte2, true, false},
    {"gm_to_l0b", "GM->L0B", Pipe::Mte2, true, false},
    {"l1_to_l0a", "L1->L0A", Pipe::Mte1, false, false},
    {"l1_to_l0b", "L1->L0B", Pipe::Mte1, false, false},
    {"l1_to_bt", "L1->BT", Pipe::Mte1, false, false},
    {"l1_to_fb", "L1->FB", Pipe::Mte1, false, false},
    {"l0c_to_gm", "L0C->GM", Pipe::Fixpipe, false, true},
    {"l0c_to_gm_nz2nd", "L0C->GM (NZ->ND)", Pipe::Fixpipe, false, true},
    {"l0c_to_l1", "L0C->L1", Pipe::Fixpipe, false, false},
    {"l0c_to_ub", "L0C->UB", Pipe::Fixpipe, false, false},
    {"ub_to_gm", "UB->GM", Pipe::Mte3, false, true},
    {"ub_to_ub", "UB->UB", Pipe::V, false, false},
    {"ub_to_l1", "UB->L1", Pipe::Mte3, false, false},
    {"l1_to_ub", "L1->UB", Pipe::Mte1, false, false},
}};

constexpr std::array<std::string_view, kNumPipes> kPipeNames{"S", "MTE2", "MTE1", "M", "FIXPIPE", "V", "MTE3"};
constexpr std::array<std::string_view, kNumDTypes> kDTypeNames{"fp16", "bf16", "fp32", "int8", "int32", "fp8"};
constexpr std::array<int, kNumDTypes> kDTypeBytes{2, 2, 4, 1, 4, 1};
constexpr std::array<std::string_view, kNumVecOps> kVecOpNames{
    "add", "sub", "mul", "max", "min", "muls", "adds", "maxs", "mins", "exp", "ln", "sqrt", "div", "relu", "cast", "dup",
    "reduce_sum", "reduce_max", "arange", "sort32", "mrgsort", "extract", "gather", "scatter", "histogram", "cumsum"};

}  // namespace

std::string_view pipe_name(Pipe p) { return kPipeNames[static_cast<int>(p)]; }
std::string_view core_kind_name(CoreKind k) { return k == CoreKind::Aic ? "aic" : "aiv"; }
std::string_view path_name(Path p) { return kPaths[static_cast<int>(p)].name; }
std::string_view path_label(Path p) { return kPaths[static_cast<int>(p)].label; }
Pipe path_pipe(Path p) { return kPaths[static_cast<int>(p)].pipe; }
bool path_reads_gm(Path p) { return kPaths[static_cast<int>(p)].reads_gm; }
bool path_writes_gm(Path p) { return kPaths[static_cast<int>(p)].writes_gm; }

std::optional<Path> path_from_name(std::string_view name) {
  for (int i = 0; i < kNumPaths; ++i)
    if (kPaths[i].name == name) return static_cast<Path>(i);
  return std::nullopt;
}

std::string_view dtype_name(DType d) { return kDTypeNames[static_cast<int>(d)]; }
int dtype_bytes(DType d) { return kDTypeBytes[static_cast<int>(d)]; }
std::optional<DType> dtype_from_name(std::string_view name) {
  for (int i = 0; i < kNumDTypes; ++i)
    if (kDTypeNames[i] == name) return static_cast<DType>(i);
  return std::nullopt;
}

num::Format number_format(DType d) {
  constexpr std::array<num::Format, kNumDTypes> kFormats{num::Format::Fp16, num::Format::Bf16, num::Format::Fp32,
                                                         num::Format::Int8, num::Format::Int32, num::Format::Fp8E4M3};
  return kFormats[static_cast<int>(d)];
}

std::string_view vec_op_name(VecOp op) { return kVecOpNames[static_cast<int>(op)]; }
std::optional<VecOp> vec_op_from_name(std::string_view name) {
  for (int i = 0; i < kNumVecOps; ++i)
    if (kVecOpNames[i] == name) return static_cast<VecOp>(i);
  return std::nullopt;
}
int vec_op_sources(VecOp op) {
  switch (op) {
    case VecOp::Add: case VecOp::Sub: case VecOp::Mul: case VecOp::Max: case VecOp::Min:
    case VecOp::Div: case VecOp::Sort32: case VecOp::Gather: case VecOp::Scatter:
      return 2;
    case VecOp::Dup: case VecOp::Arange:
      return 0;
    default:
      return 1;
  }
}
bool vec_op_structured(VecOp op) { return op > VecOp::Dup && op < VecOp::Count; }

}  // namespace npusim::sim
