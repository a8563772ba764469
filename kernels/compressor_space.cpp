// The compressor's tiling space. Prefill: the item shape (rows, a multiple of the ratio; channels,
// a divisor of head_dim), the GEMM's K tile (its L0 tile follows the default rule: the whole item,
// K 128 bytes deep), L1 stages and cores, then the AIV tiles: blocks side by side (ratio within a
// tile's rows) or rows per chunk (longer blocks), entries per tile, buffer sets and slots. Decode:
// the batch GEMM's blocks, K tile, stages and cores, the state tiles' rows and buffer sets (the
// other keys do not act there). Constraints: check_gemm_tiling and compressor_ub_bytes.
#include <algorithm>
#include <memory>
#include <numeric>

#include "kernels/compressor.hpp"
#include "kernels/space_util.hpp"

namespace npusim::kernels {

namespace {

// The default rule's L0 depth for an L1 depth k1: 128 bytes, or the largest 32-byte step dividing
// k1.
int64_t l0_depth(int64_t k1, int64_t e) {
  int64_t k0 = std::min<int64_t>(128 / e, k1);
  while (k0 > 32 / e && k1 % k0) k0 -= 32 / e;
  return k0;
}

std::vector<int64_t> powers_between(int64_t lo, int64_t hi) {
  std::vector<int64_t> v;
  for (int64_t x = 1; x <= hi; x *= 2)
    if (x >= lo) v.push_back(x);
  return space::with(v, hi);
}

}  // namespace

SearchSpace CompressorKernel::search_space(const sim::HardwareSpec& hw) const {
  const auto& c = s_.cfg;
  const bool decode = c.tokens == 1;
  const int64_t e = sim::dtype_bytes(s_.dtype), ka = 32 / e, C = c.coff() * c.head_dim,
                B = c.batch();
  SearchSpace sp;
  int kM1 = 0, kN1 = 0;
  if (decode) {
    kM1 = sp.add("m1", space::with(space::ladder(16, std::min<int64_t>(128, round_up(B, 16)), 16),
                                   t_.gemm.m1));
    const int64_t n_cap = std::min<int64_t>(256, round_up(C, 16));
    kN1 = sp.add("n1",
                 space::with(space::ladder(std::min<int64_t>(n_cap, 32), n_cap, 16), t_.gemm.n1));
  } else {
    // Rows: whole blocks, from 64 to 256 or one sequence's rows.
    const int64_t L = std::lcm<int64_t>(16, c.ratio), lo = round_up(64, L);
    const int64_t hi = std::max(lo, std::min(round_up(256, L), round_up(c.tokens, L)));
    kM1 = sp.add("m1", space::with(space::ladder(lo, hi, L), t_.gemm.m1));
    std::vector<int64_t> channels;
    for (int64_t n = 16; n <= std::min<int64_t>(256, c.head_dim); n += 16)
      if (c.head_dim % n == 0 && (n >= 32 || c.head_dim < 32)) channels.push_back(n);
    kN1 = sp.add("n1", space::with(channels, t_.gemm.n1));
  }
  std::vector<int64_t> depths;
  const int64_t k_cap = round_up(c.hidden, ka);
  for (int64_t k : {256, 512})
    if (k <= k_cap) depths.push_back(k);
  if (depths.empty()) depths.push_back(k_cap);
  const int kK1 = sp.add("k1", space::with(depths, t_.gemm.k1));
  const int kStages = sp.add("stages", space::with({2, 3}, t_.gemm.stages));
  const int kCores =
      sp.add("cores", space::with(space::core_counts(hw.num_aic, hw.num_aic), t_.gemm.cores));
  int kRows = -1, kBlocks = -1, kEntries = -1, kSlots = -1;
  if (decode) {
    kRows = sp.add("rows_per_tile", space::with(powers_between(4, 32), t_.rows_per_tile));
  } else {
    // Counts of blocks, rows and entries per AIV tile take powers of two.
    if (c.ratio <= t_.rows_per_tile)
      kBlocks = sp.add("blocks_per_tile", space::with({1, 2, 4, 8}, t_.blocks_per_tile));
    else
      kRows = sp.add(
          "rows_per_tile",
          space::with(powers_between(std::min<int64_t>(8, c.ratio), c.ratio), t_.rows_per_tile));
    kEntries = sp.add("entries_per_tile", space::with({1, 2, 4}, t_.entries_per_tile));
  }
  // Double or triple buffering; two or three items in flight.
  const int kBuffers = sp.add("buffers", space::with({2, 3}, t_.buffers));
  if (!decode) kSlots = sp.add("slots", space::with({2, 3}, t_.slots));

  struct Ctx {
    CompressorShape s;
    CompressorTiling base;
    sim::HardwareSpec hw;
  };
  const auto ctx = std::make_shared<const Ctx>(Ctx{s_, t_, hw});
  auto gemm_of = [ctx, kM1, kN1, kK1, e](const int64_t* p, int64_t stages) {
    GemmTiling g = ctx->base.gemm;
    g.m1 = g.m0 = p[kM1], g.n1 = g.n0 = p[kN1], g.k1 = p[kK1], g.k0 = l0_depth(p[kK1], e);
    g.stages = static_cast<int>(stages);
    return g;
  };
  // The GEMM as can_implement checks it (A row-major, B column-major: the defaults).
  const GemmShape gs{B * c.tokens, C, c.hidden, s_.dtype, sim::DType::Fp32};
  sp.require("L0 and L0C capacity", {kM1, kN1, kK1},
             [=](const int64_t* p) { return check_gemm_tiling(gs, gemm_of(p, 1), ctx->hw).ok; });
  sp.require("L1 capacity", {kM1, kN1, kK1, kStages}, [=](const int64_t* p) {
    return check_gemm_tiling(gs, gemm_of(p, p[kStages]), ctx->hw).ok;
  });
  std::vector<int> reads{kM1, kN1, kCores};
  for (int k : {kRows, kBlocks, kEntries, kBuffers, kSlots})
    if (k >= 0) reads.push_back(k);
  const int64_t ub = hw.aiv.ub_bytes;
  sp.require("UB capacity", reads, [=](const int64_t* p) {
    CompressorTiling t = ctx->base;
    t.gemm = gemm_of(p, ctx->base.gemm.stages);
    t.gemm.cores = static_cast<int>(p[kCores]);
    if (kRows >= 0) t.rows_per_tile = p[kRows];
    if (kBlocks >= 0) t.blocks_per_tile = p[kBlocks];
    if (kEntries >= 0) t.entries_per_tile = p[kEntries];
    if (kSlots >= 0) t.slots = static_cast<int>(p[kSlots]);
    t.buffers = static_cast<int>(p[kBuffers]);
    return compressor_ub_bytes(ctx->s, t, ctx->hw) <= ub;
  });
  sp.tiling = [=](const int64_t* p) {
    nlohmann::json j = {{"l1", {p[kM1], p[kN1], p[kK1]}},
                        {"l0", {p[kM1], p[kN1], l0_depth(p[kK1], e)}},
                        {"stages", p[kStages]},
                        {"cores", p[kCores]},
                        {"buffers", p[kBuffers]}};
    if (kRows >= 0) j["rows_per_tile"] = p[kRows];
    if (kBlocks >= 0) j["blocks_per_tile"] = p[kBlocks];
    if (kEntries >= 0) j["entries_per_tile"] = p[kEntries];
    if (kSlots >= 0) j["slots"] = p[kSlots];
    return j;
  };
  return sp;
}

}  // namespace npusim::kernels
