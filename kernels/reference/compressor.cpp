// The V4 compressor reference, written once for both precisions: T = double is the exact golden,
// T = float rounds each step to fp32 as the device's vector unit does.
#include "kernels/reference/compressor.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "common/numerics.hpp"
#include "kernels/reference/detail.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::ref {
namespace {

constexpr double kFp8Max = 448.0;
constexpr int64_t kQuantBlock = 64;

void check_rope(const char* fn, const RopeSpec& r, int64_t cols) {
  detail::require(r.dims > 0 && r.dims % 2 == 0 && r.dims <= cols, fn,
                  "rope dims must be even, > 0 and <= the row length, got " + std::to_string(r.dims));
}

// Smallest power of two >= s (s > 0, finite).
double pow2_ceil(double s) {
  int e = 0;
  const double m = std::frexp(s, &e);
  return std::ldexp(1.0, m == 0.5 ? e - 1 : e);
}

double e4m3(double y) { return num::round_to(num::Format::Fp8E4M3, std::clamp(y, -kFp8Max, kFp8Max)); }

template <class T>
void rope_rows_t(const RopeSpec& r, int64_t rows, int64_t cols, T* x, const T* cos, const T* sin) {
  check_rope("rope_rows", r, cols);
  const int64_t off = r.offset(cols), D = r.dims;
  std::vector<T> v(static_cast<size_t>(D));
  for (int64_t i = 0; i < rows; ++i) {
    T* row = x + i * cols + off;
    std::copy(row, row + D, v.begin());
    for (int64_t j = 0; j < D; ++j) {
      const T sn = static_cast<T>(rope_sign(r, j)) * sin[i * D + j];
      const T a = v[j] * cos[i * D + j], b = sn * v[rope_partner(r, j)];
      row[j] = a + b;
    }
  }
}

// RMSNorm of one row: the exact reference's rmsnorm_rows, or the device's fp32 steps (sum of fp32
// squares rounded once, times 1/d, plus eps, sqrt, reciprocal, then x * r * w).
void rmsnorm_row(int64_t d, double* x, const double* w, double eps) { rmsnorm_rows(1, d, x, w, eps, x); }
void rmsnorm_row(int64_t d, float* x, const float* w, double eps) {
  double ss = 0;
  for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(x[j] * x[j]);
  float ms = static_cast<float>(static_cast<double>(static_cast<float>(ss)) * (1.0 / static_cast<double>(d)));
  ms = static_cast<float>(static_cast<double>(ms) + eps);
  const float r = 1.0f / static_cast<float>(std::sqrt(static_cast<double>(ms)));
  for (int64_t j = 0; j < d; ++j) x[j] = (x[j] * r) * w[j];
}

template <class T>
CompressorResult<T> run(const CompressorConfig& c, const T* x, const T* w_kv, const T* w_gate, const T* ape,
                        const T* norm_weight, const T* kv_state, const T* score_state, const T* cos, const T* sin) {
  const int64_t H = c.hidden, d = c.head_dim, m = c.ratio, cf = c.coff(), C = cf * d, B = c.batch(), Tk = c.tokens;
  detail::require(H > 0 && d > 0 && Tk >= 0 && m >= 2, "compressor", "hidden, head_dim > 0, tokens >= 0, ratio >= 2");
  detail::require(!c.overlap || m % 2 == 0, "compressor", "overlap needs an even ratio");
  check_rope("compressor", c.rope, d);
  for (int64_t s : c.starts) detail::require(s >= 0, "compressor", "start positions must be >= 0");
  const int64_t nq = d - c.rope.dims;
  detail::require(!c.fp8 || nq % kQuantBlock == 0, "compressor", "fp8 needs the non-rope dims in whole blocks of 64");

  CompressorResult<T> res;
  const size_t state_n = static_cast<size_t>(B * c.state_rows() * C);
  res.kv_state.assign(kv_state, kv_state + state_n);
  res.score_state.assign(score_state, score_state + state_n);
  std::vector<T> kv(static_cast<size_t>(B * Tk * C)), sc(kv.size());
  gemm(B * Tk, C, H, x, w_kv, kv.data());
  gemm(B * Tk, C, H, x, w_gate, sc.data());
  const int64_t n_out = c.entries();
  res.entries.assign(static_cast<size_t>(n_out * d), T(0));
  res.prequant.assign(res.entries.size(), T(0));

  int64_t e = 0;
  std::vector<const T*> kvr, scr;
  std::vector<int64_t> half;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p0 = c.starts[b], p1 = p0 + Tk, k0 = p0 / m, k1 = p1 / m, off = c.overlap ? m : 0;
    const T* kst = kv_state + b * c.state_rows() * C;
    const T* sst = score_state + b * c.state_rows() * C;
    for (int64_t t = 0; t < Tk; ++t)
      for (int64_t ch = 0; ch < C; ++ch) sc[(b * Tk + t) * C + ch] += ape[((p0 + t) % m) * C + ch];
    // Where the row of position p lives: this call's rows, the state's current block or its previous block.
    auto row = [&](int64_t p, bool score) -> const T* {
      if (p >= p0) return (score ? sc.data() : kv.data()) + (b * Tk + p - p0) * C;
      const int64_t r = p >= k0 * m ? off + p - k0 * m : p - (k0 - 1) * m;
      return (score ? sst : kst) + r * C;
    };
    for (int64_t i = k0; i < k1; ++i, ++e) {
      kvr.clear(), scr.clear(), half.clear();
      if (c.overlap && i >= 1)
        for (int64_t p = (i - 1) * m; p < i * m; ++p) kvr.push_back(row(p, false)), scr.push_back(row(p, true)), half.push_back(0);
      for (int64_t p = i * m; p < i * m + m; ++p) kvr.push_back(row(p, false)), scr.push_back(row(p, true)), half.push_back(cf - 1);
      T* out = res.prequant.data() + e * d;
      for (int64_t ch = 0; ch < d; ++ch) {
        T mx = -std::numeric_limits<T>::infinity(), z = 0, n = 0;
        for (size_t r = 0; r < scr.size(); ++r) mx = std::max(mx, scr[r][half[r] * d + ch]);
        for (size_t r = 0; r < scr.size(); ++r) {
          const T w = static_cast<T>(std::exp(static_cast<double>(scr[r][half[r] * d + ch] - mx)));
          z += w;
          n += w * kvr[r][half[r] * d + ch];
        }
        out[ch] = n / z;
      }
      rmsnorm_row(d, out, norm_weight, c.eps);
      rope_rows_t(c.rope, 1, d, out, cos + e * c.rope.dims, sin + e * c.rope.dims);
      T* q = res.entries.data() + e * d;
      std::copy(out, out + d, q);
      if (c.fp8) fp8_fake_quant(q + (c.rope.at_tail ? 0 : c.rope.dims), nq, kQuantBlock);
    }
    // The state after the call: rows whose content changed, read from this call's rows or the
    // input state (the move of the current rows into the previous block's).
    T* kso = res.kv_state.data() + b * c.state_rows() * C;
    T* sso = res.score_state.data() + b * c.state_rows() * C;
    auto put = [&](int64_t r, int64_t p) {
      std::copy(row(p, false), row(p, false) + C, kso + r * C);
      std::copy(row(p, true), row(p, true) + C, sso + r * C);
    };
    std::vector<std::pair<int64_t, int64_t>> writes;  // (state row, position)
    if (k1 > k0) {
      if (c.overlap)
        for (int64_t j = 0; j < m; ++j) writes.push_back({j, (k1 - 1) * m + j});
      for (int64_t j = 0; j < p1 - k1 * m; ++j) writes.push_back({off + j, k1 * m + j});
    } else {
      for (int64_t p = p0; p < p1; ++p) writes.push_back({off + p - k0 * m, p});
    }
    for (auto [r, p] : writes) put(r, p);  // `row` reads the input arrays, never res
  }
  return res;
}

}  // namespace

