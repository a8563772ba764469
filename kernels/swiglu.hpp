// SwiGLU on the AIVs (KERNELS.md 1.3, 1.4 step 7, 2.3): out = silu(g) * u over rows of [g | u]
// (half order a parameter), computed in fp32 and cast once to the output type; with V4's clamp
// L: g = min(g, L), u = clamp(u, -L, L); with `row_weights`, each row is scaled by its routing
// weight (V4 applies the weight before W2).
//
// Lowering, per AIV: rows are split evenly over the cores and processed `rows_per_tile` at a time:
// MTE2 copies the g and u halves (strided rows) and the tile's weights into UB; the vector unit
// casts to fp32, clamps (mins / maxs), forms silu(g) = g / (1 + exp(-g)) (muls, exp, adds, div),
// multiplies by u, scales each row by its weight (a scalar the scalar unit loads from UB, then
// muls), and casts to the output type; MTE3 writes the rows. `buffers` UB sets overlap copy-in,
// compute and copy-out.
#pragma once

#include <optional>

#include "kernels/kernel.hpp"

namespace npusim::kernels {

struct SwigluShape {
  int64_t rows = 0, inter = 0;
  sim::DType in = sim::DType::Bf16, out = sim::DType::Bf16;
  std::optional<double> clamp;
  bool gate_first = true;
  bool row_weights = false;
};

struct SwigluTiling {
  int64_t rows_per_tile = 1;
  int buffers = 2;
  int cores = 0;
};

class SwigluKernel : public Kernel {
 public:
  SwigluKernel(SwigluShape s, SwigluTiling t, bool is_default) : s_(s), t_(t), default_(is_default) {}
  std::string op() const override { return "swiglu"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  double flops() const override { return static_cast<double>(s_.rows) * s_.inter * (s_.clamp ? 8 : 5); }
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override;
  double estimated_instructions() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;

  // UB bytes one buffer set of `rows` rows needs.
  static int64_t ub_bytes_per_set(const SwigluShape& s, int64_t rows);

 private:
  SwigluShape s_;
  SwigluTiling t_;
  bool default_;
};

// UB addresses of one SwiGLU buffer set of `elems` elements from `base`: the g and u halves in the
// input type, g32 / u32 / t in fp32, the output, the rows' weights (ub_bytes_per_set bytes).
struct SwigluUb {
  uint64_t g, u, g32, u32, t, out, w;
};
SwigluUb swiglu_ub(const SwigluShape& s, uint64_t base, int64_t elems);

// The vector work of a tile of `rows` rows of `cols` elements already in UB (g at u.g, u at u.u,
// each row-contiguous; weights at u.w): result in u.out in the output type. With fp32 input, g and
// u are clamped in place.
void emit_swiglu_vector(sim::CoreBuilder& b, const SwigluShape& s, const SwigluUb& u, int64_t rows, int64_t cols);

SwigluTiling default_swiglu_tiling(const SwigluShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section (rows_per_tile, buffers, cores) over `base`.
SwigluTiling parse_swiglu_tiling(const YamlNode& tiling, SwigluTiling base);

std::unique_ptr<Kernel> make_swiglu(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                    const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
