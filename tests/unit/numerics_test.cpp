// Bit-exact number formats against independent references: the compiler's _Float16 for fp16, the
// float RNE bias trick and a textbook decode for bf16, and a brute-force nearest-value search over
// all codes for fp8. Every 16-bit pattern and every fp8 code is covered.
#include "common/numerics.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/errors.hpp"

namespace npusim::num {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double up(double x) {
  return std::nextafter(x, kInf);
}
double down(double x) {
  return std::nextafter(x, -kInf);
}

// ---- Independent references ----------------------------------------------------------------

// A binary float layout decoded by the textbook formula
//   (-1)^s * 2^(1-bias) * 0.m        for exp == 0,
//   (-1)^s * 2^(exp-bias) * 1.m      otherwise,
// with IEEE specials (exp all ones) or the E4M3FN special (only S.1111.111 is NaN).
struct Layout {
  Format format;
  int exp_bits;
  int man_bits;
  int bias;
  bool fn;  // E4M3FN: no inf, single NaN pattern, saturating conversion

  int bits() const { return 1 + exp_bits + man_bits; }
  uint32_t codes() const { return 1u << bits(); }
  uint32_t sign_bit() const { return 1u << (bits() - 1); }
  uint32_t exp_ones() const { return (1u << exp_bits) - 1; }
  uint32_t inf_code() const { return exp_ones() << man_bits; }
  uint32_t max_code() const { return fn ? (inf_code() | ((1u << man_bits) - 2)) : inf_code() - 1; }
};

constexpr Layout kFp16L{Format::Fp16, 5, 10, 15, false};
constexpr Layout kBf16L{Format::Bf16, 8, 7, 127, false};
constexpr Layout kE4M3L{Format::Fp8E4M3, 4, 3, 7, true};
constexpr Layout kE5M2L{Format::Fp8E5M2, 5, 2, 15, false};

double textbook_decode(const Layout& l, uint32_t code) {
  const bool neg = (code & l.sign_bit()) != 0;
  const uint32_t exp = (code >> l.man_bits) & l.exp_ones();
  const uint32_t man = code & ((1u << l.man_bits) - 1);
  const double frac = static_cast<double>(man) / static_cast<double>(1u << l.man_bits);
  double mag;
  if (l.fn && exp == l.exp_ones() && man == (1u << l.man_bits) - 1) {
    mag = kNaN;
  } else if (!l.fn && exp == l.exp_ones()) {
    mag = man != 0 ? kNaN : kInf;
  } else if (exp == 0) {
    mag = frac * std::pow(2.0, 1 - l.bias);
  } else {
    mag = (1.0 + frac) * std::pow(2.0, static_cast<int>(exp) - l.bias);
  }
  return neg ? -mag : mag;
}

// Nearest representable value by search: the largest positive value a <= |v| and its successor b
// (for IEEE layouts inf stands at 2^(emax+1), which gives the RNE overflow threshold); compare
// |v| with the midpoint, which is exact in double; ties go to the even code.
struct BruteForce {
  Layout l;
  std::vector<double> values;  // positive finite values by code, then the inf stand-in

  explicit BruteForce(const Layout& layout) : l(layout) {
    for (uint32_t c = 0; c <= l.max_code(); ++c) values.push_back(textbook_decode(l, c));
    if (!l.fn) values.push_back(2.0 * std::pow(2.0, static_cast<int>(l.exp_ones()) - 1 - l.bias));
  }

  uint32_t encode(double v) const {
    const uint32_t sign = std::signbit(v) ? l.sign_bit() : 0;
    if (std::isnan(v)) {
      return sign | (l.fn ? (l.inf_code() | ((1u << l.man_bits) - 1))
                          : (l.inf_code() | (1u << (l.man_bits - 1))));
    }
    const double a = std::fabs(v);
    const uint32_t overflow = l.fn ? l.max_code() : l.inf_code();
    if (a >= values.back()) return sign | (l.fn ? l.max_code() : overflow);
    // values is increasing, so the search for the largest value <= a can bisect.
    const auto k = static_cast<uint32_t>(std::upper_bound(values.begin(), values.end(), a) -
                                         values.begin() - 1);
    uint32_t c;
    if (values[k] == a) {
      c = k;
    } else {
      const double mid = (values[k] + values[k + 1]) / 2;
      c = a < mid ? k : a > mid ? k + 1 : (k % 2 == 0 ? k : k + 1);
    }
    return sign | c;
  }
};

// bf16 from float by the usual bias trick: add 0x7fff plus the lsb of the kept part, truncate.
uint16_t bf16_bias_trick(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

double f16_ref_decode(uint32_t code) {
  return static_cast<double>(std::bit_cast<_Float16>(static_cast<uint16_t>(code)));
}
uint32_t f16_ref_encode(double v) {
  return std::bit_cast<uint16_t>(static_cast<_Float16>(v));
}

// Same value, or both NaN, with the same sign (signed zeros differ).
void expect_same(double got, double want, uint32_t code) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << "code 0x" << std::hex << code;
  } else {
    EXPECT_EQ(got, want) << "code 0x" << std::hex << code;
    EXPECT_EQ(std::signbit(got), std::signbit(want)) << "code 0x" << std::hex << code;
  }
}

