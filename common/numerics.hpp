// Bit-exact number formats of the device: what a value becomes when the NPU stores it as fp32,
// fp16, bf16, fp8 (OCP E4M3FN / E5M2), int8 or int32, and per-block scaled FP8 quantization
// (KERNELS.md 5.2: goldens start from exactly the operand values the device sees).
//
// Contract:
//  * encode(f, v) returns the code of v in format f in the low format_bytes(f) bytes; decode is its
//    inverse on codes. Every float conversion rounds to nearest, ties to even, exactly, for every
//    double input (derived from the double's bits, never via an intermediate float), into
//    subnormals too, and keeps the sign of zero (a tiny negative that rounds to zero gives -0).
//  * fp16, bf16, fp8_e5m2: IEEE-like with inf and NaN. Overflow goes to inf by RNE (values at or
//    above the midpoint between max finite and the next power of two). NaN encodes to the quiet
//    NaN with its sign kept (fp16 0x7e00, bf16 0x7fc0, e5m2 0x7e, sign bit on top).
//  * fp8_e4m3 (E4M3FN): bias 7, max finite 448, no inf, NaN is S.1111.111 only. Conversion
//    saturates: anything beyond 448 after rounding, and +-inf, becomes +-448; NaN stays NaN.
//  * fp32: the hardware double->float cast (RNE; NaN payload truncated, sign kept).
//  * int8 / int32: round half to even, saturate to the type's range, NaN -> 0.
//  * Arrays are packed little-endian, format_bytes(f) bytes per element.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace npusim::num {

enum class Format : uint8_t { Fp32, Fp16, Bf16, Fp8E4M3, Fp8E5M2, Int8, Int32 };

// "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int32"; format_from_name inverts it.
std::string_view format_name(Format f);
std::optional<Format> format_from_name(std::string_view name);
int format_bytes(Format f);   // 4, 2, 2, 1, 1, 1, 4
bool is_float(Format f);      // every format but int8 / int32
double max_finite(Format f);  // largest finite value (448 for e4m3, 57344 for e5m2, 127 for int8)

uint32_t encode(Format f, double v);
double decode(Format f, uint32_t bits);
inline double round_to(Format f, double v) {
  return decode(f, encode(f, v));
}

void encode_array(Format f, const double* src, size_t n, void* dst);
void decode_array(Format f, const void* src, size_t n, double* dst);
void encode_array(Format f, const float* src, size_t n, void* dst);
void decode_array(Format f, const void* src, size_t n, float* dst);

// Per-block scaled FP8 (DeepSeek act_quant, KERNELS.md 3.1 / 5.2). For each run of `block`
// elements (the last one may be shorter): amax = max |x| (NaNs ignored) floored at 1e-4,
// scale = amax / fmax in fp32, with ue8m0 rounded UP to a power of two; codes = encode(x / scale)
// where the quotient is taken in fp32 as the device does, then clamped to +-fmax.
// Dequantization is decode(code) * scale in fp32.
struct BlockScaled {
  Format format = Format::Fp8E4M3;
  int block = 0;
  bool ue8m0 = false;
  std::vector<uint8_t> codes;  // one per element
  std::vector<float> scales;   // one per block: ceil(n / block)
};

// Throws InternalError when `fp8` is not an fp8 format or block <= 0.
BlockScaled quantize_blocks(Format fp8, const float* x, size_t n, int block, bool ue8m0);
void dequantize_blocks(const BlockScaled& q, float* out);  // writes q.codes.size() values

}  // namespace npusim::num
