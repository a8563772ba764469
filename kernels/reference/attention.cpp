#include "kernels/reference/attention.hpp"

#include <tbb/parallel_for.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace npusim::ref {

void attend_row(const double* q, int64_t d_qk, int64_t d_v, int64_t n, const double* const* k,
                const double* const* v, double scale, const double* sink, double* out, double* lse) {
  for (int64_t d = 0; d < d_v; ++d) out[d] = 0;
  if (n == 0) {
    *lse = std::numeric_limits<double>::infinity();
    return;
  }
  std::vector<double> l(static_cast<size_t>(n));
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int64_t d = 0; d < d_qk; ++d) s += q[d] * k[j][d];
    l[j] = scale * s;
    m = std::max(m, l[j]);
  }
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (l[j] = std::exp(l[j] - m));
  const double denom = sum + (sink ? std::exp(*sink - m) : 0.0);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < d_v; ++d) out[d] += l[j] / denom * v[j][d];
  *lse = m + std::log(sum);
}

void flash_attention(const FlashConfig& c, const double* q, const double* k, const double* v, const double* sinks,
                     double* out, double* lse) {
  if (c.batch < 0 || c.q_len < 0 || c.kv_len < 0 || c.heads_q <= 0 || c.heads_kv <= 0 || c.d_qk <= 0 || c.d_v <= 0)
    throw std::invalid_argument("flash_attention: sizes must be >= 0 and heads, d_qk, d_v > 0");
  if (c.heads_q % c.heads_kv) throw std::invalid_argument("flash_attention: heads_q must be a multiple of heads_kv");
  if (c.q_len > c.kv_len) throw std::invalid_argument("flash_attention: q_len must not exceed kv_len (queries are the last tokens)");
  const int64_t group = c.heads_q / c.heads_kv, rows = c.batch * c.q_len * c.heads_q;
  tbb::parallel_for(int64_t{0}, rows, [&](int64_t r) {
    const int64_t h = r % c.heads_q, i = (r / c.heads_q) % c.q_len, b = r / (c.heads_q * c.q_len);
    const int64_t pos = c.kv_len - c.q_len + i, n = c.causal ? pos + 1 : c.kv_len, kvh = h / group;
    std::vector<const double*> kp(static_cast<size_t>(n)), vp(kp.size());
    for (int64_t j = 0; j < n; ++j) {
      kp[j] = k + ((b * c.kv_len + j) * c.heads_kv + kvh) * c.d_qk;
      vp[j] = v + ((b * c.kv_len + j) * c.heads_kv + kvh) * c.d_v;
    }
    attend_row(q + r * c.d_qk, c.d_qk, c.d_v, n, kp.data(), vp.data(), c.scale, sinks ? sinks + h : nullptr,
               out + r * c.d_v, lse + r);
  });
}

void sparse_attention(int64_t tokens, int64_t heads, int64_t d_qk, int64_t d_v, const double* q,
                      const std::vector<KvSource>& sources, const double* sinks, double scale, double* out,
                      double* lse) {
  if (tokens < 0 || heads <= 0 || d_qk <= 0 || d_v <= 0 || d_v > d_qk)
    throw std::invalid_argument("sparse_attention: needs tokens >= 0, heads > 0 and 0 < d_v <= d_qk (V is the first d_v dims of K)");
  for (const auto& s : sources)
    if (s.rows < 0 || s.per_query < 0 || (s.per_query > 0 && (!s.idx || (s.rows > 0 && !s.kv))))
      throw std::invalid_argument("sparse_attention: a source needs rows >= 0, per_query >= 0 and its arrays");
  tbb::parallel_for(int64_t{0}, tokens, [&](int64_t t) {
    std::vector<const double*> rows;
    for (const auto& s : sources)
      for (int64_t j = 0; j < s.per_query; ++j) {
        const int32_t i = s.idx[t * s.per_query + j];
        if (i >= 0 && i < s.rows) rows.push_back(s.kv + i * d_qk);
      }
    const int64_t n = static_cast<int64_t>(rows.size());
    for (int64_t h = 0; h < heads; ++h)
      attend_row(q + (t * heads + h) * d_qk, d_qk, d_v, n, rows.data(), rows.data(), scale, sinks ? sinks + h : nullptr,
                 out + (t * heads + h) * d_v, lse + t * heads + h);
  });
}

void lse_to_base2(std::vector<double>& lse, bool as_fp32) {
  for (double& x : lse) x = as_fp32 ? static_cast<float>(static_cast<double>(static_cast<float>(x)) * M_LOG2E) : x * M_LOG2E;
}

}  // namespace npusim::ref