// ---- Shared checks for every small float layout ----------------------------------------------

void check_decode_all(const Layout& l, double (*ref)(const Layout&, uint32_t)) {
  for (uint32_t c = 0; c < l.codes(); ++c) expect_same(decode(l.format, c), ref(l, c), c);
}

void check_round_trip_all(const Layout& l) {
  int failures = 0;
  for (uint32_t c = 0; c < l.codes() && failures < 10; ++c) {
    const double v = decode(l.format, c);
    if (std::isnan(v)) continue;
    if (encode(l.format, v) != c) {
      ++failures;
      ADD_FAILURE() << "code 0x" << std::hex << c << " -> " << v << " -> 0x" << encode(l.format, v);
    }
  }
}

// For every pair of adjacent representable values (both signs), the exact midpoint goes to the
// even code and its double neighbours go to the nearer value. `ref` is an independent encoder.
template <class Ref>
void check_midpoints(const Layout& l, Ref ref) {
  int failures = 0;
  auto check = [&](double x, uint32_t want) {
    const uint32_t got = encode(l.format, x);
    const uint32_t r = ref(x);
    if ((got != want || r != want) && ++failures <= 10) {
      ADD_FAILURE() << std::hexfloat << x << ": got 0x" << std::hex << got << ", reference 0x" << r
                    << ", expected 0x" << want;
    }
  };
  for (uint32_t c = 0; c < l.max_code(); ++c) {
    for (uint32_t sign : {0u, l.sign_bit()}) {
      const uint32_t lo = c | sign, hi = (c + 1) | sign;
      const double a = decode(l.format, lo), b = decode(l.format, hi);
      const double mid = (a + b) / 2;
      ASSERT_EQ(mid - a, b - mid);  // the midpoint is exact in double
      check(mid, c % 2 == 0 ? lo : hi);
      check(sign ? up(mid) : down(mid), lo);
      check(sign ? down(mid) : up(mid), hi);
    }
  }
}

// Random doubles of every magnitude around the format's range, plus random bit patterns.
template <class Ref>
void check_random(const Layout& l, Ref ref, int n) {
  std::mt19937_64 rng(1234 + static_cast<int>(l.format));
  const int emax = static_cast<int>(l.exp_ones()) - l.bias;
  std::uniform_int_distribution<int> exp_dist(1 - l.bias - l.man_bits - 3, emax + 2);
  std::uniform_real_distribution<double> frac(1.0, 2.0);
  int failures = 0;
  for (int i = 0; i < n && failures < 10; ++i) {
    double v = std::ldexp(frac(rng), exp_dist(rng));
    if (i % 2) v = -v;
    if (i % 7 == 0) v = std::bit_cast<double>(rng());
    const uint32_t got = encode(l.format, v), want = ref(v);
    const bool both_nan = std::isnan(v) && std::isnan(decode(l.format, got));
    if (got != want && !both_nan) {
      ++failures;
      ADD_FAILURE() << std::hexfloat << v << ": got 0x" << std::hex << got << ", want 0x" << want;
    }
  }
}