int64_t CompressorConfig::entries() const {
  int64_t n = 0;
  for (int64_t s : starts) n += (s + tokens) / ratio - s / ratio;
  return n;
}

int64_t rope_pair(const RopeSpec& r, int64_t j) { return r.layout == RopeLayout::Interleaved ? j / 2 : j % (r.dims / 2); }

int64_t rope_partner(const RopeSpec& r, int64_t j) {
  if (r.layout == RopeLayout::Interleaved) return j ^ 1;
  return j < r.dims / 2 ? j + r.dims / 2 : j - r.dims / 2;
}

double rope_sign(const RopeSpec& r, int64_t j) {
  const bool first = r.layout == RopeLayout::Interleaved ? j % 2 == 0 : j < r.dims / 2;
  return first ? -1.0 : 1.0;
}

void rope_tables(const RopeSpec& r, int64_t rows, const int64_t* positions, double* cos, double* sin) {
  check_rope("rope_tables", r, r.dims);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < r.dims; ++j) {
      const double a = static_cast<double>(positions[i]) *
                       std::pow(r.theta, -2.0 * static_cast<double>(rope_pair(r, j)) / static_cast<double>(r.dims));
      cos[i * r.dims + j] = std::cos(a);
      sin[i * r.dims + j] = std::sin(a);
    }
}

