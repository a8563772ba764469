// CPU references of the DSA / V4 CSA index selection (KERNELS.md 2.5 Indexer, 3.1, 3.3): the
// block-scaled FP8 quantizer of the indexer's q and k, the indexer scores computed from the SAME
// quantized operands the device multiplies (3.3 item 3), and the padded stable top-k.
//
//   I[t, s] = k_scale[s] * sum_h (w[t, h] * q_scale[t, h]) * ReLU(<q[t, h], k[s]>)
//
// q and k are the fp8 code values (the dequantized codes without their scales), the scales are the
// ue8m0 powers of two of their 128-vectors. Equal to sum_h w ReLU(<q_deq, k_deq>) because the
// scales are positive; this is the kernel form of 3.1.
//
// Contract: dense row-major arrays; query t reads the keys of its sequence, rows key_base[t] ..
// key_base[t] + visible[t] - 1 of k, as columns 0 .. visible[t] - 1 of its score row; the other
// columns of the row (masked by causality, or beyond its sequence) are -inf. Bad sizes throw
// std::invalid_argument.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace npusim::ref {

// One ue8m0-scaled FP8 E4M3 block per row of `cols` values (KERNELS.md 3.1: scale = amax / 448
// rounded up to a power of two, amax floored at 1e-4): the code values and one scale per row.
struct Fp8Rows {
  std::vector<double> values;  // rows x cols, each exactly an E4M3 value
  std::vector<double> scales;  // rows
};
Fp8Rows quantize_fp8_rows(const std::vector<float>& x, int64_t rows, int64_t cols);

// Seeded operands for functional runs: rows x cols values of `source` ("uniform" in [-1, 1), "ones",
// else normal) times `scale`, quantized as above; `tied` draws three rows and repeats them, so that
// keys tie exactly.
Fp8Rows random_fp8_rows(int64_t rows, int64_t cols, const std::string& source, bool tied, double scale, uint64_t seed);

struct IndexerOperands {
  int64_t tokens = 0, heads = 0, head_dim = 0, cols = 0;  // cols: the width of a score row
  const double *q = nullptr, *k = nullptr;                 // [tokens, heads * head_dim], [keys, head_dim]
  const double *q_scale = nullptr, *k_scale = nullptr, *w = nullptr;  // [tokens, heads], [keys], [tokens, heads]
  std::vector<int64_t> key_base, visible;                 // per token
};

// The scores in fp64 (`exact`) and with the kernel's rounding points (`device`, may be null): fp32
// dot products, w * q_scale rounded to fp32, each weighted ReLU term rounded to fp32, the heads
// summed pairwise in fp32 as the vector unit's halving adds do (an odd tail folded first), and the
// k_scale product rounded to fp32.
void indexer_scores(const IndexerOperands& in, std::vector<double>* exact, std::vector<double>* device);

// The heads of one row summed as the kernel's halving adds do: with p the largest power of two
// <= n, v[i] += v[i + p] for i < n - p, then v[i] += v[i + h] for h = p/2, p/4, ..., 1; each add
// rounded to fp32. Returns v[0].
double halving_sum_f32(std::vector<double> v);

// Stable top-k of each row (descending, the lower column wins ties), where a pick whose score is
// not finite-or-+inf (-inf, NaN) becomes index -1 with value -inf: a row with fewer than k such
// scores is padded. indices and values are rows x k.
void topk_padded(int64_t rows, int64_t cols, const double* scores, int64_t k, int32_t* indices, double* values);

}  // namespace npusim::ref