void check_signed_zeros_and_subnormals(const Layout& l) {
  const Format f = l.format;
  const double min_sub = std::ldexp(1.0, 1 - l.bias - l.man_bits);
  const double min_normal = std::ldexp(1.0, 1 - l.bias);
  EXPECT_EQ(encode(f, 0.0), 0u);
  EXPECT_EQ(encode(f, -0.0), l.sign_bit());
  EXPECT_TRUE(std::signbit(decode(f, l.sign_bit())));
  EXPECT_EQ(decode(f, l.sign_bit()), 0.0);
  EXPECT_EQ(decode(f, 1), min_sub);
  EXPECT_EQ(decode(f, (1u << l.man_bits) - 1), min_normal - min_sub);  // max subnormal
  EXPECT_EQ(decode(f, 1u << l.man_bits), min_normal);
  EXPECT_EQ(encode(f, min_sub), 1u);
  EXPECT_EQ(encode(f, -min_sub), l.sign_bit() | 1);
  EXPECT_EQ(encode(f, min_sub / 2), 0u);             // tie with zero: even code 0
  EXPECT_EQ(encode(f, -min_sub / 2), l.sign_bit());  // and the sign survives
  EXPECT_EQ(encode(f, up(min_sub / 2)), 1u);
  EXPECT_EQ(encode(f, -1e-300), l.sign_bit());
  EXPECT_EQ(encode(f, std::numeric_limits<double>::denorm_min()), 0u);
  EXPECT_EQ(encode(f, -std::numeric_limits<double>::denorm_min()), l.sign_bit());
  EXPECT_EQ(encode(f, min_sub * 1.5), 2u);  // tie between codes 1 and 2 goes to even
  EXPECT_EQ(encode(f, min_sub * 2.5), 2u);
  EXPECT_EQ(encode(f, min_normal - min_sub / 2), 1u << l.man_bits);  // max subnormal ties upward
}

// IEEE layouts: overflow to inf at the midpoint between max finite and 2^(emax+1).
void check_overflow_to_inf(const Layout& l) {
  const Format f = l.format;
  const double max = decode(f, l.max_code());
  const double next_pow = std::ldexp(1.0, static_cast<int>(l.exp_ones()) - l.bias);
  const double threshold = (max + next_pow) / 2;
  EXPECT_EQ(encode(f, max), l.max_code());
  EXPECT_EQ(encode(f, down(threshold)), l.max_code());
  EXPECT_EQ(encode(f, threshold), l.inf_code());
  EXPECT_EQ(encode(f, -threshold), l.sign_bit() | l.inf_code());
  EXPECT_EQ(encode(f, -down(threshold)), l.sign_bit() | l.max_code());
  EXPECT_EQ(encode(f, 1e300), l.inf_code());
  EXPECT_EQ(encode(f, std::numeric_limits<double>::max()), l.inf_code());
  EXPECT_EQ(encode(f, kInf), l.inf_code());
  EXPECT_EQ(encode(f, -kInf), l.sign_bit() | l.inf_code());
  EXPECT_EQ(decode(f, l.inf_code()), kInf);
  EXPECT_EQ(decode(f, l.sign_bit() | l.inf_code()), -kInf);
  EXPECT_EQ(max_finite(f), max);
}

// NaN encodes to the quiet NaN (top mantissa bit) with the sign kept.
void check_nan_encoding(const Layout& l) {
  const uint32_t qnan = l.inf_code() | (1u << (l.man_bits - 1));
  EXPECT_EQ(encode(l.format, kNaN), qnan);
  EXPECT_EQ(encode(l.format, -kNaN), l.sign_bit() | qnan);
  EXPECT_TRUE(std::isnan(decode(l.format, qnan)));
  EXPECT_TRUE(std::isnan(decode(l.format, l.inf_code() | 1)));  // signalling patterns decode too
}

// ---- Names and sizes --------------------------------------------------------------------------

TEST(NumFormat, NamesAndSizesRoundTrip) {
  const std::vector<std::pair<Format, int>> all{
      {Format::Fp32, 4},    {Format::Fp16, 2}, {Format::Bf16, 2}, {Format::Fp8E4M3, 1},
      {Format::Fp8E5M2, 1}, {Format::Int8, 1}, {Format::Int32, 4}};
  for (auto [f, bytes] : all) {
    EXPECT_EQ(format_from_name(format_name(f)), f);
    EXPECT_EQ(format_bytes(f), bytes) << format_name(f);
  }
  EXPECT_EQ(format_name(Format::Fp8E4M3), "fp8_e4m3");
  EXPECT_EQ(format_name(Format::Fp8E5M2), "fp8_e5m2");
  EXPECT_EQ(format_from_name("fp64"), std::nullopt);
  EXPECT_EQ(format_from_name("FP16"), std::nullopt);
}

// ---- fp16 against _Float16 ------------------------------------------------------------------

TEST(Fp16, DecodeMatchesFloat16ForAllBitPatterns) {
  check_decode_all(kFp16L, [](const Layout&, uint32_t c) { return f16_ref_decode(c); });
}

