// CPU reference of DeepSeek-V4's KV compressor (KERNELS.md 2.5, 4.2), and two pieces other V4
// kernels share with it: rotary embedding with an explicit pair layout and position of the rotated
// dims, and DeepSeek's per-block FP8 e4m3 fake quantisation (act_quant with ue8m0 scales).
//
// Compressor definition (per sequence; c = 2 when overlapped, else 1; rows hold c*d channels):
//   kvp_t = x_t Wkv,  sc_t = x_t Wgate + ape[pos_t mod m]
//   entry i (block i = positions [i m, i m + m)) pools, per channel ch < d,
//     rows of block i with channel (c-1) d + ch, and (overlap, i >= 1) rows of block i-1 with
//     channel ch: C_i[ch] = sum_rows softmax_rows(sc)[ch] * kvp[ch]. Block 0's missing previous half
//     is (kv 0, score -inf): it contributes nothing.
//   C_i <- RMSNorm_w(C_i); RoPE on `rope.dims` dims at position i m; optional FP8 fake quant of the
//   other dims (block 64).
// A call brings `tokens` new tokens to each sequence, starting at starts[b]. Entry i is emitted
// when its block completes in this call: i m + m - 1 in [start, start + tokens). Entries come out in
// sequence order, then block order.
// State per sequence: c m rows of c d channels (fp32 on the device), the port's layout: with
// overlap rows [0, m) hold the last complete block and rows [m, 2m) the current block's rows so
// far; without, rows [0, m) hold the current block's rows so far. The score state holds sc with
// ape added. Rows that do not hold a valid position are not read, and a call rewrites only the rows
// whose content changes (the kernel updates the state in place).
//
// Contract as reference.hpp: row-major arrays, std::invalid_argument on bad arguments, the double
// overloads in fp64 throughout; the float overloads round every step to fp32 (the device's
// rounding points, for the same-precision golden of KERNELS.md 5.2).
#pragma once

#include <cstdint>
#include <vector>

namespace npusim::ref {

// Interleaved: pairs (2k, 2k+1) (V4, HF rope_interleave); Half: pairs (k, k + dims/2) (NeoX, the
// V3.2 indexer). Pair k turns by position * theta^(-2k/dims).
enum class RopeLayout { Interleaved, Half };

struct RopeSpec {
  RopeLayout layout = RopeLayout::Interleaved;
  int64_t dims = 64;     // rotated dims (even)
  bool at_tail = true;   // the last `dims` dims of a row (V4) or the first (V3.2 indexer)
  double theta = 10000;  // a YaRN-scaled table changes only rope_tables' angles
  int64_t offset(int64_t cols) const { return at_tail ? cols - dims : 0; }
};

// Within the rotated dims: the pair index of dim j, the other dim of its pair, and the sign its
// partner's term takes: y_j = x_j cos_k + sign_j x_partner sin_k (-1 on a pair's first dim).
int64_t rope_pair(const RopeSpec& r, int64_t j);
int64_t rope_partner(const RopeSpec& r, int64_t j);
double rope_sign(const RopeSpec& r, int64_t j);

// cos / sin tables (rows x dims) expanded to the layout: row i, dim j holds cos / sin of
// positions[i] * theta^(-2 k/dims), k = rope_pair(j).
void rope_tables(const RopeSpec& r, int64_t rows, const int64_t* positions, double* cos, double* sin);

// Rotates the rope dims of each row (rows x cols) in place with expanded tables (rows x dims).
// The float overload rounds as the device does: fl(fl(x cos) + fl(fl(sign sin) x_partner)).
void rope_rows(const RopeSpec& r, int64_t rows, int64_t cols, double* x, const double* cos, const double* sin);
void rope_rows(const RopeSpec& r, int64_t rows, int64_t cols, float* x, const float* cos, const float* sin);

// FP8 e4m3 fake quantisation of n values in blocks of `block` (the last may be shorter): amax =
// max |x| floored at 1e-4, scale = 2^ceil(log2(amax / 448)) (ue8m0), x <- e4m3(x / scale) * scale,
// rounding to nearest even and saturating at +-448. The double overload takes the quotient exactly;
// the float one as num::quantize_blocks (fp32 quotient, as the device).
void fp8_fake_quant(double* x, int64_t n, int64_t block);
void fp8_fake_quant(float* x, int64_t n, int64_t block);

// The fp64 fake quantisation of x, except where it is ambiguous to within what fp32 arithmetic
// upstream of the quantiser can move x: a block whose amax / 448 lies within a relative `tol` of a
// power of two may take either scale, and an element within tol * (|x| + amax) of a rounding
// midpoint either code. There the alternative the device produced (`device`) is taken (KERNELS.md
// 5.2: code flips only at rounding ties). Returns how many elements took the alternative.
int64_t fp8_fake_quant_like(const double* x, const double* device, int64_t n, int64_t block, double tol, double* out);

struct CompressorConfig {
  int64_t hidden = 0, head_dim = 0, ratio = 4;
  bool overlap = true;
  double eps = 1e-6;
  RopeSpec rope;
  bool fp8 = false;  // fake-quantise the dims outside the rope dims (blocks of 64)
  int64_t tokens = 0;
  std::vector<int64_t> starts;  // one per sequence

  int coff() const { return overlap ? 2 : 1; }
  int64_t batch() const { return static_cast<int64_t>(starts.size()); }
  int64_t state_rows() const { return coff() * ratio; }  // per sequence
  int64_t entries() const;                               // emitted by the call, all sequences
};

template <class T>
struct CompressorResult {
  std::vector<T> entries;   // entries() x head_dim: normalised, rotated and (fp8) fake-quantised
  std::vector<T> prequant;  // the same before the fake quantisation
  std::vector<T> kv_state, score_state;  // batch * state_rows x coff * head_dim, after the call
};

// x [batch * tokens, hidden] (sequence-major); w_kv, w_gate [hidden, coff * head_dim]; ape
// [ratio, coff * head_dim]; norm_weight [head_dim]; kv_state, score_state [batch * state_rows,
// coff * head_dim]; cos, sin [entries(), rope.dims] (expanded tables at the entries' positions).
CompressorResult<double> compressor(const CompressorConfig& c, const double* x, const double* w_kv,
                                    const double* w_gate, const double* ape, const double* norm_weight,
                                    const double* kv_state, const double* score_state, const double* cos,
                                    const double* sin);
CompressorResult<float> compressor(const CompressorConfig& c, const float* x, const float* w_kv, const float* w_gate,
                                   const float* ape, const float* norm_weight, const float* kv_state,
                                   const float* score_state, const float* cos, const float* sin);

}  // namespace npusim::ref
