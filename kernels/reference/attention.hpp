// CPU references for attention (KERNELS.md 2.5, 3.1 and the checklist 3.3): dense flash attention
// (MHA / GQA / MQA, causal, sink) and sparse attention over explicit index sets (MLA's MQA mode,
// V4's window + compressed sources). Contract as reference.hpp: fp64 throughout, row-major arrays,
// std::invalid_argument on bad arguments before anything is written, deterministic for every
// thread count (each query row on one thread, sums left to right).
//
// One convention for every attention kernel of the workbench:
//   l_j   = scale * <q, k_j>                              over the query's valid keys j
//   M     = max_j l_j                                     (the sink does not enter the max)
//   p_j   = exp(l_j - M) / (sum_j exp(l_j - M) + exp(sink - M))    (sink term only with a sink)
//   out   = sum_j p_j v_j
//   lse   = M + ln(sum_j exp(l_j - M))                    natural log, sink excluded (FlashMLA ref.py)
// A query with no valid key gets out = 0 and lse = +inf (FlashMLA's convention).
// The lse base is a parameter of the kernels (KERNELS.md 3.3 item 5): natural by default, or base 2
// (log2-sum-exp2, as kernels working in exp2 report it) = the natural lse x log2(e).
#pragma once

#include <cstdint>
#include <vector>

namespace npusim::ref {

// One query row over n keys: k[j] points at d_qk values, v[j] at d_v values; sink may be null.
void attend_row(const double* q, int64_t d_qk, int64_t d_v, int64_t n, const double* const* k,
                const double* const* v, double scale, const double* sink, double* out, double* lse);

// Dense attention. q [B, S1, N1, d_qk], k [B, S2, N2, d_qk], v [B, S2, N2, d_v], out [B, S1, N1, d_v],
// lse [B, S1, N1]. Query i of a sequence sits at position S2 - S1 + i (the cache holds the earlier
// tokens); causal keeps the keys at positions <= it. Query head h reads KV head h / (N1 / N2).
// sinks: one per query head, or null.
struct FlashConfig {
  int64_t batch = 1, q_len = 1, kv_len = 1, heads_q = 1, heads_kv = 1, d_qk = 0, d_v = 0;
  bool causal = true;
  double scale = 0;
};
void flash_attention(const FlashConfig& c, const double* q, const double* k, const double* v, const double* sinks,
                     double* out, double* lse);

// Sparse MQA attention (one KV head shared by every query head, K = V: a KV row holds d_qk values
// and V is its first d_v). Query t attends, from every source, the rows its index list names; an
// index of -1 or >= the source's rows is invalid and skipped; a row named twice counts twice.
// q [T, H, d_qk], out [T, H, d_v], lse [T, H]; sinks: one per head, or null.
struct KvSource {
  const double* kv = nullptr;    // [rows, d_qk]
  int64_t rows = 0;
  const int32_t* idx = nullptr;  // [T, per_query]
  int64_t per_query = 0;
};
void sparse_attention(int64_t tokens, int64_t heads, int64_t d_qk, int64_t d_v, const double* q,
                      const std::vector<KvSource>& sources, const double* sinks, double scale, double* out,
                      double* lse);

// Converts natural-log lse values to base 2 in place: exact (fp64) or as the kernel does it, one
// fp32 multiplication by log2(e) of the fp32 value (`as_fp32`).
void lse_to_base2(std::vector<double>& lse, bool as_fp32);

}  // namespace npusim::ref
