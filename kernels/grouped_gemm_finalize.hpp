// GMM2 + finalize fused (KERNELS.md 1.4 steps 8-9; CANN GroupedMatmulFinalizeRouting): per expert
// Y = A_e W2_e on the cube, and each expert row, scaled by its routing weight (V3; V4 applied it
// before W2), atomically added into its token's row of the output, which starts as residual +
// shared expert. Y never goes through HBM as a tensor.
//
// Lowering (the cube->vector hand-off is cube_vector.hpp):
//   1. every AIV initialises its share of the tokens' fp32 accumulator rows (GM workspace) to
//      residual + shared (or zero); an all-AIV barrier (CrossCoreSetFlag mode 0) ends the phase;
//   2. the AICs compute the GEMM blocks (rows of one expert x n1 output columns) in fp32 into the
//      slots; AIV k of the pair takes its share of each block's rows, `rows_per_tile` at a time:
//      the scalar unit reads each row's flat index (and MTE2 fetches its weight), the vector unit
//      scales the rows, and MTE3 adds each row into its token's accumulator row (atomic add);
//   3. a second all-AIV barrier, then each AIV casts its tokens' rows to the output type.
// Accumulation is fp32 throughout (Y is not rounded to bf16 as the unfused chain rounds it); the
// order of the atomic adds to one token follows the simulated time, as it would on the chip.
#pragma once

#include "kernels/gemm.hpp"

namespace npusim::kernels {

struct GroupedGemmFinalizeShape {
  GemmShape gemm;                  // n = hidden, k = inter; out = fp32 (the accumulator leaves L0C unrounded)
  int64_t tokens = 0, topk = 0, experts = 0;
  sim::DType out = sim::DType::Bf16;
  bool weighted = true, shared = false, residual = false;
  std::vector<int32_t> expert_of;  // tokens x topk (the routing the expert rows follow)
};

struct GroupedGemmFinalizeTiling {
  GemmTiling gemm;
  int64_t rows_per_tile = 16;   // AIV sub-tile of a block
  int64_t cols_per_tile = 0;    // accumulator chunk of the init and cast phases
  int buffers = 2;
  int slots = 2;
};

class GroupedGemmFinalizeKernel : public Kernel {
 public:
  GroupedGemmFinalizeKernel(GroupedGemmFinalizeShape s, GroupedGemmFinalizeTiling t, bool is_default);
  std::string op() const override { return "grouped_gemm_finalize"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  double flops() const override;
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override {
    return 2.0 * hw.cube_macs_per_cycle(s_.gemm.in) * hw.num_aic;
  }
  double estimated_instructions() const override;
  nlohmann::json details() const override;
  // The GEMM space over the expert rows, then the AIVs' rows_per_tile, cols_per_tile (the init
  // and cast phases), buffers and the hand-off's slots.
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;
  const std::vector<int64_t>& group_rows() const { return rows_; }

 private:
  GroupedGemmFinalizeShape s_;
  GroupedGemmFinalizeTiling t_;
  bool default_;
  std::vector<int64_t> rows_;   // rows per expert
  std::vector<int32_t> perm_;   // sorted row -> flat entry t K + j (stable by expert)
};

// UB bytes of one AIV buffer set, and of the L0C->UB slots (when the hardware has that path).
int64_t grouped_gemm_finalize_ub_bytes(const GroupedGemmFinalizeShape& s, const GroupedGemmFinalizeTiling& t,
                                       const sim::HardwareSpec& hw);

GroupedGemmFinalizeTiling default_grouped_gemm_finalize_tiling(const GroupedGemmFinalizeShape& s,
                                                               const sim::HardwareSpec& hw);

// A `tiling:` section over `base`: the GEMM keys (as gemm; cores recomputed when absent),
// rows_per_tile, cols_per_tile, buffers, slots.
GroupedGemmFinalizeTiling parse_grouped_gemm_finalize_tiling(const YamlNode& tiling, GroupedGemmFinalizeTiling base,
                                                              const GroupedGemmFinalizeShape& s, const sim::HardwareSpec& hw);

std::unique_ptr<Kernel> make_grouped_gemm_finalize(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                                   const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
