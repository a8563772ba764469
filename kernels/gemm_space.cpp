// The GEMM tiling space (gemm.hpp) and its analytical estimate, shared by the grouped GEMM family.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "kernels/gemm.hpp"

namespace npusim::kernels {

namespace {

// Parameter order of gemm_search_space; gemm_space_tiling reads the same.
enum GemmParam { kM1, kN1, kK1, kM0, kN0, kK0, kSwizzleOffset, kSwizzleDirection, kStages, kGemmParams };

// Multiples of `align` from `align` up to `cap`, on a 1, 1.5, 2, 3, 4, 6, ... ladder (the sizes
// catlass tilings use), plus `cap` itself when it is a multiple (a tile covering the whole extent).
std::vector<int64_t> tile_ladder(int64_t align, int64_t cap) {
  std::vector<int64_t> v;
  for (int64_t x = align; x <= cap; x *= 2) {
    v.push_back(x);
    if (x % 2 == 0 && x + x / 2 <= cap && (x + x / 2) % align == 0) v.push_back(x + x / 2);
  }
  if (cap % align == 0 && (v.empty() || v.back() != cap)) v.push_back(cap);
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

}  // namespace

nlohmann::json gemm_space_tiling(const int64_t* p) {
  return {{"l1", {p[kM1], p[kN1], p[kK1]}},
          {"l0", {p[kM0], p[kN0], p[kK0]}},
          {"swizzle", {{"offset", p[kSwizzleOffset]}, {"direction", p[kSwizzleDirection]}}},
          {"stages", p[kStages]}};
}

SearchSpace gemm_search_space(const GemmShape& s, const std::vector<int64_t>& group_rows, const sim::HardwareSpec& hw) {
  // Distinct row counts of the non-empty groups, with how many groups have each.
  std::map<int64_t, double> row_counts;
  double total_rows = 0;
  int64_t rows = 0;
  for (int64_t r : group_rows)
    if (r > 0) row_counts[r] += 1, total_rows += double(r), rows = std::max(rows, r);
  const double groups = std::accumulate(row_counts.begin(), row_counts.end(), 0.0, [](double a, const auto& kv) { return a + kv.second; });
  const int64_t e = sim::dtype_bytes(s.in), ka = 32 / e;
  const int64_t m_cap = std::min<int64_t>(512, round_up(std::max<int64_t>(rows, 1), 16));
  const int64_t n_cap = std::min<int64_t>(512, round_up(s.n, 16));
  const int64_t k_cap = std::min<int64_t>(1024 / e * 2, round_up(s.k, ka));
  SearchSpace sp;
  sp.add("m1", tile_ladder(16, m_cap));
  sp.add("n1", tile_ladder(16, n_cap));
  sp.add("k1", tile_ladder(ka, k_cap));
  sp.add("m0", tile_ladder(16, m_cap));
  sp.add("n0", tile_ladder(16, n_cap));
  sp.add("k0", tile_ladder(ka, std::min<int64_t>(k_cap, 256 / e * 2)));
  sp.add("swizzle_offset", {1, 2, 3, 4, 8});
  sp.add("swizzle_direction", {0, 1});
  std::vector<int64_t> stages;
  for (int64_t st = 1; st <= std::min(4, hw.sync.event_ids); ++st) stages.push_back(st);
  sp.add("stages", stages);

  const int64_t l1 = hw.aic.l1_bytes, l0a = hw.aic.l0a_bytes, l0b = hw.aic.l0b_bytes, l0c = hw.aic.l0c_bytes;
  // The same checks as check_gemm_tiling, each as early as its parameters allow.
  sp.require("L0C capacity", {kM1, kN1}, [=](const int64_t* p) { return p[kM1] * p[kN1] * 4 <= l0c; });
  sp.require("L1 capacity", {kM1, kN1, kK1}, [=](const int64_t* p) { return (p[kM1] + p[kN1]) * p[kK1] * e <= l1; });
  sp.require("L0 tile divides L1 tile", {kM1, kM0}, [](const int64_t* p) { return p[kM1] % p[kM0] == 0; });
  sp.require("L0 tile divides L1 tile", {kN1, kN0}, [](const int64_t* p) { return p[kN1] % p[kN0] == 0; });
  sp.require("L0 tile divides L1 tile", {kK1, kK0}, [](const int64_t* p) { return p[kK1] % p[kK0] == 0; });
  sp.require("L0A capacity", {kM0, kK0}, [=](const int64_t* p) { return 2 * p[kM0] * p[kK0] * e <= l0a; });
  sp.require("L0B capacity", {kN0, kK0}, [=](const int64_t* p) { return 2 * p[kK0] * p[kN0] * e <= l0b; });
  sp.require("L1 capacity", {kM1, kN1, kK1, kStages},
             [=](const int64_t* p) { return p[kStages] * (p[kM1] + p[kN1]) * p[kK1] * e <= l1; });
  sp.tiling = [](const int64_t* p) { return gemm_space_tiling(p); };
  const int64_t n_total = s.n;

  // Roofline per K step of a block: MTE2 brings the A and B tiles, MTE1 feeds L0, the cube
  // multiplies; with two or more stages they overlap, with one they add up. Cores share L2 and HBM.
  const double cube_rate = hw.cube_macs_per_cycle(s.in);
  // Path rates follow the calibrated curves at each transfer's size (start-up included).
  const sim::PathSpec mte2_path = hw.path(sim::Path::GmToL1Nd2Nz), mte1_path = hw.path(sim::Path::L1ToL0A),
                      fix_path = hw.path(sim::Path::L0CToGmNz2Nd);
  const double l2_rate = hw.l2.aggregate_bw_gbs * 1e3 / hw.freq_mhz;
  const double hbm_rate = hw.hbm_bytes_per_cycle() * hw.hbm.efficiency;
  const double head = hw.aic.mmad_head_cycles, out_e = sim::dtype_bytes(s.out);
  const double compulsory = total_rows * s.k * e + groups * s.k * s.n * e + total_rows * s.n * sim::dtype_bytes(s.out);
  const int64_t kk = s.k;
  sp.estimate = [=](const int64_t* p) {
    double bm = 0;
    for (const auto& [r, count] : row_counts) bm += count * std::ceil(double(r) / p[kM1]);
    const double bn = std::ceil(double(n_total) / p[kN1]), blocks = std::max(1.0, bm * bn);
    const double cores = std::min<double>(hw.num_aic, blocks);
    const double waves = std::ceil(blocks / cores);
    const double ksteps = std::ceil(double(kk) / p[kK1]);
    const double bytes = double(p[kM1] + p[kN1]) * p[kK1] * e;
    const double mte2 = std::max(mte2_path.startup_cycles + mte2_path.data_cycles(bytes), bytes * cores / l2_rate);
    const double l0_steps = double(p[kK1] / p[kK0]) * (p[kM1] / p[kM0]) * (p[kN1] / p[kN0]);
    const double a0 = double(p[kM0]) * p[kK0] * e, b0 = double(p[kK0]) * p[kN0] * e;
    const double mte1 = l0_steps * (2 * mte1_path.startup_cycles + mte1_path.data_cycles(a0) + mte1_path.data_cycles(b0));
    const double cube = double(p[kM1]) * p[kN1] * p[kK1] / cube_rate + l0_steps * head;
    const double step = p[kStages] >= 2 ? std::max({mte2, mte1, cube}) : mte2 + std::max(mte1, cube);
    const double fix = fix_path.startup_cycles + fix_path.data_cycles(double(p[kM1]) * p[kN1] * out_e);
    const double per_core = waves * (ksteps * step + fix + mte2);
    // Every operand crosses HBM at least once.
    return std::max(per_core, compulsory / hbm_rate);
  };
  return sp;
}

}  // namespace npusim::kernels
