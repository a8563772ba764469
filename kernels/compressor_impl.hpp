// The compressor's plan of a call (sequences, fragments, items, entry tiles), its GM and UB
// placement, and the lowerings: shared by compressor.cpp (the plan, the kernel's interface) and
// compressor_lower.cpp (the AIC / AIV programs). Internal to the kernel; compressor.hpp is its API.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kernels/compressor.hpp"
#include "kernels/cube_vector.hpp"

namespace npusim::kernels::compressor_impl {


// All-AIV barriers (cross-core flags, mode 0): the state read; the waves of items (two ids, alternating).
inline constexpr int kSDone = CubeVectorSlots::kFlags, kWave = kSDone + 1;
inline constexpr int kConstEvent = 7, kWaveEvent = 6;  // intra-core events: the constants' GM load; a wave's barrier to MTE2
inline constexpr int kMaxBuffers = 6;
inline constexpr int64_t kPerInstr = 255 * 256 / 4;   // fp32 elements of one vector instruction (255 repeats of 256 B)
inline constexpr int64_t kQBlock = 64;                // FP8 quantisation block
inline constexpr double kFp8Max = 448, kLn2 = 0.69314718055994530942;
inline constexpr double kBig = 1073741824.0;          // 2^30: turns a 1-ulp comparison margin into a clamped 0 / 1


// ---- The call's structure: sequences, fragments, items, entries (host side) ----

struct Seq { int64_t p0, k0, k1, r0, e0, xrow; };
// Rows [j0, j0 + len) of block `blk` of sequence `seq`, x rows from `xrow`; f: its partial slot.
struct Frag { int seq; int64_t blk, j0, len, xrow; int f; };
struct Group { int64_t row0 = 0, rows = 0, split = 0; std::vector<Frag> frag[2]; };  // split: AIV 0's rows
struct Item { size_t group; int64_t ch0; int half; };
struct EntryTile { int64_t e0, n; uint32_t mask; int64_t wave; };  // wave: after which its partials are all out
struct StateUnit { int seq; int64_t ch0; int half; };

struct Plan {
  bool decode = false, overlap = false, fp8 = false;
  int c = 1;
  int64_t H = 0, d = 0, m = 0, C = 0, T = 0, B = 0, rd = 0, ro = 0, nq = 0, qo = 0, nb = 0, n_out = 0, Et = 1;
  int64_t rpt = 1, bpt = 1, h_max = 0, emit_max = 0, cores = 1, waves = 0;
  int max_partials = 1;
  std::vector<Seq> seqs;
  std::vector<Group> groups;
  std::vector<Item> items;
  std::vector<uint32_t> mask;  // per entry: bit 3 h + f for each partial (half h, slot f: 0 state, 1 + AIV of the item)
  std::vector<StateUnit> sunits;
  std::vector<EntryTile> etiles;
  std::vector<std::vector<int>> decode_seqs;  // per AIV (decode)
  int64_t off() const { return overlap ? m : 0; }
  // The entry (block index) a partial of half h of block blk belongs to: its own, or the next one's previous half.
  int64_t target(int h, int64_t blk) const { return h == c - 1 ? blk : blk + 1; }
  int64_t entry(const Seq& s, int64_t blk) const { return s.e0 + blk - s.k0; }
};


Plan make_plan(const CompressorShape& s, const CompressorTiling& t, int aivs);

struct Gm {
  uint64_t x, wkv, wg, ape, nw, cos, sin, kvs, scs, out, wsp, ws, footprint;
};
Gm place(const CompressorShape& s, const Plan& p, const CompressorTiling& t);

inline uint64_t a32(uint64_t x) { return (x + 31) / 32 * 32; }

struct Ub {
  uint64_t ones, wrep, swap, sgn, blk, c448, acc, slots, sets, set_bytes, total, tile_bytes, fin_bytes;
  uint64_t K, S, A, E, T, TP;          // tile view of a set
  uint64_t P, X[6], COS, SIN, OUT;     // finalise view (decode: P holds the new row and its ape row)
};
Ub ub_layout(const CompressorShape& s, const Plan& p, const CompressorTiling& t, bool via_ub);

// The AIV tiles of a share: up to blocks_per_tile whole blocks side by side, else one block's
// rows in chunks of rows_per_tile.
struct Job { size_t f; int64_t G, ja, L; int ci, nch; };
std::vector<Job> jobs_of(const Plan& p, const std::vector<Frag>& fr);

bool has_fp8_cast(const sim::HardwareSpec& hw);
// AIVs a decode call spreads its sequences over.
int decode_aivs(const CompressorShape& s, const CompressorTiling& t, const sim::HardwareSpec& hw);

sim::Program lower_prefill(const CompressorShape& s, const CompressorTiling& t, const Plan& p, const Gm& g,
                           const sim::HardwareSpec& hw, bool functional, const std::string& name);
sim::Program lower_decode(const CompressorShape& s, const CompressorTiling& t, const Plan& p, const Gm& g,
                          const sim::HardwareSpec& hw, bool functional, const std::string& name);

}  // namespace npusim::kernels::compressor_impl