TEST(Fp16, AllBitPatternsRoundTrip) {
  check_round_trip_all(kFp16L);
  for (uint32_t c = 0; c < kFp16L.codes(); ++c) {  // and agree with the compiler's cast
    const double v = f16_ref_decode(c);
    if (std::isnan(v)) continue;
    ASSERT_EQ(encode(Format::Fp16, v), f16_ref_encode(v)) << c;
  }
}

TEST(Fp16, MidpointsRoundToEvenAndNeighboursRoundAway) {
  check_midpoints(kFp16L, f16_ref_encode);
}

TEST(Fp16, RandomDoublesMatchFloat16Cast) {
  check_random(kFp16L, f16_ref_encode, 300000);
}

TEST(Fp16, OverflowsToInfAtMidpointAboveMax) {
  check_overflow_to_inf(kFp16L);
  EXPECT_EQ(encode(Format::Fp16, 65519.999), 0x7bffu);
  EXPECT_EQ(encode(Format::Fp16, 65520.0), 0x7c00u);
  EXPECT_EQ(f16_ref_encode(65520.0), 0x7c00u);
}

TEST(Fp16, SignedZerosAndSubnormals) {
  check_signed_zeros_and_subnormals(kFp16L);
  EXPECT_EQ(decode(Format::Fp16, 0x0001), 0x1p-24);
  EXPECT_EQ(decode(Format::Fp16, 0x03ff), 0x3ffp-24);
}

TEST(Fp16, NanEncodesToQuietNanWithSign) {
  check_nan_encoding(kFp16L);
  EXPECT_EQ(encode(Format::Fp16, kNaN), 0x7e00u);
  EXPECT_EQ(encode(Format::Fp16, -kNaN), 0xfe00u);
}

// ---- bf16 against the float bias trick and exact-double midpoints ---------------------------

TEST(Bf16, DecodeMatchesTextbookForAllBitPatterns) {
  check_decode_all(kBf16L, textbook_decode);
}

TEST(Bf16, AllBitPatternsRoundTrip) {
  check_round_trip_all(kBf16L);
  for (uint32_t c = 0; c < kBf16L.codes(); ++c) {
    const float v = static_cast<float>(textbook_decode(kBf16L, c));
    if (std::isnan(v)) continue;
    ASSERT_EQ(bf16_bias_trick(v), c);  // the reference agrees on the grid
  }
}

TEST(Bf16, FloatInputsMatchBiasTrick) {
  // Midpoints and their float neighbours: float has enough bits to hold every bf16 midpoint.
  int failures = 0;
  auto check = [&](float x) {
    const uint32_t got = encode(Format::Bf16, x), want = bf16_bias_trick(x);
    if (got != want && ++failures <= 10) {
      ADD_FAILURE() << std::hexfloat << x << ": got 0x" << std::hex << got << ", want 0x" << want;
    }
  };
  for (uint32_t c = 0; c < kBf16L.max_code(); ++c) {
    for (uint32_t sign : {0u, kBf16L.sign_bit()}) {
      const float mid = static_cast<float>(
          (textbook_decode(kBf16L, c | sign) + textbook_decode(kBf16L, (c + 1) | sign)) / 2);
      check(mid);
      check(std::nextafter(mid, 0.0f));
      check(std::nextafter(mid, std::numeric_limits<float>::infinity() * (sign ? -1.0f : 1.0f)));
    }
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 1000000; ++i) {  // random float bit patterns (NaNs excluded: payload-free)
    const float x = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    if (!std::isnan(x)) check(x);
  }
}

TEST(Bf16, ExactDoubleMidpointsRoundToEven) {
  // Double neighbours of a midpoint are not floats: a double -> float -> bf16 path would round
  // them onto the midpoint and then to even. The brute-force search is the reference here.
  const BruteForce bf(kBf16L);
  check_midpoints(kBf16L, [&](double x) { return bf.encode(x); });
}

TEST(Bf16, RandomDoublesMatchBruteForce) {
  const BruteForce bf(kBf16L);
  check_random(
      kBf16L, [&](double x) { return bf.encode(x); }, 300000);
}

TEST(Bf16, OverflowSignedZerosAndNan) {
  check_overflow_to_inf(kBf16L);
  check_signed_zeros_and_subnormals(kBf16L);
  check_nan_encoding(kBf16L);
  EXPECT_EQ(encode(Format::Bf16, kNaN), 0x7fc0u);
  EXPECT_EQ(encode(Format::Bf16, 1.0), 0x3f80u);
  EXPECT_EQ(encode(Format::Bf16, static_cast<double>(std::numeric_limits<float>::max())), 0x7f80u);
}

