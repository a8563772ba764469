// Elementwise vector template on the AIVs: out = op(x[, y]) over a flat tensor.
//
// Lowering, per AIV: the elements are split evenly over the cores in tiles of `tile_elems`; each
// tile runs copy-in (MTE2, GM->UB), compute (V, in instructions of at most 255 repeats of 256 B)
// and copy-out (MTE3, UB->GM), with `buffers` UB buffer sets so copy-in of the next tile overlaps
// compute and copy-out of this one (Ascend C TQue double buffering when buffers = 2).
#pragma once

#include "kernels/kernel.hpp"

namespace npusim::kernels {

struct ElementwiseShape {
  sim::VecOp op = sim::VecOp::Add;
  std::vector<int64_t> dims;
  int64_t elems = 0;
  sim::DType in = sim::DType::Fp16;
  sim::DType out = sim::DType::Fp16;
};

struct ElementwiseTiling {
  int64_t tile_elems = 0;
  int buffers = 2;
  int cores = 0;
};

class ElementwiseKernel : public Kernel {
 public:
  ElementwiseKernel(ElementwiseShape s, ElementwiseTiling t, bool is_default)
      : s_(std::move(s)), t_(t), default_(is_default) {}
  std::string op() const override { return std::string(sim::vec_op_name(s_.op)); }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  double flops() const override { return static_cast<double>(s_.elems); }
  double compulsory_bytes() const override;
  double estimated_instructions() const override {
    return double(ceil_div(s_.elems, t_.tile_elems)) * (10 + inputs());
  }
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override {
    return hw.aiv.vec_rate[static_cast<int>(s_.op)][static_cast<int>(s_.in)] * hw.num_aiv;
  }
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;
  const ElementwiseShape& shape() const { return s_; }
  const ElementwiseTiling& tiling() const { return t_; }

 private:
  int inputs() const { return sim::vec_op_sources(s_.op); }
  ElementwiseShape s_;
  ElementwiseTiling t_;
  bool default_;
};

// Default: every AIV, 2 buffers, and the largest tile (a multiple of 256 B worth of elements, at
// most 32 KiB per buffer) whose buffers fit UB.
ElementwiseTiling default_elementwise_tiling(const ElementwiseShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section (tile_elems, buffers, cores) over `base`.
ElementwiseTiling parse_elementwise_tiling(const YamlNode& tiling, ElementwiseTiling base);

std::unique_ptr<Kernel> make_elementwise(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                         const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
