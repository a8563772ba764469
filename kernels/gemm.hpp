// GEMM template: C[M,N] = A[M,K] * B[K,N] on the cube cores, catlass BlockMmad style.
//
// Lowering, per AIC: the C blocks of the L1 tile (m1 x n1) are visited in block-swizzled order
// and dealt round-robin to the cores. For each block, K advances in L1 tiles of k1: MTE2 copies
// the A and B tiles GM->L1 into one of `stages` L1 buffers (ND->NZ conversion unless B is stored
// NZ), MTE1 moves k0-deep slices into ping-ponged L0A/L0B, the cube accumulates in fp32 in L0C,
// and FIXPIPE writes the block to GM with the output cast (NZ->ND). Pipes hand buffers to each
// other with set/wait flags exactly as production kernels do; tails are partial tiles.
#pragma once

#include "kernels/kernel.hpp"

namespace npusim::kernels {

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;
  sim::DType in = sim::DType::Fp16;
  sim::DType out = sim::DType::Fp16;
  TensorLayout a = TensorLayout::RowMajor;
  TensorLayout b = TensorLayout::ColMajor;
};

struct GemmTiling {
  int64_t m1 = 0, n1 = 0, k1 = 0;  // L1 tile
  int64_t m0 = 0, n0 = 0, k0 = 0;  // L0 tile
  int swizzle_offset = 1;
  int swizzle_direction = 0;       // 0: walk M within a group of `offset` block rows; 1: N
  int stages = 2;                  // L1 buffers
  int cores = 0;                   // AICs used
};

// The documented default: catlass's typical 910B choice L1 <128,256,256>, L0 <128,256,64> for
// 2-byte types (K scaled by 2/bytes), transposed to <256,128> when M > N, M or N shrunk to the
// problem when smaller, swizzle <3, 0> (<3, 1> when N > M), 2 stages, every core that has a block.
GemmTiling default_gemm_tiling(const GemmShape& s, const sim::HardwareSpec& hw);

class GemmKernel : public Kernel {
 public:
  GemmKernel(GemmShape shape, GemmTiling tiling, bool tiling_default)
      : s_(shape), t_(tiling), default_(tiling_default) {}
  std::string op() const override { return "gemm"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  double flops() const override { return 2.0 * s_.m * s_.n * s_.k; }
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override {
    return 2.0 * hw.cube_macs_per_cycle(s_.in) * hw.num_aic;
  }
  double estimated_instructions() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;
  const GemmShape& shape() const { return s_; }
  const GemmTiling& tiling() const { return t_; }

 private:
  GemmShape s_;
  GemmTiling t_;
  bool default_;
};

std::unique_ptr<Kernel> make_gemm(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                  const sim::HardwareSpec& hw);

// Shared with the grouped GEMM: n, k, dtype, out_dtype and layout (and m when `with_m`).
GemmShape parse_gemm_shape(const YamlNode& workload, const sim::HardwareSpec& hw, bool with_m);
// `tiling:` over `defaults`; the default core count covers the blocks of a blocks_m x n output.
GemmTiling parse_gemm_tiling(const std::optional<YamlNode>& tiling, GemmTiling defaults, int64_t blocks_m, int64_t n,
                             const sim::HardwareSpec& hw, sim::DType in);
// The GEMM tiling space over groups of `group_rows` x n x k (a plain GEMM: one group of m rows):
// L1 and L0 tiles, swizzle, stages; the constraints are check_gemm_tiling's, and the estimate a
// roofline of MTE2, MTE1 and cube per K step over the blocks of every group. Fused kernels add their
// own parameters after these.
SearchSpace gemm_search_space(const GemmShape& s, const std::vector<int64_t>& group_rows, const sim::HardwareSpec& hw);
// The `tiling:` section of a GEMM space point (the first 9 parameters of gemm_search_space).
nlohmann::json gemm_space_tiling(const int64_t* p);

// Buffer capacity, alignment, divisibility, stages, cores and swizzle of a tiling for a shape.
Status check_gemm_tiling(const GemmShape& s, const GemmTiling& t, const sim::HardwareSpec& hw);

// One C block of a (grouped) GEMM: rows [row0, row0 + mb) of A, columns [col0, col0 + nb) of B,
// with `b` the GM address of the B matrix this block multiplies; the block is written row-major
// at GM address `c` with a row stride of `ldc` elements (a fused kernel may send it elsewhere).
struct GemmBlock {
  int64_t row0, mb, col0, nb;
  uint64_t b;
  uint64_t c = 0;
  int64_t ldc = 0;
};

// The blocks of one program and where A lives. Blocks are dealt in items of `item_blocks`
// consecutive blocks, item i to core i % cores. A fused kernel hooks into each item: before its
// first block and after its last block's output (with the AIC's builder, its core index and `n`
// counting that core's items), and may replace the FIXPIPE write of a block's accumulator
// (`c_tile` in L0C).
struct GemmBlocks {
  std::string name;
  std::vector<GemmBlock> list;
  uint64_t a = 0, footprint = 0;
  int64_t a_rows = 0;                  // rows of A (the column-major stride)
  uint32_t scalar_cycles_per_core = 0;  // scalar bookkeeping before the first block
  int item_blocks = 1;
  std::function<void(sim::CoreBuilder&, int core, int64_t n)> before_item, after_item;
  std::function<void(sim::CoreBuilder&, int core, int64_t n, const GemmBlock&, const sim::TileRef& c_tile)> write_c;
};

// The shared lowering of GEMM and grouped GEMM (see the file comment above).
sim::Program lower_gemm_blocks(const GemmShape& s, const GemmTiling& t, const GemmBlocks& blocks,
                               const sim::HardwareSpec& hw, bool functional);

// Block visiting order of catlass GemmIdentityBlockSwizzle<offset, direction>: block index ->
// (m block, n block).
std::pair<int64_t, int64_t> swizzle_block(int64_t idx, int64_t m_blocks, int64_t n_blocks, int offset,
                                          int direction);

}  // namespace npusim::kernels
