// The flash attention lowering's shared pieces: flag and event ids, the copy and vector helpers,
// and the Lowering class whose AIC streams (flash_attention_lower.cpp) and AIV streams and split
// merge (flash_attention_aiv.cpp) build the program. Internal to the kernel.
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/flash_attention.hpp"

namespace npusim::kernels::fa_lower {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::TileRef;
using sim::VecOp;


// Cross-core flags. AIC -> AIVs (each AIV counts its own): S ready, P slot free, O chunk ready.
// AIV k -> AIC: S slot free, P ready, O slot free, each with its own id per AIV (kSFree + k, ...):
// a shared id would let an AIV with no rows answer ahead and stand in for its sibling. Then the
// all-AIV merge barrier.
inline constexpr int kSReady = 0, kPFree = 1, kOReady = 2, kSFree = 3;
inline int p_ready(int aivs, int k) { return kSFree + aivs + k; }
inline int o_free(int aivs, int k) { return kSFree + 2 * aivs + k; }
inline int merge_barrier(int aivs) { return kSFree + 3 * aivs; }
// AIC event ids. MTE2 <-> MTE1: K/V stages 0-3, Q buffers 4-5, L1 P buffers 6-7 (2201). M <-> MTE1:
// L0A halves 0-1, L0B halves 2-3. FIXPIPE <-> M: S buffers 0-1, O buffers 2-3.
inline constexpr int kQEvent = 4, kPEvent = 6, kL0BEvent = 2, kOEvent = 2;
// AIV event ids. S slots 0-1 (MTE2 -> V, V -> MTE3, MTE3 -> MTE2), O-chunk slots 2-3 (MTE2 <-> V),
// staging 2-3 (V <-> MTE3), the sink vectors 4-5 (MTE2 <-> V; two, by item parity, because the
// next item's sinks load before this item's epilogue), the lse vector 4 (V <-> MTE3).
inline constexpr int kOinEvent = 2, kStageEvent = 2, kSinkEvent = 4, kLseEvent = 4;
inline constexpr int64_t kPerInstr = 255 * 256 / 4;  // fp32 elements one vector instruction reaches
inline constexpr double kInf = std::numeric_limits<double>::infinity();

inline TileRef flat(uint64_t off, DType d) { return {off, 0, 0, 0, TileLayout::Flat, d}; }
inline TileRef nz(uint64_t off, int64_t ld, DType d, int64_t row0 = 0, int64_t col0 = 0) {
  return {off, static_cast<uint32_t>(ld), static_cast<uint32_t>(row0), static_cast<uint32_t>(col0), TileLayout::Nz, d};
}
inline TileRef nd(uint64_t off, int64_t ld, DType d) { return {off, static_cast<uint32_t>(ld), 0, 0, TileLayout::Nd, d}; }
inline uint32_t u32(int64_t x) { return static_cast<uint32_t>(x); }
// `rows` rows of `row_bytes`, `stride` apart, from `addr`.
inline sim::GmRegion region(uint64_t addr, int64_t rows, int64_t row_bytes, int64_t stride) {
  return {addr, u32(rows), u32(row_bytes), static_cast<uint64_t>(stride)};
}
// Rows [row0, row0 + rows) of the strips of an NZ tile in GM whose strips hold `ld` rows.
inline sim::GmRegion nz_region(uint64_t base, int64_t ld, int64_t row0, int64_t rows, int64_t strips, int64_t e) {
  return region(base + static_cast<uint64_t>(row0 * 16 * e), strips, rows * 16 * e, ld * 16 * e);
}
// A rows x cols tile copied from src to dst (the operands of functional runs).
inline void move(sim::CoreBuilder& b, Path path, int64_t bytes, sim::GmRegion gm, int64_t rows, int64_t cols, TileRef src,
          TileRef dst, int sibling = 0) {
  sim::Operands o;
  o.rows = u32(rows), o.cols = u32(cols), o.src = src, o.dst = dst, o.sibling = static_cast<uint8_t>(sibling);
  b.copy(path, u32(bytes), gm, o);
}

struct Step {
  int64_t item, j;
  bool first, last;
};

// Vector idioms on one AIV stream (offsets are UB bytes, fp32 unless named).
class Vec {
 public:
  explicit Vec(sim::CoreBuilder& b) : b_(b) {}
  // Elementwise over n elements; src2 is the second source (binary ops), scalar the immediate.
  void ew(VecOp op, uint64_t dst, uint64_t src, int64_t n, uint64_t src2 = 0, double scalar = 0, DType dt = DType::Fp32,
          DType dst_t = DType::Fp32) {
    for (int64_t done = 0; done < n; done += kPerInstr) {
      sim::Operands o;
      o.src = flat(src + done * sim::dtype_bytes(dt), dt);
      o.src2 = flat(src2 + done * sim::dtype_bytes(dt), dt);
      o.dst = flat(dst + done * sim::dtype_bytes(dst_t), dst_t);
      o.scalar = scalar;
      b_.vec(op, dt, u32(std::min(kPerInstr, n - done)), o);
    }
  }
  void dup(uint64_t dst, int64_t n, double v) { ew(VecOp::Dup, dst, dst, n, 0, v); }
  // Row r of an NZ tile (`rows` rows, ld `ldp`, `cols` columns) set to v[r]: a UB->UB copy of the
  // row vector read with a zero stride, the stand-in for Brcb.
  void broadcast(uint64_t dst, uint64_t v, int64_t rows, int64_t ldp, int64_t cols) {
    move(b_, Path::UbToUb, ldp * cols * 4, {}, rows, cols, {v, 0, 0, 0, TileLayout::NdT, DType::Fp32}, nz(dst, ldp, DType::Fp32));
  }
  // op(x, bcast) over `strips` NZ strips of ldp x 16 at x (into dst), the broadcast tile covering
  // `bstrips` strips.
  void by_row(VecOp op, uint64_t dst, uint64_t x, uint64_t bcast, int64_t strips, int64_t bstrips, int64_t ldp) {
    for (int64_t s0 = 0; s0 < strips; s0 += bstrips) {
      const uint64_t off = static_cast<uint64_t>(s0 * ldp * 64);
      ew(op, dst + off, x + off, std::min(bstrips, strips - s0) * ldp * 16, bcast);
    }
  }
  // Row-wise max or sum of an NZ tile of `strips` strips: strips combined pairwise into tmp (an odd
  // one into the first), then one 16-lane reduction of the first `rows` rows.
  void row_reduce(VecOp combine, VecOp reduce, uint64_t dst, uint64_t x, uint64_t tmp, int64_t strips, int64_t ldp, int64_t rows) {
    const uint64_t sb = static_cast<uint64_t>(ldp * 64);
    uint64_t cur = x;
    for (int64_t n = strips; n > 1; n /= 2) {
      const int64_t h = n / 2;
      ew(combine, tmp, cur, h * ldp * 16, cur + h * sb);
      if (n % 2) ew(combine, tmp, tmp, ldp * 16, cur + 2 * h * sb);
      cur = tmp;
    }
    sim::Operands o;
    o.src = flat(cur, DType::Fp32), o.dst = flat(dst, DType::Fp32), o.cols = 16;
    b_.vec(reduce, DType::Fp32, u32(rows * 16), o);
  }

