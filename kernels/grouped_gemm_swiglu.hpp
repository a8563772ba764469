// GMM1 + SwiGLU fused (KERNELS.md 1.4 steps 6-7; CANN GroupedMatmulSwiglu-style): per expert,
// H = X_e W13_e on the cube, A = silu(H_gate) * H_up on the vector units, without H going through
// HBM as a tensor. The cube and the vector cores run as a pipeline:
//
//   AIC i: for each of its items (rows of one expert x `n1` columns of the intermediate dimension)
//          the GEMM blocks of the gate columns and of the matching up columns, written into one of
//          `slots` slots, then CrossCoreSetFlag(READY) to its two AIVs. Before reusing a slot it
//          waits for both AIVs' FREE.
//   AIV 2i+k: for each item of AIC i, waits READY, runs SwiGLU on its half of the item's rows
//          (`rows_per_tile` at a time, double-buffered), signals FREE once it no longer needs the
//          slot, and writes A.
//
// Where the slot lives is the hardware's data path: on 2201 (910B/910C) the cube cannot reach UB,
// so the slot is a GM workspace per AIC (FIXPIPE L0C->GM, then AIV MTE2 GM->UB; the workspace stays
// in L2); on 3510 (950) FIXPIPE writes each AIV's half of the block straight into its UB (L0C->UB).
// H is rounded to the GEMM output type on the way out of L0C, as the unfused chain rounds it, so
// both plans give the same bits.
#pragma once

#include "kernels/gemm.hpp"
#include "kernels/swiglu.hpp"

namespace npusim::kernels {

struct GroupedGemmSwigluShape {
  GemmShape gemm;             // n = 2 x inter (W13's gate and up columns), k = hidden; m unused
  std::vector<int64_t> rows;  // rows per expert
  SwigluShape act;            // rows = total rows, inter, clamp, halves, row weights; in = gemm.out
};

struct GroupedGemmSwigluTiling {
  GemmTiling gemm;            // n1: intermediate columns per item (one gate and one up block)
  int64_t rows_per_tile = 8;  // AIV sub-tile
  int buffers = 2;            // AIV buffer sets
  int slots = 2;              // items in flight between an AIC and its AIVs
};

class GroupedGemmSwigluKernel : public Kernel {
 public:
  GroupedGemmSwigluKernel(GroupedGemmSwigluShape s, GroupedGemmSwigluTiling t, bool is_default)
      : s_(std::move(s)), t_(t), default_(is_default) {}
  std::string op() const override { return "grouped_gemm_swiglu"; }
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
  // The GEMM space over the intermediate columns (n1: gate columns of an item), then the AIVs'
  // rows_per_tile, buffers and the hand-off's slots.
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

 private:
  GroupedGemmSwigluShape s_;
  GroupedGemmSwigluTiling t_;
  bool default_;
};

// UB bytes one AIV needs: the slots (when the hardware has L0C->UB) and the buffer sets.
int64_t grouped_gemm_swiglu_ub_bytes(const GroupedGemmSwigluShape& s, const GroupedGemmSwigluTiling& t,
                                     const sim::HardwareSpec& hw);

GroupedGemmSwigluTiling default_grouped_gemm_swiglu_tiling(const GroupedGemmSwigluShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section over `base`: the GEMM keys (as gemm, over the intermediate columns; cores
// recomputed when absent), rows_per_tile, buffers, slots.
GroupedGemmSwigluTiling parse_grouped_gemm_swiglu_tiling(const YamlNode& tiling, GroupedGemmSwigluTiling base,
                                                          const GroupedGemmSwigluShape& s, const sim::HardwareSpec& hw);

std::unique_ptr<Kernel> make_grouped_gemm_swiglu(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                                 const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
