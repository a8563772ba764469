// Stable 64-bit content hashes (FNV-1a) for ids that must not change between runs or machines:
// sweep point ids, hardware fingerprints, kernel signatures in the tuning database.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace npusim {

inline uint64_t fnv1a64(std::string_view text, uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// 16 hex digits.
inline std::string hash_hex(std::string_view text) { return fmt::format("{:016x}", fnv1a64(text)); }

}  // namespace npusim
