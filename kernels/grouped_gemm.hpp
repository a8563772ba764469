// Grouped GEMM (MoE experts; catlass/CANN GroupedMatmul with a group list over M): for each group
// g, C[rows of g] = A[rows of g] x B_g, with the groups' rows stacked in A and C (tokens sorted by
// expert) and one K x N weight per group. Rows per group come from `group_rows` or from a seeded
// `routing` draw, so the time follows the actual token counts: a hot expert makes its cores the
// long pole, an empty expert costs only its scalar bookkeeping (hardware scalar.group_cycles).
//
// Lowering: the GEMM block lowering (gemm.hpp) over the blocks of every non-empty group, each
// group's blocks in swizzled order, dealt round-robin to the cores across groups.
#pragma once

#include "kernels/gemm.hpp"

namespace npusim::kernels {

class GroupedGemmKernel : public Kernel {
 public:
  GroupedGemmKernel(GemmShape shape, std::vector<int64_t> group_rows, GemmTiling tiling, bool tiling_default)
      : s_(shape), rows_(std::move(group_rows)), t_(tiling), default_(tiling_default) {}
  std::string op() const override { return "grouped_gemm"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  double flops() const override { return 2.0 * total_rows() * s_.n * s_.k; }
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override {
    return 2.0 * hw.cube_macs_per_cycle(s_.in) * hw.num_aic;
  }
  double estimated_instructions() const override;
  nlohmann::json details() const override;
  // The GEMM space over the groups' rows (gemm_search_space); the tiling is parsed as a GEMM's.
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> reduced_for_validation() const override;
  int64_t total_rows() const;
  const std::vector<int64_t>& group_rows() const { return rows_; }

 private:
  GemmShape s_;  // m is unused: rows come per group
  std::vector<int64_t> rows_;
  GemmTiling t_;
  bool default_;
};

GemmTiling default_grouped_gemm_tiling(const GemmShape& s, const std::vector<int64_t>& rows,
                                      const sim::HardwareSpec& hw);

// Calls f(group, row0, mb, col0, nb) for every C block of every non-empty group of a [rows] x n
// grouped output, each group's blocks in the tiling's swizzled order.
void for_each_group_block(const std::vector<int64_t>& rows, int64_t n, const GemmTiling& t,
                          const std::function<void(size_t, int64_t, int64_t, int64_t, int64_t)>& f);

// Rows per group from `group_rows` or a seeded `routing` draw (the keys of a grouped GEMM).
std::vector<int64_t> parse_group_rows(const YamlNode& workload);

std::unique_ptr<Kernel> make_grouped_gemm(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                          const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