void rope_rows(const RopeSpec& r, int64_t rows, int64_t cols, double* x, const double* cos, const double* sin) {
  rope_rows_t(r, rows, cols, x, cos, sin);
}
void rope_rows(const RopeSpec& r, int64_t rows, int64_t cols, float* x, const float* cos, const float* sin) {
  rope_rows_t(r, rows, cols, x, cos, sin);
}

void fp8_fake_quant(double* x, int64_t n, int64_t block) {
  detail::require(block > 0 && n >= 0, "fp8_fake_quant", "block must be > 0 and n >= 0");
  for (int64_t lo = 0; lo < n; lo += block) {
    const int64_t hi = std::min(n, lo + block);
    double amax = 0;
    for (int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
    const double s = pow2_ceil(std::max(amax, static_cast<double>(1e-4f)) / kFp8Max);
    for (int64_t i = lo; i < hi; ++i) x[i] = e4m3(x[i] / s) * s;
  }
}

void fp8_fake_quant(float* x, int64_t n, int64_t block) {
  detail::require(block > 0 && n >= 0, "fp8_fake_quant", "block must be > 0 and n >= 0");
  const num::BlockScaled q = num::quantize_blocks(num::Format::Fp8E4M3, x, static_cast<size_t>(n), static_cast<int>(block), true);
  num::dequantize_blocks(q, x);
}

int64_t fp8_fake_quant_like(const double* x, const double* device, int64_t n, int64_t block, double tol, double* out) {
  detail::require(block > 0 && n >= 0 && tol >= 0, "fp8_fake_quant_like", "block must be > 0, n and tol >= 0");
  int64_t flips = 0;
  std::vector<double> best(static_cast<size_t>(block)), cand(best.size());
  for (int64_t lo = 0; lo < n; lo += block) {
    const int64_t hi = std::min(n, lo + block), len = hi - lo;
    double amax = 0;
    for (int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
    amax = std::max(amax, static_cast<double>(1e-4f));
    const double s = amax / kFp8Max;
    double best_err = std::numeric_limits<double>::infinity();
    int64_t best_flips = 0;
    // One scale, or two when amax / 448 sits at a power of two; per element one code, or two at a midpoint.
    for (double scale : {pow2_ceil(s * (1 - tol)), pow2_ceil(s * (1 + tol))}) {
      double err = 0;
      int64_t f = 0;
      for (int64_t i = 0; i < len; ++i) {
        const double band = tol * (std::fabs(x[lo + i]) + amax);
        const double near = e4m3(x[lo + i] / scale) * scale;
        const double lo_v = e4m3((x[lo + i] - band) / scale) * scale, hi_v = e4m3((x[lo + i] + band) / scale) * scale;
        const double dv = device[lo + i];
        cand[i] = (dv == lo_v || dv == hi_v) ? dv : near;
        f += cand[i] != near;
        err += std::fabs(cand[i] - dv);
      }
      if (err < best_err) best_err = err, best_flips = f, best.swap(cand);
    }
    std::copy(best.begin(), best.begin() + len, out + lo);
    flips += best_flips;
  }
  return flips;
}

CompressorResult<double> compressor(const CompressorConfig& c, const double* x, const double* w_kv,
                                    const double* w_gate, const double* ape, const double* norm_weight,
                                    const double* kv_state, const double* score_state, const double* cos,
                                    const double* sin) {
  return run(c, x, w_kv, w_gate, ape, norm_weight, kv_state, score_state, cos, sin);
}

CompressorResult<float> compressor(const CompressorConfig& c, const float* x, const float* w_kv, const float* w_gate,
                                   const float* ape, const float* norm_weight, const float* kv_state,
                                   const float* score_state, const float* cos, const float* sin) {
  return run(c, x, w_kv, w_gate, ape, norm_weight, kv_state, score_state, cos, sin);
}

}  // namespace npusim::ref