// ---- fp8 against the textbook decode and brute-force search ---------------------------------

void check_fp8_against_brute_force(const Layout& l) {
  const BruteForce bf(l);
  check_decode_all(l, textbook_decode);
  check_round_trip_all(l);
  check_midpoints(l, [&](double x) { return bf.encode(x); });
  check_random(
      l, [&](double x) { return bf.encode(x); }, 200000);
}

TEST(Fp8E4M3, DecodeRoundTripMidpointsAndRandomMatchBruteForce) {
  check_fp8_against_brute_force(kE4M3L);
}

TEST(Fp8E5M2, DecodeRoundTripMidpointsAndRandomMatchBruteForce) {
  check_fp8_against_brute_force(kE5M2L);
}

TEST(Fp8E4M3, OnlyAllOnesIsNanAndNoInfinity) {
  int nans = 0;
  for (uint32_t c = 0; c < 256; ++c) {
    const double v = decode(Format::Fp8E4M3, c);
    EXPECT_FALSE(std::isinf(v)) << c;
    if (std::isnan(v)) {
      ++nans;
      EXPECT_EQ(c & 0x7f, 0x7fu);
    }
  }
  EXPECT_EQ(nans, 2);
  EXPECT_EQ(decode(Format::Fp8E4M3, 0x7e), 448.0);
  EXPECT_EQ(decode(Format::Fp8E4M3, 0x78), 256.0);  // exponent 1111 is a normal binade
  EXPECT_EQ(encode(Format::Fp8E4M3, kNaN), 0x7fu);
  EXPECT_EQ(encode(Format::Fp8E4M3, -kNaN), 0xffu);
  EXPECT_EQ(max_finite(Format::Fp8E4M3), 448.0);
}

TEST(Fp8E4M3, SaturatesTo448IncludingInfinity) {
  const Format f = Format::Fp8E4M3;
  EXPECT_EQ(encode(f, 448.0), 0x7eu);
  EXPECT_EQ(encode(f, 464.0), 0x7eu);  // midpoint to the would-be 480
  EXPECT_EQ(encode(f, 479.0), 0x7eu);
  EXPECT_EQ(encode(f, 480.0), 0x7eu);
  EXPECT_EQ(encode(f, 1e6), 0x7eu);
  EXPECT_EQ(encode(f, 1e300), 0x7eu);
  EXPECT_EQ(encode(f, -500.0), 0xfeu);
  EXPECT_EQ(encode(f, kInf), 0x7eu);
  EXPECT_EQ(encode(f, -kInf), 0xfeu);
  EXPECT_EQ(encode(f, 432.0), 0x7eu);  // tie between 416 (0x7d) and 448 (0x7e): even code
  EXPECT_EQ(encode(f, down(432.0)), 0x7du);
}

TEST(Fp8E4M3, SignedZerosAndSubnormals) {
  check_signed_zeros_and_subnormals(kE4M3L);
  EXPECT_EQ(decode(Format::Fp8E4M3, 0x01), 0x1p-9);
  EXPECT_EQ(decode(Format::Fp8E4M3, 0x07), 7 * 0x1p-9);
  EXPECT_EQ(decode(Format::Fp8E4M3, 0x08), 0x1p-6);
}

TEST(Fp8E5M2, OverflowsToInfAndKeepsNan) {
  check_overflow_to_inf(kE5M2L);
  check_nan_encoding(kE5M2L);
  EXPECT_EQ(decode(Format::Fp8E5M2, 0x7b), 57344.0);
  EXPECT_EQ(encode(Format::Fp8E5M2, 61440.0), 0x7cu);  // midpoint to 65536 -> inf
  EXPECT_EQ(encode(Format::Fp8E5M2, down(61440.0)), 0x7bu);
  EXPECT_EQ(encode(Format::Fp8E5M2, kNaN), 0x7eu);
}

TEST(Fp8E5M2, SignedZerosAndSubnormals) {
  check_signed_zeros_and_subnormals(kE5M2L);
  EXPECT_EQ(decode(Format::Fp8E5M2, 0x01), 0x1p-16);
  EXPECT_EQ(decode(Format::Fp8E5M2, 0x04), 0x1p-14);
}

