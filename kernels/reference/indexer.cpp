// Indexer references: FP8 row quantizer, scores from the quantized operands, padded stable top-k.
#include "kernels/reference/indexer.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/numerics.hpp"
#include "kernels/reference/detail.hpp"
#include "kernels/rng.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::ref {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
double f32(double v) { return static_cast<float>(v); }
}  // namespace

Fp8Rows quantize_fp8_rows(const std::vector<float>& x, int64_t rows, int64_t cols) {
  detail::require(rows >= 0 && cols > 0 && static_cast<int64_t>(x.size()) == rows * cols, "quantize_fp8_rows",
                  "x must hold rows * cols values with cols > 0");
  const num::BlockScaled q = num::quantize_blocks(num::Format::Fp8E4M3, x.data(), x.size(), static_cast<int>(cols), true);
  Fp8Rows out;
  out.values.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) out.values[i] = num::decode(num::Format::Fp8E4M3, q.codes[i]);
  out.scales.assign(q.scales.begin(), q.scales.end());
  return out;
}

Fp8Rows random_fp8_rows(int64_t rows, int64_t cols, const std::string& source, bool tied, double scale, uint64_t seed) {
  kernels::Rng rng(seed);
  auto draw = [&]() { return source == "uniform" ? 2.0 * rng.uniform01() - 1.0 : source == "ones" ? 1.0 : rng.normal(); };
  std::vector<float> x(static_cast<size_t>(rows * cols));
  if (tied) {
    std::vector<float> pattern(static_cast<size_t>(3 * cols));
    for (auto& v : pattern) v = static_cast<float>(rng.normal() * scale);
    for (int64_t r = 0; r < rows; ++r) {
      const auto which = static_cast<int64_t>(rng.next() % 3);
      std::copy(pattern.begin() + which * cols, pattern.begin() + (which + 1) * cols, x.begin() + r * cols);
    }
  } else {
    for (auto& v : x) v = static_cast<float>(draw() * scale);
  }
  return quantize_fp8_rows(x, rows, cols);
}

double halving_sum_f32(std::vector<double> v) {
  if (v.empty()) return 0.0;
  size_t p = 1;
  while (p * 2 <= v.size()) p *= 2;
  for (size_t i = 0; i + p < v.size(); ++i) v[i] = f32(v[i] + v[i + p]);
  for (size_t h = p / 2; h >= 1; h /= 2)
    for (size_t i = 0; i < h; ++i) v[i] = f32(v[i] + v[i + h]);
  return v[0];
}

void indexer_scores(const IndexerOperands& in, std::vector<double>* exact, std::vector<double>* device) {
  const int64_t T = in.tokens, H = in.heads, D = in.head_dim, S = in.cols;
  detail::require(T >= 0 && H > 0 && D > 0 && S >= 0, "indexer_scores", "bad sizes");
  detail::require(static_cast<int64_t>(in.key_base.size()) == T && static_cast<int64_t>(in.visible.size()) == T,
                  "indexer_scores", "key_base and visible need one entry per token");
  for (int64_t t = 0; t < T; ++t)
    detail::require(in.visible[t] >= 0 && in.visible[t] <= S, "indexer_scores", "visible must lie in [0, cols]");
  if (exact) exact->assign(static_cast<size_t>(T * S), -kInf);
  if (device) device->assign(static_cast<size_t>(T * S), -kInf);
  // Consecutive tokens sharing a key base are one sequence: one GEMM of their head rows against
  // the keys the widest of them sees (K transposed once).
  for (int64_t t0 = 0; t0 < T;) {
    int64_t t1 = t0, vmax = 0;
    while (t1 < T && in.key_base[t1] == in.key_base[t0]) vmax = std::max(vmax, in.visible[t1++]);
    if (vmax > 0) {
      const int64_t rows = (t1 - t0) * H;
      std::vector<double> kt(static_cast<size_t>(D * vmax)), c(static_cast<size_t>(rows * vmax));
      std::vector<float> ktf(kt.size()), af(static_cast<size_t>(rows * D)), cf(c.size());
      for (int64_t s = 0; s < vmax; ++s)
        for (int64_t d = 0; d < D; ++d) kt[d * vmax + s] = ktf[d * vmax + s] = static_cast<float>(in.k[(in.key_base[t0] + s) * D + d]);
      const double* a = in.q + t0 * H * D;
      for (int64_t i = 0; i < rows * D; ++i) af[i] = static_cast<float>(a[i]);
      if (exact) gemm(rows, vmax, D, a, kt.data(), c.data());
      if (device) gemm(rows, vmax, D, af.data(), ktf.data(), cf.data());  // fp8 products are exact in fp32
      detail::for_rows(t1 - t0, H * vmax, [&](int64_t r0, int64_t r1) {
        std::vector<double> terms(static_cast<size_t>(H));
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t t = t0 + r;
          for (int64_t s = 0; s < in.visible[t]; ++s) {
            const double ks = in.k_scale[in.key_base[t] + s];
            if (exact) {
              double acc = 0;
              for (int64_t h = 0; h < H; ++h)
                acc += in.w[t * H + h] * in.q_scale[t * H + h] * std::max(c[(r * H + h) * vmax + s], 0.0);
              (*exact)[t * S + s] = acc * ks;
            }
            if (device) {
              for (int64_t h = 0; h < H; ++h)
                terms[h] = f32(std::max<double>(cf[(r * H + h) * vmax + s], 0.0) * f32(in.w[t * H + h] * in.q_scale[t * H + h]));
              (*device)[t * S + s] = f32(halving_sum_f32(terms) * ks);
            }
          }
        }
      });
    }
    t0 = t1;
  }
}

void topk_padded(int64_t rows, int64_t cols, const double* scores, int64_t k, int32_t* indices, double* values) {
  std::vector<double> v(static_cast<size_t>(rows * k));
  topk(rows, cols, scores, k, indices, v.data());
  for (int64_t i = 0; i < rows * k; ++i) {
    const bool padded = std::isnan(v[i]) || v[i] == -kInf;
    if (padded) indices[i] = -1;
    if (values) values[i] = padded ? -kInf : v[i];
  }
}

}  // namespace npusim::ref
