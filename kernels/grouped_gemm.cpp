#include "kernels/grouped_gemm.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "common/numerics.hpp"
#include "kernels/reference/reference.hpp"
#include "kernels/routing.hpp"

namespace npusim::kernels {

namespace {

struct GroupedGm {
  uint64_t a, c, footprint;
  std::vector<uint64_t> b;  // one weight per group
};

GroupedGm place(const GemmShape& s, const std::vector<int64_t>& rows, int64_t total) {
  const int64_t e = sim::dtype_bytes(s.in);
  GmAllocator gm;
  GroupedGm g{};
  g.a = gm.alloc(total * s.k * e);
  const int64_t b_elems = s.b == TensorLayout::Nz ? round_up(s.k, 16) * round_up(s.n, 16) : s.k * s.n;
  for (size_t i = 0; i < rows.size(); ++i) g.b.push_back(gm.alloc(b_elems * e));
  g.c = gm.alloc(total * s.n * sim::dtype_bytes(s.out));
  g.footprint = gm.footprint();
  return g;
}

}  // namespace

int64_t GroupedGemmKernel::total_rows() const { return std::accumulate(rows_.begin(), rows_.end(), int64_t{0}); }

std::string GroupedGemmKernel::name() const {
  return fmt::format("grouped_gemm_{}x{}x{}x{}_{}", rows_.size(), total_rows(), s_.n, s_.k, sim::dtype_name(s_.in));
}

nlohmann::json GroupedGemmKernel::tiling_json() const {
  GemmKernel g(s_, t_, default_);
  return g.tiling_json();
}

std::unique_ptr<Kernel> GroupedGemmKernel::reduced_for_validation() const {
  if (rows_.size() <= 3) return nullptr;
  size_t fullest = 0, emptiest = rows_.size(), empty = rows_.size();
  for (size_t g = 0; g < rows_.size(); ++g) {
    if (rows_[g] > rows_[fullest]) fullest = g;
    if (rows_[g] > 0 && (emptiest == rows_.size() || rows_[g] < rows_[emptiest])) emptiest = g;
    if (rows_[g] == 0 && empty == rows_.size()) empty = g;
  }
  std::vector<int64_t> rows;
  for (size_t g = 0; g < rows_.size(); ++g)
    if (g == fullest || g == emptiest || g == empty) rows.push_back(rows_[g]);
  return std::make_unique<GroupedGemmKernel>(s_, std::move(rows), t_, default_);
}

nlohmann::json GroupedGemmKernel::details() const {
  return {{"routing", {{"tokens_per_expert", rows_}, {"imbalance", imbalance(rows_)}}}};
}

double GroupedGemmKernel::compulsory_bytes() const {
  // Only experts with rows read their weights.
  const int64_t used = std::count_if(rows_.begin(), rows_.end(), [](int64_t r) { return r > 0; });
  return static_cast<double>(total_rows() * s_.k + used * s_.k * s_.n) * sim::dtype_bytes(s_.in) +
         static_cast<double>(total_rows() * s_.n) * sim::dtype_bytes(s_.out);
}

double GroupedGemmKernel::estimated_instructions() const {
  double total = 0;
  for (int64_t r : rows_) {
    if (!r) continue;
    GemmShape g = s_;
    g.m = r;
    total += GemmKernel(g, t_, false).estimated_instructions();
  }
  return total + static_cast<double>(rows_.size());
}

Status GroupedGemmKernel::can_implement(const sim::HardwareSpec& hw) const {
  GemmShape g = s_;
  g.m = std::max<int64_t>(1, total_rows());
  return check_gemm_tiling(g, t_, hw);
}

std::vector<TensorInfo> GroupedGemmKernel::tensors() const {
  const int64_t total = total_rows();
  GroupedGm g = place(s_, rows_, total);
  std::vector<TensorInfo> out{{"a", s_.in, total, s_.k, s_.a, g.a, false}};
  for (size_t i = 0; i < rows_.size(); ++i)
    out.push_back({fmt::format("b{}", i), s_.in, s_.k, s_.n, s_.b, g.b[i], false});
  out.push_back({"c", s_.out, total, s_.n, TensorLayout::RowMajor, g.c, true});
  return out;
}

sim::Program GroupedGemmKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  const int64_t total = total_rows();
  GroupedGm g = place(s_, rows_, total);
  GemmBlocks blocks;
  blocks.name = name();
  blocks.a = g.a, blocks.a_rows = total, blocks.footprint = g.footprint;
  // Every core walks the whole group list to find its blocks.
  blocks.scalar_cycles_per_core = static_cast<uint32_t>(hw.scalar_group_cycles * static_cast<double>(rows_.size()));
  const int64_t eo = sim::dtype_bytes(s_.out);
  for_each_group_block(rows_, s_.n, t_, [&](size_t grp, int64_t row0, int64_t mb, int64_t col0, int64_t nb) {
    blocks.list.push_back({row0, mb, col0, nb, g.b[grp], g.c + static_cast<uint64_t>((row0 * s_.n + col0) * eo), s_.n});
  });
  return lower_gemm_blocks(s_, t_, blocks, hw, functional);
}