// ---- fp32 and integers ------------------------------------------------------------------------

TEST(Fp32, EncodeIsTheRoundToNearestEvenCast) {
  const Format f = Format::Fp32;
  EXPECT_EQ(encode(f, 0.1), std::bit_cast<uint32_t>(0.1f));
  EXPECT_EQ(encode(f, 1.0 + 0x1p-24), 0x3f800000u);            // tie -> even
  EXPECT_EQ(encode(f, 1.0 + 0x1p-24 + 0x1p-50), 0x3f800001u);  // just above
  EXPECT_EQ(encode(f, 1.0 + 3 * 0x1p-24), 0x3f800002u);        // tie -> even (up)
  EXPECT_EQ(encode(f, -0.0), 0x80000000u);
  EXPECT_EQ(encode(f, 1e300), 0x7f800000u);
  EXPECT_EQ(encode(f, -1e-300), 0x80000000u);
  EXPECT_TRUE(std::isnan(decode(f, encode(f, kNaN))));
  EXPECT_EQ(decode(f, 0x3f800000u), 1.0);
  EXPECT_EQ(decode(f, 0x00000001u), 0x1p-149);
}

TEST(Int8, RoundsHalfToEvenAndSaturates) {
  const Format f = Format::Int8;
  auto r = [&](double v) { return decode(f, encode(f, v)); };
  EXPECT_EQ(r(2.5), 2);
  EXPECT_EQ(r(3.5), 4);
  EXPECT_EQ(r(-2.5), -2);
  EXPECT_EQ(r(-3.5), -4);
  EXPECT_EQ(r(0.5), 0);
  EXPECT_EQ(r(1.5), 2);
  EXPECT_EQ(r(down(2.5)), 2);
  EXPECT_EQ(r(up(2.5)), 3);
  EXPECT_EQ(r(-0.4), 0);
  EXPECT_EQ(r(126.5), 126);
  EXPECT_EQ(r(127.5), 127);
  EXPECT_EQ(r(200), 127);
  EXPECT_EQ(r(-128.5), -128);
  EXPECT_EQ(r(-1000), -128);
  EXPECT_EQ(r(kInf), 127);
  EXPECT_EQ(r(-kInf), -128);
  EXPECT_EQ(encode(f, kNaN), 0u);
  EXPECT_EQ(encode(f, -1), 0xffu);
  EXPECT_EQ(encode(f, -128), 0x80u);
  for (int i = -128; i <= 127; ++i) EXPECT_EQ(decode(f, encode(f, i)), i);
}

TEST(Int32, RoundsHalfToEvenAndSaturates) {
  const Format f = Format::Int32;
  auto r = [&](double v) { return decode(f, encode(f, v)); };
  EXPECT_EQ(r(2.5), 2);
  EXPECT_EQ(r(-3.5), -4);
  EXPECT_EQ(r(2147483646.5), 2147483646);
  EXPECT_EQ(r(2147483647.5), 2147483647);
  EXPECT_EQ(r(1e20), 2147483647);
  EXPECT_EQ(r(-2147483648.5), -2147483648.0);
  EXPECT_EQ(r(-1e20), -2147483648.0);
  EXPECT_EQ(encode(f, kNaN), 0u);
  EXPECT_EQ(encode(f, -1), 0xffffffffu);
  EXPECT_EQ(encode(f, 0x1p52 + 1), 0x7fffffffu);  // saturated
}

// ---- Arrays -------------------------------------------------------------------------------------

TEST(Arrays, PackLittleEndian) {
  const double v[] = {1.0, -2.0};
  std::vector<uint8_t> b(8);
  encode_array(Format::Fp16, v, 2, b.data());
  EXPECT_EQ(b[0], 0x00);
  EXPECT_EQ(b[1], 0x3c);
  EXPECT_EQ(b[2], 0x00);
  EXPECT_EQ(b[3], 0xc0);
  encode_array(Format::Int32, v + 1, 1, b.data());
  EXPECT_EQ(b[0], 0xfe);
  EXPECT_EQ(b[1], 0xff);
  EXPECT_EQ(b[2], 0xff);
  EXPECT_EQ(b[3], 0xff);
  encode_array(Format::Fp32, v, 1, b.data());
  EXPECT_EQ((std::vector<uint8_t>(b.begin(), b.begin() + 4)),
            (std::vector<uint8_t>{0x00, 0x00, 0x80, 0x3f}));
}

