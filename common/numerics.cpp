#include "common/numerics.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <string>

#include "common/errors.hpp"

namespace npusim::num {
namespace {

// A small binary float: 1 sign bit, `exp_bits`, `man_bits`. `saturating` selects the OCP E4M3FN
// rules (no inf, only S.1..1.1..1 is NaN, out-of-range values clamp to max finite) instead of the
// IEEE ones (all-ones exponent is inf / NaN, overflow goes to inf).
struct MiniFloat {
  int exp_bits;
  int man_bits;
  int bias;
  bool saturating;

  constexpr uint32_t exp_all_ones() const { return (1u << exp_bits) - 1; }
  constexpr uint32_t inf_code() const { return exp_all_ones() << man_bits; }
  constexpr uint32_t max_finite_code() const {
    return saturating ? inf_code() | ((1u << man_bits) - 2) : inf_code() - 1;
  }
  constexpr uint32_t nan_code() const {  // the quiet NaN encode produces
    return saturating ? inf_code() | ((1u << man_bits) - 1) : inf_code() | (1u << (man_bits - 1));
  }
  constexpr int emin() const { return 1 - bias; }  // exponent of the smallest normal
  constexpr int emax() const { return static_cast<int>(max_finite_code() >> man_bits) - bias; }
};

constexpr MiniFloat kFp16{5, 10, 15, false};
constexpr MiniFloat kBf16{8, 7, 127, false};
constexpr MiniFloat kE4M3{4, 3, 7, true};
constexpr MiniFloat kE5M2{5, 2, 15, false};

// Rounds a double straight from its bits: the significand is shifted right to the target's
// precision (more for subnormal results) and the shifted-out bits decide RNE. One rounding only,
// so ties are exact; an intermediate float cast would round twice.
template <MiniFloat F>
uint32_t encode_mini(double v) {
  const uint64_t d = std::bit_cast<uint64_t>(v);
  const uint32_t sign = static_cast<uint32_t>(d >> 63) << (F.exp_bits + F.man_bits);
  const int de = static_cast<int>((d >> 52) & 0x7ff);
  const uint64_t dm = d & ((uint64_t{1} << 52) - 1);
  constexpr uint32_t kOverflow = F.saturating ? F.max_finite_code() : F.inf_code();
  if (de == 0x7ff) return sign | (dm != 0 ? F.nan_code() : kOverflow);
  // Zero, or a double subnormal (< 2^-1022): far below half the smallest subnormal of any target.
  if (de == 0) return sign;
  const int e = de - 1023;
  if (e > F.emax()) return sign | kOverflow;  // |v| >= 2^(emax+1): beyond every rounding threshold
  const uint64_t sig = dm | (uint64_t{1} << 52);
  const int shift = 52 - F.man_bits + (e < F.emin() ? F.emin() - e : 0);
  if (shift > 63) return sign;  // below 2^-10 of the smallest subnormal: rounds to zero
  uint64_t q = sig >> shift;
  const uint64_t rem = sig & ((uint64_t{1} << shift) - 1);
  const uint64_t half = uint64_t{1} << (shift - 1);
  q += static_cast<uint64_t>((rem > half) | ((rem == half) & ((q & 1) != 0)));
  // A normal result's biased exponent sits above the significand's implicit bit, so a carry out of
  // the mantissa (q == 2^(M+1)) bumps the exponent, and a subnormal rounding up to 2^M becomes the
  // smallest normal code without special cases.
  uint32_t mag = static_cast<uint32_t>(q);
  if (e >= F.emin()) mag += static_cast<uint32_t>(e + F.bias - 1) << F.man_bits;
  if (mag > F.max_finite_code()) mag = kOverflow;
  return sign | mag;
}

template <MiniFloat F>
double decode_mini(uint32_t bits) {
  const bool neg = (bits >> (F.exp_bits + F.man_bits)) & 1;
  const uint32_t exp = (bits >> F.man_bits) & F.exp_all_ones();
  const uint32_t man = bits & ((1u << F.man_bits) - 1);
  double mag;
  if (F.saturating ? (exp == F.exp_all_ones() && man == (1u << F.man_bits) - 1)
                   : (exp == F.exp_all_ones() && man != 0)) {
    mag = std::numeric_limits<double>::quiet_NaN();
  } else if (!F.saturating && exp == F.exp_all_ones()) {
    mag = std::numeric_limits<double>::infinity();
  } else if (exp == 0) {
    mag = std::ldexp(static_cast<double>(man), F.emin() - F.man_bits);
  } else {
    mag = std::ldexp(static_cast<double>(man | (1u << F.man_bits)),
                     static_cast<int>(exp) - F.bias - F.man_bits);
  }
  return std::copysign(mag, neg ? -1.0 : 1.0);
}

// Decoding 8- and 16-bit codes is a table lookup, built once on first use (thread-safe statics).
template <MiniFloat F>
const std::vector<double>& decode_table() {
  static const std::vector<double> table = [] {
    std::vector<double> t(size_t{1} << (1 + F.exp_bits + F.man_bits));
    for (size_t i = 0; i < t.size(); ++i) t[i] = decode_mini<F>(static_cast<uint32_t>(i));
    return t;
  }();
  return table;
}

// Round half to even, saturating; NaN -> 0. Result in two's complement, low `bits` bits.
template <int64_t Lo, int64_t Hi>
uint32_t encode_int(double v) {
  if (std::isnan(v)) return 0;
  int64_t r;
  if (v >= static_cast<double>(Hi)) {
    r = Hi;
  } else if (v <= static_cast<double>(Lo)) {
    r = Lo;
  } else {
    r = static_cast<int64_t>(v);                     // toward zero; |v| < 2^31 here
    const double frac = v - static_cast<double>(r);  // exact, in (-1, 1), same sign as v
    const bool odd = (r & 1) != 0;
    // Bitwise, not short-circuit: random fractions would defeat branch prediction.
    r += static_cast<int>((frac > 0.5) | ((frac == 0.5) & odd));
    r -= static_cast<int>((frac < -0.5) | ((frac == -0.5) & odd));
  }
  constexpr uint64_t kMask = static_cast<uint64_t>(Hi) * 2 + 1;
  return static_cast<uint32_t>(static_cast<uint64_t>(r) & kMask);
}

uint32_t encode_fp32(double v) {
  return std::bit_cast<uint32_t>(static_cast<float>(v));
}
double decode_fp32(uint32_t bits) {
  return std::bit_cast<float>(bits);
}
double decode_bf16(uint32_t bits) {
  return std::bit_cast<float>((bits & 0xffffu) << 16);
}
double decode_int8(uint32_t bits) {
  return static_cast<int8_t>(static_cast<uint8_t>(bits));
}
double decode_int32(uint32_t bits) {
  return static_cast<int32_t>(bits);
}

constexpr std::array<std::string_view, 7> kNames{"fp32",     "fp16", "bf16", "fp8_e4m3",
                                                 "fp8_e5m2", "int8", "int32"};
constexpr std::array<int, 7> kBytes{4, 2, 2, 1, 1, 1, 4};

size_t index(Format f) {
  return static_cast<size_t>(f);
}

void store_le(uint8_t* p, uint32_t bits, int bytes) {
  for (int b = 0; b < bytes; ++b) p[b] = static_cast<uint8_t>(bits >> (8 * b));
}

uint32_t load_le(const uint8_t* p, int bytes) {
  uint32_t bits = 0;
  for (int b = 0; b < bytes; ++b) bits |= static_cast<uint32_t>(p[b]) << (8 * b);
  return bits;
}

// The format switch is hoisted out of the element loop so each loop body inlines one converter.
template <int Bytes, class T, class Enc>
void encode_loop(const T* src, size_t n, void* dst, Enc enc) {
  auto* out = static_cast<uint8_t*>(dst);
  for (size_t i = 0; i < n; ++i) store_le(out + i * Bytes, enc(static_cast<double>(src[i])), Bytes);
}

template <int Bytes, class T, class Dec>
void decode_loop(const void* src, size_t n, T* dst, Dec dec) {
  const auto* in = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(dec(load_le(in + i * Bytes, Bytes)));
}

template <class T>
void encode_any(Format f, const T* src, size_t n, void* dst) {
  switch (f) {
    case Format::Fp32:
      return encode_loop<4>(src, n, dst, encode_fp32);
    case Format::Fp16:
      return encode_loop<2>(src, n, dst, encode_mini<kFp16>);
    case Format::Bf16:
      return encode_loop<2>(src, n, dst, encode_mini<kBf16>);
    case Format::Fp8E4M3:
      return encode_loop<1>(src, n, dst, encode_mini<kE4M3>);
    case Format::Fp8E5M2:
      return encode_loop<1>(src, n, dst, encode_mini<kE5M2>);
    case Format::Int8:
      return encode_loop<1>(src, n, dst, encode_int<-128, 127>);
    case Format::Int32:
      return encode_loop<4>(src, n, dst, encode_int<INT32_MIN, INT32_MAX>);
  }
  throw InternalError("num::encode_array: bad format " + std::to_string(index(f)));
}

template <class T>
void decode_any(Format f, const void* src, size_t n, T* dst) {
  switch (f) {
    case Format::Fp32:
      return decode_loop<4>(src, n, dst, decode_fp32);
    case Format::Fp16: {
      const double* t = decode_table<kFp16>().data();
      return decode_loop<2>(src, n, dst, [t](uint32_t b) { return t[b]; });
    }
    case Format::Bf16:
      return decode_loop<2>(src, n, dst, decode_bf16);
    case Format::Fp8E4M3: {
      const double* t = decode_table<kE4M3>().data();
      return decode_loop<1>(src, n, dst, [t](uint32_t b) { return t[b]; });
    }
    case Format::Fp8E5M2: {
      const double* t = decode_table<kE5M2>().data();
      return decode_loop<1>(src, n, dst, [t](uint32_t b) { return t[b]; });
    }
    case Format::Int8:
      return decode_loop<1>(src, n, dst, decode_int8);
    case Format::Int32:
      return decode_loop<4>(src, n, dst, decode_int32);
  }
  throw InternalError("num::decode_array: bad format " + std::to_string(index(f)));
}

// Smallest power of two >= s (s finite, > 0): the ue8m0 scale.
float pow2_ceil(float s) {
  int e = 0;
  const float m = std::frexp(s, &e);  // s = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.0f, m == 0.5f ? e - 1 : e);
}

}  // namespace

std::string_view format_name(Format f) {
  if (index(f) >= kNames.size()) throw InternalError("num::format_name: bad format");
  return kNames[index(f)];
}

std::optional<Format> format_from_name(std::string_view name) {
  for (size_t i = 0; i < kNames.size(); ++i) {
    if (kNames[i] == name) return static_cast<Format>(i);
  }
  return std::nullopt;
}

int format_bytes(Format f) {
  if (index(f) >= kBytes.size()) throw InternalError("num::format_bytes: bad format");
  return kBytes[index(f)];
}

bool is_float(Format f) {
  return f != Format::Int8 && f != Format::Int32;
}

double max_finite(Format f) {
  switch (f) {
    case Format::Fp32:
      return std::numeric_limits<float>::max();
    case Format::Fp16:
      return 65504.0;
    case Format::Bf16:
      return decode_bf16(0x7f7f);
    case Format::Fp8E4M3:
      return 448.0;
    case Format::Fp8E5M2:
      return 57344.0;
    case Format::Int8:
      return 127.0;
    case Format::Int32:
      return 2147483647.0;
  }
  throw InternalError("num::max_finite: bad format");
}

uint32_t encode(Format f, double v) {
  switch (f) {
    case Format::Fp32:
      return encode_fp32(v);
    case Format::Fp16:
      return encode_mini<kFp16>(v);
    case Format::Bf16:
      return encode_mini<kBf16>(v);
    case Format::Fp8E4M3:
      return encode_mini<kE4M3>(v);
    case Format::Fp8E5M2:
      return encode_mini<kE5M2>(v);
    case Format::Int8:
      return encode_int<-128, 127>(v);
    case Format::Int32:
      return encode_int<INT32_MIN, INT32_MAX>(v);
  }
  throw InternalError("num::encode: bad format");
}

double decode(Format f, uint32_t bits) {
  switch (f) {
    case Format::Fp32:
      return decode_fp32(bits);
    case Format::Fp16:
      return decode_table<kFp16>()[bits & 0xffffu];
    case Format::Bf16:
      return decode_bf16(bits);
    case Format::Fp8E4M3:
      return decode_table<kE4M3>()[bits & 0xffu];
    case Format::Fp8E5M2:
      return decode_table<kE5M2>()[bits & 0xffu];
    case Format::Int8:
      return decode_int8(bits);
    case Format::Int32:
      return decode_int32(bits);
  }
  throw InternalError("num::decode: bad format");
}

void encode_array(Format f, const double* src, size_t n, void* dst) {
  encode_any(f, src, n, dst);
}
void encode_array(Format f, const float* src, size_t n, void* dst) {
  encode_any(f, src, n, dst);
}
void decode_array(Format f, const void* src, size_t n, double* dst) {
  decode_any(f, src, n, dst);
}
void decode_array(Format f, const void* src, size_t n, float* dst) {
  decode_any(f, src, n, dst);
}

BlockScaled quantize_blocks(Format fp8, const float* x, size_t n, int block, bool ue8m0) {
  if (fp8 != Format::Fp8E4M3 && fp8 != Format::Fp8E5M2) {
    throw InternalError("num::quantize_blocks: format must be fp8_e4m3 or fp8_e5m2, got " +
                        std::string(format_name(fp8)));
  }
  if (block <= 0) throw InternalError("num::quantize_blocks: block must be > 0");
  // The act_quant constants are fp32 on the device: floor 1e-4f, fmax 448.0f / 57344.0f.
  constexpr float kAmaxFloor = 1e-4f;
  const float fmax = static_cast<float>(max_finite(fp8));
  const size_t b = static_cast<size_t>(block);
  BlockScaled q{fp8, block, ue8m0, std::vector<uint8_t>(n), std::vector<float>((n + b - 1) / b)};
  for (size_t blk = 0; blk < q.scales.size(); ++blk) {
    const size_t lo = blk * b;
    const size_t hi = std::min(n, lo + b);
    float amax = 0.0f;
    for (size_t i = lo; i < hi; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    amax = std::max(amax, kAmaxFloor);
    float scale = amax / fmax;
    if (ue8m0 && std::isfinite(scale)) scale = pow2_ceil(scale);
    q.scales[blk] = scale;
    for (size_t i = lo; i < hi; ++i) {
      float y = x[i] / scale;  // fp32 quotient, then one fp32 -> fp8 rounding, as on the device
      if (!std::isnan(y)) y = std::clamp(y, -fmax, fmax);
      q.codes[i] = static_cast<uint8_t>(encode(fp8, y));
    }
  }
  return q;
}

void dequantize_blocks(const BlockScaled& q, float* out) {
  if (q.block <= 0) throw InternalError("num::dequantize_blocks: block must be > 0");
  const size_t b = static_cast<size_t>(q.block);
  if (q.scales.size() != (q.codes.size() + b - 1) / b) {
    throw InternalError("num::dequantize_blocks: " + std::to_string(q.scales.size()) +
                        " scales for " + std::to_string(q.codes.size()) + " codes in blocks of " +
                        std::to_string(b));
  }
  if (q.format != Format::Fp8E4M3 && q.format != Format::Fp8E5M2) {
    throw InternalError("num::dequantize_blocks: not an fp8 format");
  }
  const double* t =
      q.format == Format::Fp8E4M3 ? decode_table<kE4M3>().data() : decode_table<kE5M2>().data();
  for (size_t i = 0; i < q.codes.size(); ++i) {
    out[i] = static_cast<float>(t[q.codes[i]]) * q.scales[i / b];
  }
}

}  // namespace npusim::num