 private:
  sim::CoreBuilder& b_;
};

class Lowering {
 public:
  Lowering(const FlashAttentionShape& s, const FlashAttentionTiling& t, const sim::HardwareSpec& hw, bool functional, std::string name)
      : s_(s), t_(t), hw_(hw), fn_(functional), plan_(fa::make_plan(s, t, t.cores)), d_(fa::make_dims(s, t, hw)) {
    cores_ = static_cast<int>(plan_.core_items.size());
    gm_ = fa::place(s, d_, plan_, cores_);
    prog_.name = std::move(name);
    prog_.gm_footprint_bytes = gm_.footprint;
    e_ = sim::dtype_bytes(s.dtype);
    Mp_ = round_up(d_.M, 16), Bp_ = round_up(d_.Bk, 16);
  }

  sim::Program run() {
    for (int c = 0; c < cores_; ++c) {
      steps_.clear();
      for (int64_t i : plan_.core_items[static_cast<size_t>(c)]) {
        const fa::Item& it = plan_.items[static_cast<size_t>(i)];
        for (int64_t j = it.j0; j < it.j1; ++j) steps_.push_back({i, j, j == it.j0, j == it.j1 - 1});
      }
      sim::CoreProgram cp{sim::CoreKind::Aic, c, {}, {}};
      aic(c, cp);
      prog_.cores.push_back(std::move(cp));
      for (int k = 0; k < d_.aivs; ++k) {
        sim::CoreProgram vp{sim::CoreKind::Aiv, c * d_.aivs + k, {}, {}};
        aiv(c, k, vp);
        prog_.cores.push_back(std::move(vp));
      }
    }
    return std::move(prog_);
  }