TEST(Arrays, MatchScalarConversionsForEveryFormat) {
  std::mt19937 rng(3);
  std::normal_distribution<double> nd(0.0, 50.0);
  std::vector<double> src(4096);
  for (double& x : src) x = nd(rng);
  src[0] = -0.0, src[1] = kInf, src[2] = 1e9, src[3] = 2.5;
  std::vector<float> srcf(src.begin(), src.end());
  for (Format f : {Format::Fp32, Format::Fp16, Format::Bf16, Format::Fp8E4M3, Format::Fp8E5M2,
                   Format::Int8, Format::Int32}) {
    const size_t bytes = static_cast<size_t>(format_bytes(f));
    std::vector<uint8_t> packed(src.size() * bytes), packedf(src.size() * bytes);
    encode_array(f, src.data(), src.size(), packed.data());
    encode_array(f, srcf.data(), srcf.size(), packedf.data());
    std::vector<double> out(src.size());
    std::vector<float> outf(src.size());
    decode_array(f, packed.data(), src.size(), out.data());
    decode_array(f, packedf.data(), src.size(), outf.data());
    for (size_t i = 0; i < src.size(); ++i) {
      uint32_t bits = 0;
      std::memcpy(&bits, packed.data() + i * bytes, bytes);  // host is little-endian (x86-64)
      ASSERT_EQ(bits, encode(f, src[i])) << format_name(f) << " " << i;
      ASSERT_EQ(out[i], decode(f, bits)) << format_name(f) << " " << i;
      const uint32_t want_f = encode(f, static_cast<double>(srcf[i]));
      ASSERT_EQ(std::memcmp(packedf.data() + i * bytes, &want_f, bytes), 0) << format_name(f);
      ASSERT_EQ(outf[i], static_cast<float>(decode(f, want_f))) << format_name(f) << " " << i;
    }
  }
}

// ---- Per-block scaled FP8 ---------------------------------------------------------------------

// Half an ulp of the fp8 grid at magnitude |y| (subnormal spacing below the smallest normal).
double fp8_half_ulp(const Layout& l, double y) {
  int e = std::max(std::ilogb(std::fabs(y)), 1 - l.bias);
  if (y == 0) e = 1 - l.bias;
  return std::ldexp(0.5, e - l.man_bits);
}

std::vector<float> test_activations(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> mag(-12, 12);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = nd(rng) * std::ldexp(1.0f, mag(rng) / 4 + (i / 64) % 7 - 3);
  return x;
}

