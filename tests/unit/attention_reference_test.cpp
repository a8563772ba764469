// The attention reference's conventions (kernels/reference/attention.hpp): the sink only in the
// denominator, natural-log lse without the sink, +inf lse and zero output for a row with no key,
// invalid indices skipped, and dense causal attention equal to sparse attention over the prefix.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/reference/attention.hpp"

namespace npusim::ref {
namespace {

TEST(AttentionReference, TwoKeysWithASinkByHand) {
  const double q[2] = {1, 0}, k0[2] = {1, 0}, k1[2] = {0, 1}, v0[1] = {10}, v1[1] = {20}, sink = 0.5;
  const double* k[2] = {k0, k1};
  const double* v[2] = {v0, v1};
  double out = 0, lse = 0;
  attend_row(q, 2, 1, 2, k, v, 2.0, &sink, &out, &lse);
  // l = (2, 0): weights e^2, e^0 over e^2 + 1 + e^0.5.
  const double den = std::exp(2.0) + 1 + std::exp(0.5);
  EXPECT_NEAR(out, (10 * std::exp(2.0) + 20) / den, 1e-12);
  EXPECT_NEAR(lse, std::log(std::exp(2.0) + 1), 1e-12);
  attend_row(q, 2, 1, 0, k, v, 2.0, &sink, &out, &lse);
  EXPECT_EQ(out, 0.0);
  EXPECT_EQ(lse, std::numeric_limits<double>::infinity());
}

TEST(AttentionReference, DenseCausalEqualsSparseOverThePrefix) {
  // One sequence, 3 queries at the end of a 5-token cache, MQA (4 heads, 1 KV head), K = V.
  FlashConfig c;
  c.batch = 1, c.q_len = 3, c.kv_len = 5, c.heads_q = 4, c.heads_kv = 1, c.d_qk = 6, c.d_v = 4, c.scale = 0.3;
  std::vector<double> q(3 * 4 * 6), kv(5 * 6), v(5 * 4), sinks{0.1, -0.2, 0.3, 0.0};
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.7 * i);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = std::cos(1.3 * i);
  for (int r = 0; r < 5; ++r)
    for (int d = 0; d < 4; ++d) v[r * 4 + d] = kv[r * 6 + d];
  std::vector<double> out(3 * 4 * 4), lse(12), sout(out.size()), slse(12);
  flash_attention(c, q.data(), kv.data(), v.data(), sinks.data(), out.data(), lse.data());
  // Query i sees tokens 0..2+i; pad the lists with -1 and an out-of-range index.
  std::vector<int32_t> idx{0, 1, 2, -1, 7, 0, 1, 2, 3, -1, 0, 1, 2, 3, 4};
  sparse_attention(3, 4, 6, 4, q.data(), {KvSource{kv.data(), 5, idx.data(), 5}}, sinks.data(), 0.3, sout.data(), slse.data());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], sout[i], 1e-12) << i;
  for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse[i], slse[i], 1e-12) << i;
}

TEST(AttentionReference, BadArgumentsThrow) {
  FlashConfig c;
  c.heads_q = 3, c.heads_kv = 2, c.d_qk = c.d_v = 1;
  EXPECT_THROW(flash_attention(c, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), std::invalid_argument);
  EXPECT_THROW(sparse_attention(1, 1, 4, 8, nullptr, {}, nullptr, 1, nullptr, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace npusim::ref
