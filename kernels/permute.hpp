// MoE permute (KERNELS.md 1.4 step 4; the gather half of CANN MoeInitRouting): the expert-sorted
// rows Xs[i] = x[perm[i] div K], and with `weights` the routing weight of each sorted row,
// row_weights[i] = w[perm[i]] (V4 scales the SwiGLU output by it, before W2).
//
// perm is the stable sort of the flat entries f = t K + j by expert. The kernel is lowered with
// the routing known: its scalar unit reads the expanded row index to address each gather. Per
// AIV, a contiguous range of sorted rows; per row, column chunks of `cols_per_tile` move GM ->
// UB -> GM through `buffers` UB slots (MTE2 and MTE3 overlap); a row's weight is a 4-byte GM ->
// UB copy, and each slot's weights leave in one UB -> GM copy.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "kernels/kernel.hpp"

namespace npusim::kernels {

struct PermuteShape {
  int64_t tokens = 0, hidden = 0, topk = 0;
  sim::DType dtype = sim::DType::Bf16;
  bool weights = false;
  std::vector<int32_t> expert_of;  // tokens x topk expert ids (the routing)
};

struct PermuteTiling {
  int64_t rows_per_tile = 8;  // sorted rows per UB slot
  int64_t cols_per_tile = 0;  // columns per copy
  int buffers = 2;
  int cores = 0;
};

class PermuteKernel : public Kernel {
 public:
  PermuteKernel(PermuteShape s, PermuteTiling t, bool is_default);
  std::string op() const override { return "permute"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                 const std::vector<std::vector<double>>& device) const override;
  double flops() const override { return 0; }
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override;
  double estimated_instructions() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

  static int64_t ub_bytes_per_set(const PermuteShape& s, const PermuteTiling& t);

 private:
  PermuteShape s_;
  PermuteTiling t_;
  bool default_;
  std::vector<int32_t> perm_;  // sorted row -> flat entry
};

PermuteTiling default_permute_tiling(const PermuteShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section (rows_per_tile, cols_per_tile, buffers, cores) over `base`.
PermuteTiling parse_permute_tiling(const YamlNode& tiling, PermuteTiling base);

std::unique_ptr<Kernel> make_permute(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                     const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