void check_block_quantization(const Layout& l, bool ue8m0) {
  const int block = 128;
  const std::vector<float> x = test_activations(128 * 40 + 37, 11);
  const BlockScaled q = quantize_blocks(l.format, x.data(), x.size(), block, ue8m0);
  ASSERT_EQ(q.codes.size(), x.size());
  ASSERT_EQ(q.scales.size(), 41u);
  EXPECT_EQ(q.format, l.format);
  EXPECT_EQ(q.block, block);
  EXPECT_EQ(q.ue8m0, ue8m0);
  std::vector<float> deq(x.size());
  dequantize_blocks(q, deq.data());
  const double fmax = max_finite(l.format);
  size_t below = 0, differ = 0;
  for (size_t b = 0; b < q.scales.size(); ++b) {
    const size_t lo = b * block, hi = std::min(x.size(), lo + block);
    float amax = 1e-4f;
    for (size_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
    const double s = q.scales[b];
    if (ue8m0) {
      int e;
      EXPECT_EQ(std::frexp(s, &e), 0.5) << "scale " << s << " is not a power of two";
      EXPECT_GE(s * fmax, amax);
      EXPECT_LT(s / 2 * fmax, amax);
    } else {
      EXPECT_EQ(q.scales[b], amax / static_cast<float>(fmax));
    }
    for (size_t i = lo; i < hi; ++i) {
      const double y = x[i] / s;
      if (std::fabs(y) > fmax) continue;  // saturated (possible only by scale rounding)
      // Half an ulp of the fp8 grid, plus the two fp32 roundings (quotient, dequantize product).
      const double tol = fp8_half_ulp(l, y) * s + 0x1p-22 * std::fabs(x[i]);
      ASSERT_LE(std::fabs(deq[i] - x[i]), tol) << "x " << x[i] << " scale " << s << " i " << i;
      if (deq[i] != x[i]) ++differ, below += deq[i] < x[i];
    }
  }
  // TileKernels rounding-bias test: no systematic rounding toward zero or away from it.
  const double frac_below = static_cast<double>(below) / static_cast<double>(differ);
  EXPECT_NEAR(frac_below, 0.5, 10.0 / std::sqrt(static_cast<double>(differ)));
}

TEST(BlockScaled, E4M3DequantizesWithinHalfUlp) {
  check_block_quantization(kE4M3L, false);
}
TEST(BlockScaled, E4M3Ue8m0ScalesArePowersOfTwoCoveringAmax) {
  check_block_quantization(kE4M3L, true);
}
TEST(BlockScaled, E5M2DequantizesWithinHalfUlp) {
  check_block_quantization(kE5M2L, false);
}
TEST(BlockScaled, E5M2Ue8m0ScalesArePowersOfTwoCoveringAmax) {
  check_block_quantization(kE5M2L, true);
}

TEST(BlockScaled, AmaxMapsToFmax) {
  const std::vector<float> x{0.5f, -3.0f, 1.0f, 0.25f};
  const BlockScaled q = quantize_blocks(Format::Fp8E4M3, x.data(), x.size(), 4, false);
  EXPECT_EQ(q.scales[0], 3.0f / 448.0f);
  EXPECT_EQ(q.codes[1], 0xfeu);  // -448
  std::vector<float> deq(4);
  dequantize_blocks(q, deq.data());
  EXPECT_FLOAT_EQ(deq[1], -3.0f);
}

TEST(BlockScaled, AllZeroBlockUsesAmaxFloorAndZeroCodes) {
  const std::vector<float> x(64, 0.0f);
  for (bool ue8m0 : {false, true}) {
    const BlockScaled q = quantize_blocks(Format::Fp8E4M3, x.data(), x.size(), 32, ue8m0);
    ASSERT_EQ(q.scales.size(), 2u);
    const float want = ue8m0 ? 0x1p-22f : 1e-4f / 448.0f;  // 1e-4/448 = 2.2e-7 -> 2^-22 = 2.4e-7
    for (float s : q.scales) EXPECT_EQ(s, want);
    for (uint8_t c : q.codes) EXPECT_EQ(c, 0u);
    std::vector<float> deq(x.size(), 1.0f);
    dequantize_blocks(q, deq.data());
    for (float v : deq) EXPECT_EQ(v, 0.0f);
  }
}

TEST(BlockScaled, TinyBlockIsFlooredNotBlownUp) {
  const std::vector<float> x{1e-6f, -2e-6f, 5e-7f};
  const BlockScaled q = quantize_blocks(Format::Fp8E4M3, x.data(), x.size(), 8, false);
  EXPECT_EQ(q.scales[0], 1e-4f / 448.0f);  // amax 2e-6 floored at 1e-4
  EXPECT_LT(std::fabs(decode(Format::Fp8E4M3, q.codes[1])), 448.0 / 10);
}

TEST(BlockScaled, TailBlockShorterThanBlockHasItsOwnScale) {
  std::vector<float> x(10, 100.0f);
  x[8] = 0.5f, x[9] = -0.25f;  // tail block of 2 after a block of 8
  const BlockScaled q = quantize_blocks(Format::Fp8E4M3, x.data(), x.size(), 8, true);
  ASSERT_EQ(q.scales.size(), 2u);
  EXPECT_EQ(q.scales[0], 0.25f);    // 100/448 = 0.223 -> 2^-2
  EXPECT_EQ(q.scales[1], 0x1p-9f);  // 0.5/448 = 1.1e-3 -> 2^-9
  std::vector<float> deq(x.size());
  dequantize_blocks(q, deq.data());
  EXPECT_EQ(deq[8], 0.5f);  // powers of two survive exactly
  EXPECT_EQ(deq[9], -0.25f);
  EXPECT_EQ(deq[0], 96.0f);  // 100 / 0.25 = 400 -> fp8 grid spacing 32 near 400 -> 384
}

TEST(BlockScaled, RejectsNonFp8FormatAndBadBlock) {
  const float x[2] = {1, 2};
  EXPECT_THROW(quantize_blocks(Format::Fp16, x, 2, 2, false), InternalError);
  EXPECT_THROW(quantize_blocks(Format::Fp8E4M3, x, 2, 0, false), InternalError);
  const BlockScaled empty = quantize_blocks(Format::Fp8E5M2, x, 0, 4, false);
  EXPECT_TRUE(empty.codes.empty());
  EXPECT_TRUE(empty.scales.empty());
}

}  // namespace
}  // namespace npusim::num