Golden GroupedGemmKernel::reference(const std::vector<std::vector<double>>& in) const {
  const int64_t total = total_rows(), N = s_.n, K = s_.k, E = static_cast<int64_t>(rows_.size());
  Golden g;
  g.exact.assign(static_cast<size_t>(total * N), 0.0);
  std::vector<double> b(static_cast<size_t>(E * K * N));
  for (int64_t e = 0; e < E; ++e) std::copy(in[1 + e].begin(), in[1 + e].end(), b.begin() + e * K * N);
  ref::grouped_gemm(rows_, N, K, in[0].data(), b.data(), g.exact.data());
  if (s_.in == sim::DType::Int8) {
    g.same_precision = g.exact;
    return g;
  }
  // fp32 products and accumulation per group, one rounding to the output type.
  std::vector<float> af(in[0].begin(), in[0].end()), cf(static_cast<size_t>(total * N));
  int64_t row0 = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (rows_[e]) {
      std::vector<float> bf(in[1 + e].begin(), in[1 + e].end());
      ref::gemm(rows_[e], N, K, af.data() + row0 * K, bf.data(), cf.data() + row0 * N);
    }
    row0 += rows_[e];
  }
  const num::Format out = sim::number_format(s_.out);
  g.same_precision.resize(cf.size());
  for (size_t i = 0; i < cf.size(); ++i) g.same_precision[i] = num::round_to(out, cf[i]);
  return g;
}

GemmTiling default_grouped_gemm_tiling(const GemmShape& s, const std::vector<int64_t>& rows,
                                      const sim::HardwareSpec& hw) {
  // The GEMM default for the largest group (GMM tiles shrink with few tokens), on as many cores as
  // there are blocks.
  GemmShape biggest = s;
  biggest.m = rows.empty() ? 1 : std::max<int64_t>(1, *std::max_element(rows.begin(), rows.end()));
  GemmTiling t = default_gemm_tiling(biggest, hw);
  int64_t blocks = 0;
  for (int64_t r : rows) blocks += ceil_div(r, t.m1) * ceil_div(s.n, t.n1);
  t.cores = static_cast<int>(std::clamp<int64_t>(blocks, 1, hw.num_aic));
  return t;
}

void for_each_group_block(const std::vector<int64_t>& rows, int64_t n, const GemmTiling& t,
                          const std::function<void(size_t, int64_t, int64_t, int64_t, int64_t)>& f) {
  const int64_t nblocks = ceil_div(n, t.n1);
  int64_t row0 = 0;
  for (size_t grp = 0; grp < rows.size(); ++grp) {
    const int64_t m = rows[grp], mblocks = ceil_div(m, t.m1);
    for (int64_t i = 0; i < mblocks * nblocks; ++i) {
      auto [mi, ni] = swizzle_block(i, mblocks, nblocks, t.swizzle_offset, t.swizzle_direction);
      f(grp, row0 + mi * t.m1, std::min(t.m1, m - mi * t.m1), ni * t.n1, std::min(t.n1, n - ni * t.n1));
    }
    row0 += m;
  }
}

std::vector<int64_t> parse_group_rows(const YamlNode& w) {
  std::vector<int64_t> rows;
  auto explicit_rows = w.get("group_rows");
  auto routing = w.get("routing");
  if (explicit_rows && routing) routing->fail("give either group_rows or routing, not both");
  if (explicit_rows) {
    rows = explicit_rows->as_int_list();
    if (rows.empty()) explicit_rows->fail("expected at least one group");
    for (int64_t r : rows)
      if (r < 0) explicit_rows->fail(fmt::format("group rows must be >= 0, found {}", r));
  } else if (routing) {
    RoutingSpec spec = parse_routing(*routing);
    rows = tokens_per_expert(draw_routing(spec), spec.experts);
  } else {
    w.fail("missing required key: group_rows (rows per group) or routing (a seeded draw)");
  }
  const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  if (total > (int64_t(1) << 30)) w.fail("the groups hold more than 2^30 rows in total");
  return rows;
}

std::unique_ptr<Kernel> make_grouped_gemm(const YamlNode& w, const std::optional<YamlNode>& tiling,
                                          const sim::HardwareSpec& hw) {
  GemmShape s = parse_gemm_shape(w, hw, /*with_m=*/false);
  std::vector<int64_t> rows = parse_group_rows(w);
  const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  GemmTiling t = default_grouped_gemm_tiling(s, rows, hw);
  t = parse_gemm_tiling(tiling, t, std::max<int64_t>(1, total), s.n, hw, s.in);
  return std::make_unique<GroupedGemmKernel>(s, std::move(rows), t, !tiling.has_value());
}

std::unique_ptr<Kernel> GroupedGemmKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const {
  const GemmTiling t = parse_gemm_tiling(tiling, t_, std::max<int64_t>(1, total_rows()), s_.n, hw, s_.in);
  return std::make_unique<GroupedGemmKernel>(s_, rows_, t, false);
}

}  // namespace npusim::kernels
