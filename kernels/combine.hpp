// MoE combine (finalize routing; KERNELS.md 1.4 step 9, CANN MoeFinalizeRouting): for each token t,
//   out[t] = residual[t] + shared[t] + sum_j w[t, j] * Y[inv[t K + j]]
// where Y holds the expert outputs sorted by expert (stable in the flat index f = t K + j) and
// inv[f] is where flat entry f landed. V4 applies the routing weight before W2, so its combine is
// the plain sum (`weighted: false`). Residual and shared-expert inputs are optional.
//
// The routing (a seeded draw, as for the grouped GEMM) fixes inv, so the gathers are the actual
// scattered row reads: per (token, j) the scalar unit reads the index, then MTE2 fetches that
// row's slice. Lowering, per AIV: tokens split evenly over the cores, each token in column chunks
// of `cols_per_tile`; the vector unit accumulates in fp32 and casts once to the output type.
#pragma once

#include "kernels/kernel.hpp"
#include "kernels/routing.hpp"

namespace npusim::kernels {

struct CombineShape {
  int64_t tokens = 0, hidden = 0, topk = 0;
  sim::DType dtype = sim::DType::Bf16;
  bool weighted = true, shared = false, residual = false;
  std::vector<int32_t> expert_of;  // tokens x topk expert ids (the routing)
};

struct CombineTiling {
  int64_t cols_per_tile = 0;
  int buffers = 2;
  int cores = 0;
};

class CombineKernel : public Kernel {
 public:
  CombineKernel(CombineShape s, CombineTiling t, bool is_default);
  std::string op() const override { return "combine"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  double flops() const override;
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override;
  double estimated_instructions() const override;
  nlohmann::json details() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

  // Where flat entry f = t K + j sits among the expert-sorted rows (stable sort by expert).
  const std::vector<int32_t>& inverse() const { return inv_; }
  static int64_t ub_bytes_per_set(const CombineShape& s, int64_t cols);

 private:
  CombineShape s_;
  CombineTiling t_;
  bool default_;
  std::vector<int32_t> inv_;
};

CombineTiling default_combine_tiling(const CombineShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section (cols_per_tile, buffers, cores) over `base`.
CombineTiling parse_combine_tiling(const YamlNode& tiling, CombineTiling base);

std::unique_ptr<Kernel> make_combine(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                     const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