 private:
  struct Rows {  // the rows of a step's block that AIV k owns
    int64_t r0, r1, n, ldp;
  };
  const fa::Item& item(int64_t i) const { return plan_.items[static_cast<size_t>(i)]; }
  const fa::Group& group_of(int64_t i) const { return plan_.groups[static_cast<size_t>(item(i).group)]; }
  int64_t kv_end(const fa::Group& g) const { return s_.causal ? s_.kv_len - s_.q_len + g.rows.q0 + g.rows.nq : s_.kv_len; }
  int64_t block_keys(const fa::Group& g, int64_t j) const { return std::min(d_.Bk, kv_end(g) - j * d_.Bk); }
  Rows rows_of(const fa::Group& g, int k) const {
    const auto [r0, r1] = fa::aiv_rows(g.rows.count(), d_.aivs, k);
    return {r0, r1, r1 - r0, round_up(std::max<int64_t>(r1 - r0, 1), 16)};
  }
  // GM element offset of (query q, head h) of a group in a [B S1, N1 x cols] tensor, and that
  // tensor's row stride along the block's segments.
  int64_t row_elem(const fa::Group& g, int64_t q, int64_t h, int64_t cols) const {
    return ((g.b * s_.q_len + g.rows.q0 + q) * s_.heads_q + g.n2 * s_.group() + g.rows.h0 + h) * cols;
  }
  int64_t seg_stride(const fa::Group& g, int64_t cols) const { return g.rows.head_major ? s_.heads_q * cols : cols; }
  uint64_t ws(int c) const { return gm_.ws + static_cast<uint64_t>(c) * gm_.ws_core; }
  uint64_t stats(int64_t t) const { return d_.ub_stats + static_cast<uint64_t>(t % fa::Dims::kStatSets) * 3 * d_.vec; }
  uint64_t vec(int i) const { return d_.ub_vecs + static_cast<uint64_t>(i) * d_.vec; }
  // Rows [r0, r1) of a group's block, one copy per segment, from / to a [B S1, N1 x cols] tensor.
  void rows_io(sim::CoreBuilder& b, Path path, const fa::Group& g, int64_t r0, int64_t r1, uint64_t tensor, int64_t cols,
               int64_t col0, int64_t width, DType dt, TileRef ub);

  void aic(int c, sim::CoreProgram& cp);
  void load_kv(sim::CoreBuilder& b, int64_t t);
  void c1(sim::CoreBuilder& b, int c, int64_t t);
  void c2(sim::CoreBuilder& b, int c, int64_t t);
  void aiv(int c, int k, sim::CoreProgram& cp);
  void v1(sim::CoreBuilder& b, Vec& v, int c, int k, int64_t t);
  void v2(sim::CoreBuilder& b, Vec& v, int c, int k, int64_t t);
  void finalize(sim::CoreBuilder& b, Vec& v, int k, int64_t t);
  void merge(sim::CoreBuilder& b, Vec& v, int aiv_index);

  const FlashAttentionShape& s_;
  const FlashAttentionTiling& t_;
  const sim::HardwareSpec& hw_;
  bool fn_;
  fa::Plan plan_;
  fa::Dims d_;
  fa::Gm gm_;
  sim::Program prog_;
  int cores_ = 0;
  int64_t e_ = 2, Mp_ = 0, Bp_ = 0;
  std::vector<Step> steps_;
  int64_t pa_ = 0, pb_ = 0, u_ = 0, items_ = 0;  // AIC: L0A / L0B halves, O chunks, items
  int64_t vu_ = 0, stage_ = 0, vbegun_ = 0, vdone_ = 0;  // AIV: O chunks, staging, items begun / done
};

}  // namespace npusim::kernels::fa_lower
