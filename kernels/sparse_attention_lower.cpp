// Lowering of the sparse attention (the pipeline is described in sparse_attention.hpp): buffer
// layouts, the AIC program (Q^T, gathers, C1, C2), the AIV program (gathers, online softmax, O
// update, finalisation) and the split-KV merge.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "kernels/sparse_attention.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::TileRef;
using sim::VecOp;

namespace {

// Cross-core flag ids: READY from a slot's producer, FREE back from its consumers.
constexpr int kSReady = 0, kSFree = 1, kPReady = 2, kPFree = 3, kOReady = 4, kOFree = 5, kKReady = 6, kKFree = 7,
              kMergeBarrier = 8;
// The flags an AIV raises towards its AIC (S FREE, P READY, O FREE, K READY) are per AIV: AIV 0
// uses the ids above, AIV a > 0 its own four from 9 + 4 (a - 1). The AIC's flag queue does not say
// who set a flag, so with one shared id a fast AIV's set for the next slot could stand in for a
// slow AIV's set for this one (an AIV without heads, which gathers and little else, runs ahead).
int up(int id, int a) {
  if (a == 0) return id;
  const int j = id == kSFree ? 0 : id == kPReady ? 1 : id == kOFree ? 2 : 3;
  return 9 + 4 * (a - 1) + j;
}
// AIC event ids (MTE2 <-> MTE1): K tiles use [0, stages), then the Q^T tiles and the L1 P tiles.
constexpr int kQEvent = 4, kPEvent = 6;
// AIV event ids: MTE2 -> V: S tiles 0 / 1, O_blk chunks 2 / 7, sinks 3, merge loads 4-6; V -> MTE3:
// P tiles 0 / 1, outputs 2, merge outputs 3; MTE2 -> MTE3: gather staging 0 / 1.
constexpr int kOutEvent = 2, kSinkEvent = 3;
constexpr int64_t kRepeatBytes = 256, kMaxRepeat = 255;
// Rows an AIV stages per onward copy: one 16-row NZ band of the K tile on the UB->L1 path (a band
// has one writer, so the NZ padding a short last band zeroes is its own); 8 on the GM path, whose
// K slot is ND, to leave UB for O.
int64_t gather_chunk(bool via_ub) { return via_ub ? 16 : 8; }
constexpr int64_t kMergeRows = 8;     // query heads per merge chunk
// O_blk rows an AIV reads from the GM slot at a time (2201): O is rescaled row by row anyway, so
// O_blk never needs to sit in UB whole, which leaves room for larger kv blocks.
constexpr int64_t kPvRows = 8;

int64_t r16(int64_t x) { return round_up(x, 16); }
uint64_t a32(int64_t bytes) { return static_cast<uint64_t>(round_up(bytes, 32)); }

// Sizes derived from a tiling on a preset.
struct Dims {
  int A = 2;   // AIVs per AIC
  int Av = 2;  // AIVs that split a head block (sparse_attention_active_aivs); AIVs [Av, A) hold no heads
  int64_t H = 0, Hg = 0, Hh = 0, KB = 0, Dq = 0, D = 0, k0 = 0, n0 = 0;
  bool via_ub = false;  // 3510: L0C->UB and UB->L1
  int o_depth = 1;      // O_blk slots: one UB buffer (3510) or two GM slots (2201)
  int k_depth = 2;      // destinations of AIV gathers: the L1 K tiles (3510) or two GM slots
  uint64_t l0a_half = 0, l0b_half = 0;
};

Dims dims_of(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw) {
  Dims d;
  d.A = std::max(1, hw.aiv_per_aic);
  d.Av = std::max(1, sparse_attention_active_aivs(t.head_block, d.A));
  d.H = s.heads, d.Hg = t.head_block, d.Hh = t.head_block / d.Av, d.KB = t.kv_block, d.Dq = s.d_qk, d.D = s.d_v;
  d.via_ub = hw.path(Path::L0CToUb).available && hw.path(Path::UbToL1).available;
  d.o_depth = d.via_ub ? 1 : 2;
  d.k_depth = d.via_ub ? t.stages : 2;
  d.l0a_half = static_cast<uint64_t>(hw.aic.l0a_bytes / 2), d.l0b_half = static_cast<uint64_t>(hw.aic.l0b_bytes / 2);
  const int64_t e = sim::dtype_bytes(s.dtype);
  // C1's K slice: the widest multiple of 16 whose A [KB x k0] and B [k0 x Hg] fit an L0A / L0B half.
  d.k0 = std::min({s.d_qk, static_cast<int64_t>(d.l0a_half) / (r16(d.KB) * e) / 16 * 16,
                   static_cast<int64_t>(d.l0b_half) / (r16(d.Hg) * e) / 16 * 16});
  // C2's N chunk: V [KB x n0] in an L0B half, two O_blk chunks beside the two S^T tiles in L0C.
  const int64_t l0c_left = hw.aic.l0c_bytes - 2 * r16(d.KB) * r16(d.Hg) * 4;
  d.n0 = std::min(s.d_v, static_cast<int64_t>(d.l0b_half) / (r16(d.KB) * e) / 16 * 16);
  d.n0 = l0c_left > 0 ? std::min(d.n0, l0c_left / (2 * r16(d.Hg) * 4) / 16 * 16) : 0;
  return d;
}

// One AIV's UB in the main phase, and (split_kv > 1) in the merge, which reuses it from 0.
struct UbLayout {
  uint64_t o, pv, pv2, s[2], scr, p[2], m[2], l, alpha[2], bm, bs, tmp, den, ones, sink, lse, stg[2], end;
  uint64_t acc, ob[2], lses, w, mx, L, mden, mrcp, mtmp, msink, mlse, mones, merge_end;
};

UbLayout ub_layout(const SparseAttentionShape& s, const SparseAttentionTiling& t, const Dims& d) {
  UbLayout u{};
  uint64_t at = 0;
  auto put = [&](int64_t bytes) {
    const uint64_t here = at;
    at += a32(bytes);
    return here;
  };
  const int64_t e = sim::dtype_bytes(s.dtype), vec = d.Hh * 4;
  u.o = put(d.Hh * d.D * 4);
  if (d.via_ub) u.pv = put(d.Hh * d.D * 4);  // FIXPIPE fills it column chunk by column chunk
  else u.pv = put(kPvRows * d.D * 4), u.pv2 = put(kPvRows * d.D * 4);  // row chunks read from GM
  for (auto& x : u.s) x = put(d.KB * d.Hh * 4);
  u.scr = put(d.KB * d.Hh * 4);
  for (auto& x : u.p) x = put(d.KB * d.Hh * e);
  for (auto& x : u.m) x = put(vec);
  u.l = put(vec);
  for (auto& x : u.alpha) x = put(vec);
  u.bm = put(vec), u.bs = put(vec), u.tmp = put(vec), u.den = put(vec), u.ones = put(vec), u.sink = put(vec), u.lse = put(vec);
  if (t.gather == GatherBy::Aiv)
    for (auto& x : u.stg) x = put(gather_chunk(d.via_ub) * d.Dq * e);
  u.end = at;
  at = 0;
  const int64_t R = kMergeRows, S = t.split_kv;
  u.acc = put(R * d.D * 4), u.ob[0] = put(R * d.D * 4), u.ob[1] = put(R * d.D * 4);
  u.lses = put(S * R * 4), u.w = put(S * R * 4);
  u.mx = put(R * 4), u.L = put(R * 4), u.mden = put(R * 4), u.mrcp = put(R * 4), u.mtmp = put(R * 4);
  u.msink = put(R * 4), u.mlse = put(R * 4), u.mones = put(R * 4);
  u.merge_end = t.split_kv > 1 ? at : 0;
  return u;
}

// One AIC's L1 (two Q^T tiles [Dq x Hg], `stages` K tiles [KB x Dq], two P slots: one [Hg x KB]
// tile on the GM path, one [Hh x KB] tile per active AIV on the UB path) and L0C (two S^T tiles, two
// O_blk chunks).
struct L1Layout {
  uint64_t q[2], k0, k_stride, p0, p_stride, p_aiv, end;
  uint64_t l0c_s[2], l0c_o[2], l0c_end;
};

L1Layout l1_layout(const SparseAttentionShape& s, const SparseAttentionTiling& t, const Dims& d) {
  L1Layout l{};
  const int64_t e = sim::dtype_bytes(s.dtype);
  const uint64_t q = static_cast<uint64_t>(r16(d.Dq) * r16(d.Hg) * e);
  l.q[0] = 0, l.q[1] = q;
  l.k0 = 2 * q, l.k_stride = static_cast<uint64_t>(r16(d.KB) * r16(d.Dq) * e);
  l.p0 = l.k0 + t.stages * l.k_stride;
  l.p_aiv = static_cast<uint64_t>(r16(d.Hh) * r16(d.KB) * e);
  l.p_stride = d.via_ub ? d.Av * l.p_aiv : static_cast<uint64_t>(r16(d.Hg) * r16(d.KB) * e);
  l.end = l.p0 + 2 * l.p_stride;
  const uint64_t sb = static_cast<uint64_t>(r16(d.KB) * r16(d.Hg) * 4), ob = static_cast<uint64_t>(r16(d.Hg) * d.n0 * 4);
  l.l0c_s[0] = 0, l.l0c_s[1] = sb, l.l0c_o[0] = 2 * sb, l.l0c_o[1] = 2 * sb + ob, l.l0c_end = 2 * sb + 2 * ob;
  return l;
}

// GM: the tensors, then each AIC's hand-off slots of the GM path (2 S^T, 2 P, 2 O_blk and, for
// AIV gathers, 2 K tiles), then the split partials.
struct GmLayout {
  uint64_t q = 0, kv[2] = {0, 0}, sinks = 0, out = 0, lse = 0;
  uint64_t ws = 0, ws_core = 0, s_slot = 0, p_slot = 0, o_slot = 0, k_slot = 0, part_o = 0, part_lse = 0, footprint = 0;
};

GmLayout gm_layout(const SparseAttentionShape& s, const SparseAttentionTiling& t, const Dims& d,
                   const std::vector<TensorInfo>& ts, int cores) {
  GmLayout g;
  for (const auto& x : ts) {
    if (x.name == "q") g.q = x.addr;
    if (x.name == "kv0") g.kv[0] = x.addr;
    if (x.name == "kv1") g.kv[1] = x.addr;
    if (x.name == "sinks") g.sinks = x.addr;
    if (x.name == "out") g.out = x.addr;
    if (x.name == "lse") g.lse = x.addr;
  }
  const TensorInfo& last = ts.back();
  GmAllocator gm;
  gm.alloc(static_cast<int64_t>(last.addr) + last.rows * last.cols * sim::dtype_bytes(last.dtype));
  const int64_t e = sim::dtype_bytes(s.dtype);
  g.s_slot = a32(d.KB * d.Hg * 4), g.p_slot = a32(d.KB * d.Hg * e), g.o_slot = a32(d.Hg * d.D * 4);
  g.k_slot = t.gather == GatherBy::Aiv ? a32(d.KB * d.Dq * e) : 0;
  g.ws_core = d.via_ub ? 0 : 2 * (g.s_slot + g.p_slot + g.o_slot + g.k_slot);
  if (g.ws_core) g.ws = gm.alloc(static_cast<int64_t>(g.ws_core) * cores);
  if (t.split_kv > 1) {
    g.part_o = gm.alloc(s.tokens * t.split_kv * s.heads * s.d_v * 4);
    g.part_lse = gm.alloc(s.tokens * t.split_kv * s.heads * 4);
  }
  g.footprint = gm.footprint();
  return g;
}

TileRef nd(uint64_t off, int64_t ld, DType dt) { return {off, static_cast<uint32_t>(ld), 0, 0, TileLayout::Nd, dt}; }
TileRef ndt(uint64_t off, int64_t ld, DType dt) { return {off, static_cast<uint32_t>(ld), 0, 0, TileLayout::NdT, dt}; }
TileRef nz(uint64_t off, int64_t ld, DType dt, int64_t row0 = 0, int64_t col0 = 0) {
  return {off, static_cast<uint32_t>(ld), static_cast<uint32_t>(row0), static_cast<uint32_t>(col0), TileLayout::Nz, dt};
}
TileRef flat(uint64_t off, DType dt) { return {off, 0, 0, 0, TileLayout::Flat, dt}; }
sim::GmRegion region(uint64_t addr, int64_t rows, int64_t row_bytes, int64_t stride) {
  return {addr, static_cast<uint32_t>(rows), static_cast<uint32_t>(row_bytes), static_cast<uint64_t>(stride)};
}

// The instruction idioms both core kinds use.
struct Emit {
  sim::CoreBuilder& b;
  // A rows x cols tile; `bytes` defaults to the tile's (L0 loads pass the padded fractal size).
  void copy(Path p, const TileRef& src, const TileRef& dst, int64_t rows, int64_t cols, sim::GmRegion gm = {},
            int64_t bytes = -1, int sibling = 0) {
    sim::Operands o;
    o.src = src, o.dst = dst, o.rows = static_cast<uint32_t>(rows), o.cols = static_cast<uint32_t>(cols);
    o.sibling = static_cast<uint8_t>(sibling);
    b.copy(p, static_cast<uint32_t>(bytes >= 0 ? bytes : rows * cols * sim::dtype_bytes(src.dtype)), gm, o);
  }
  // Elementwise over n elements, at most 255 repeats of 256 B per instruction.
  void ew(VecOp op, DType dt, uint64_t dst, DType dst_t, uint64_t src, uint64_t src2, int64_t n, double scalar = 0,
          bool scalar_from_src2 = false) {
    const int64_t es = sim::dtype_bytes(dt), ed = sim::dtype_bytes(dst_t);
    const int64_t per = kMaxRepeat * kRepeatBytes / std::max(es, ed);
    for (int64_t done = 0; done < n; done += per) {
      sim::Operands o;
      o.src = flat(src + done * es, dt);
      o.src2 = flat(scalar_from_src2 ? src2 : src2 + done * es, dt);
      o.dst = flat(dst + done * ed, dst_t);
      o.scalar = scalar, o.scalar_from_src2 = scalar_from_src2;
      b.vec(op, dt, static_cast<uint32_t>(std::min(per, n - done)), o);
    }
  }
  void f32(VecOp op, uint64_t dst, uint64_t src, uint64_t src2, int64_t n, double scalar = 0) {
    ew(op, DType::Fp32, dst, DType::Fp32, src, src2, n, scalar);
  }
  void move(uint64_t dst, uint64_t src, int64_t n) { f32(VecOp::Muls, dst, src, src, n, 1.0); }
  void dup(uint64_t dst, int64_t n, double v, DType dt = DType::Fp32) { ew(VecOp::Dup, dt, dst, dt, dst, dst, n, v); }
  // Row r of `rows` rows of `len` fp32 values times the scalar at scalars + 4 r, which the scalar
  // unit loads (a cycle per row, charged at once): the vocabulary's row broadcast, one
  // instruction per row.
  void per_row_muls(uint64_t dst, uint64_t src, uint64_t scalars, int64_t rows, int64_t len) {
    b.scalar(static_cast<uint32_t>(rows));
    for (int64_t r = 0; r < rows; ++r)
      ew(VecOp::Muls, DType::Fp32, dst + r * len * 4, DType::Fp32, src + r * len * 4, scalars + r * 4, len, 0, true);
  }
  // n rows of w fp32 values (row-major at src) reduced to one row at dst, pairwise: rows [0, h)
  // with rows [h, 2h), an odd last row folded into row 0; levels before the last in scratch.
  // (The same-precision reference replays exactly this order.)
  void fold(VecOp op, uint64_t dst, uint64_t src, uint64_t scratch, int64_t n, int64_t w) {
    if (n == 1) return move(dst, src, w);
    uint64_t cur = src;
    while (n > 1) {
      const int64_t h = n / 2;
      const uint64_t out = h == 1 ? dst : scratch;
      f32(op, out, cur, cur + h * w * 4, h * w);
      if (n % 2) f32(op, out, out, cur + 2 * h * w * 4, w);
      cur = out, n = h;
    }
  }
  // Row vector v (w values) copied into n rows at dst by doubling: ceil(log2 n) + 1 moves, where
  // the hardware's Brcb would take one; the same element count either way.
  void broadcast(uint64_t dst, uint64_t v, int64_t n, int64_t w) {
    move(dst, v, w);
    for (int64_t r = 1; r < n;) {
      const int64_t c = std::min(r, n - r);
      move(dst + r * w * 4, dst, c * w);
      r += c;
    }
  }
};

// The programs of one lowering. AIC c runs items c, c + cores, ...; its AIV c A + a takes heads
// [a Hh, (a + 1) Hh) of each item's head block when a < Av, and none otherwise (idle_aiv). Ring
// counters (k: the core's blocks) run across items, so the slots and their flags continue from one
// item to the next.
class Lowering {
 public:
  Lowering(const SparseAttentionShape& s, const SparseAttentionTiling& t, const SparsePlan& plan, const Dims& d,
           const UbLayout& u, const L1Layout& l, const GmLayout& g, int cores, bool functional)
      : s_(s), t_(t), plan_(plan), d_(d), u_(u), l_(l), g_(g), cores_(cores), functional_(functional),
        e_(sim::dtype_bytes(s.dtype)), aiv_gather_(t.gather == GatherBy::Aiv) {}

  void aic(sim::CoreProgram& cp, int c) const;
  void aiv(sim::CoreProgram& cp, int c, int a) const;
  void idle_aiv(sim::CoreBuilder& b, int c, int a) const;

 private:
  using Item = SparsePlan::Item;
  struct Block {
    const Item* it;
    int64_t b;
  };
  std::vector<Block> blocks_of(int c) const {
    std::vector<Block> v;
    for (size_t i = static_cast<size_t>(c); i < plan_.items.size(); i += static_cast<size_t>(cores_))
      for (int64_t b = 0; b < plan_.items[i].blocks; ++b) v.push_back({&plan_.items[i], b});
    return v;
  }
  int64_t rows_of(const Block& blk) const {
    const auto [ra, rb] = plan_.block_rows(*blk.it, blk.b);
    return rb - ra;
  }
  uint64_t row_addr(int64_t r) const {
    const SparsePlan::Row& row = plan_.rows[static_cast<size_t>(r)];
    return g_.kv[row.source] + static_cast<uint64_t>(row.row * d_.Dq * e_);
  }
  uint64_t ws(int c) const { return g_.ws + static_cast<uint64_t>(c) * g_.ws_core; }
  uint64_t ws_s(int c, int64_t k) const { return ws(c) + (k % 2) * g_.s_slot; }
  uint64_t ws_p(int c, int64_t k) const { return ws(c) + 2 * g_.s_slot + (k % 2) * g_.p_slot; }
  uint64_t ws_o(int c, int64_t k) const { return ws(c) + 2 * (g_.s_slot + g_.p_slot) + (k % 2) * g_.o_slot; }
  uint64_t ws_k(int c, int64_t k) const { return ws(c) + 2 * (g_.s_slot + g_.p_slot + g_.o_slot) + (k % 2) * g_.k_slot; }
  uint64_t k_tile(int64_t k) const { return l_.k0 + (k % t_.stages) * l_.k_stride; }
  // Output row (token * heads + head) of AIV a's first head in an item.
  int64_t head_row(const Item& it, int a) const { return it.token * d_.H + it.group * d_.Hg + a * d_.Hh; }

  void c1(sim::CoreBuilder& b, int c, const Block& blk, int64_t k, int q, int64_t& l0n) const;
  void c2(sim::CoreBuilder& b, int c, const Block& blk, int64_t k, int64_t& l0n, int64_t& on) const;
  void gather_rows(sim::CoreBuilder& b, int c, int a, const Block& blk, int64_t k, int64_t& gn) const;
  void softmax(sim::CoreBuilder& b, int c, int a, const Block& blk, int64_t k) const;
  void update(sim::CoreBuilder& b, int c, int a, const Block& blk, int64_t k) const;
  void finalize(sim::CoreBuilder& b, int a, const Item& it) const;
  void merge(sim::CoreBuilder& b, int v, int aivs) const;
  void mmad(sim::CoreBuilder& b, int64_t m, int64_t n, int64_t k, int p, const TileRef& acc, bool accumulate) const {
    sim::Operands o;
    o.src = nz(p * d_.l0a_half, r16(m), s_.dtype), o.src2 = nz(p * d_.l0b_half, r16(k), s_.dtype);
    o.dst = acc, o.accumulate = accumulate;
    b.mmad(static_cast<uint32_t>(m), static_cast<uint32_t>(n), static_cast<uint32_t>(k), s_.dtype, o);
  }

  const SparseAttentionShape& s_;
  const SparseAttentionTiling& t_;
  const SparsePlan& plan_;
  const Dims& d_;
  const UbLayout& u_;
  const L1Layout& l_;
  const GmLayout& g_;
  int cores_;
  bool functional_;
  int64_t e_;
  bool aiv_gather_;
};

// C1 of block k: S^T = K Q^T in K slices of k0, then each AIV's heads (columns) handed over.
void Lowering::c1(sim::CoreBuilder& b, int c, const Block& blk, int64_t k, int q, int64_t& l0n) const {
  Emit em{b};
  const DType dt = s_.dtype;
  const int64_t n = rows_of(blk), Hg = d_.Hg, Dq = d_.Dq, e = e_;
  const int sb = static_cast<int>(k % 2);
  if (!aiv_gather_ || !d_.via_ub) b.wait_flag(Pipe::Mte2, Pipe::Mte1, static_cast<int>(k % t_.stages));
  else for (int a = 0; a < d_.A; ++a) b.cross_wait(Pipe::Mte1, up(kKReady, a));  // the AIVs wrote the tile (UB->L1)
  if (blk.b == 0) b.wait_flag(Pipe::Mte2, Pipe::Mte1, kQEvent + q);
  const TileRef acc = nz(l_.l0c_s[sb], r16(d_.KB), DType::Fp32);
  for (int64_t kk = 0; kk < Dq; kk += d_.k0) {
    const int64_t kq = std::min(d_.k0, Dq - kk);
    const int p = static_cast<int>(l0n++ % 2);
    b.wait_flag(Pipe::M, Pipe::Mte1, p);
    em.copy(Path::L1ToL0A, nz(k_tile(k), r16(d_.KB), dt, 0, kk), nz(p * d_.l0a_half, r16(n), dt), n, kq, {}, r16(n) * kq * e);
    em.copy(Path::L1ToL0B, nz(l_.q[q], r16(Dq), dt, kk, 0), nz(p * d_.l0b_half, r16(kq), dt), kq, Hg, {}, kq * r16(Hg) * e);
    b.set_flag(Pipe::Mte1, Pipe::M, p);
    b.wait_flag(Pipe::Mte1, Pipe::M, p);
    if (kk == 0) b.wait_flag(Pipe::Fixpipe, Pipe::M, sb);
    mmad(b, n, Hg, kq, p, acc, kk > 0);
    b.set_flag(Pipe::M, Pipe::Mte1, p);
  }
  if (blk.b == blk.it->blocks - 1) b.set_flag(Pipe::Mte1, Pipe::Mte2, kQEvent + q);  // Q^T read for the last time
  b.set_flag(Pipe::M, Pipe::Fixpipe, sb);
  b.wait_flag(Pipe::M, Pipe::Fixpipe, sb);
  if (k >= 2)
    for (int a = 0; a < d_.Av; ++a) b.cross_wait(Pipe::Fixpipe, up(kSFree, a));
  if (d_.via_ub) {
    for (int a = 0; a < d_.Av; ++a) {
      TileRef src = acc;
      src.col0 = static_cast<uint32_t>(a * d_.Hh);
      em.copy(Path::L0CToUb, src, nd(u_.s[sb], d_.Hh, DType::Fp32), n, d_.Hh, {}, -1, a);
    }
  } else {
    const uint64_t dst = ws_s(c, k);
    em.copy(Path::L0CToGmNz2Nd, acc, nd(dst, Hg, DType::Fp32), n, Hg, region(dst, n, Hg * 4, Hg * 4));
  }
  b.cross_set(Pipe::Fixpipe, 2, kSReady);
  b.set_flag(Pipe::Fixpipe, Pipe::M, sb);
}

// C2 of block k: O_blk = P V in N chunks of n0, written for the AIVs chunk by chunk.
void Lowering::c2(sim::CoreBuilder& b, int c, const Block& blk, int64_t k, int64_t& l0n, int64_t& on) const {
  Emit em{b};
  const DType dt = s_.dtype;
  const int64_t n = rows_of(blk), Hg = d_.Hg, Hh = d_.Hh, D = d_.D, e = e_;
  const int pp = static_cast<int>(k % 2);
  const uint64_t ptile = l_.p0 + pp * l_.p_stride;
  if (!d_.via_ub) {  // P^T [n x Hg] from the GM slot, read column-major as P into NZ
    for (int a = 0; a < d_.Av; ++a) b.cross_wait(Pipe::Mte2, up(kPReady, a));
    b.wait_flag(Pipe::Mte1, Pipe::Mte2, kPEvent + pp);
    const uint64_t src = ws_p(c, k);
    em.copy(Path::GmToL1Nd2Nz, ndt(src, Hg, dt), nz(ptile, r16(Hg), dt), Hg, n, region(src, n, Hg * e, Hg * e));
    b.cross_set(Pipe::Mte2, 2, kPFree);
    b.set_flag(Pipe::Mte2, Pipe::Mte1, kPEvent + pp);
    b.wait_flag(Pipe::Mte2, Pipe::Mte1, kPEvent + pp);
  } else {
    for (int a = 0; a < d_.Av; ++a) b.cross_wait(Pipe::Mte1, up(kPReady, a));
  }
  for (int64_t nc = 0; nc < D; nc += d_.n0) {
    const int64_t nl = std::min(d_.n0, D - nc);
    const int p = static_cast<int>(l0n++ % 2), ob = static_cast<int>(on++ % 2);
    b.wait_flag(Pipe::M, Pipe::Mte1, p);
    const TileRef l0a = nz(p * d_.l0a_half, r16(Hg), dt);
    if (!d_.via_ub) {
      em.copy(Path::L1ToL0A, nz(ptile, r16(Hg), dt), l0a, Hg, n, {}, r16(Hg) * r16(n) * e);
    } else {
      for (int a = 0; a < d_.Av; ++a) {
        TileRef dst = l0a;
        dst.row0 = static_cast<uint32_t>(a * Hh);
        em.copy(Path::L1ToL0A, nz(ptile + a * l_.p_aiv, r16(Hh), dt), dst, Hh, n, {}, Hh * r16(n) * e);
      }
    }
    em.copy(Path::L1ToL0B, nz(k_tile(k), r16(d_.KB), dt, 0, nc), nz(p * d_.l0b_half, r16(n), dt), n, nl, {}, r16(n) * nl * e);
    if (nc + d_.n0 >= D) {  // P and the K tile are read for the last time
      if (d_.via_ub) b.cross_set(Pipe::Mte1, 2, kPFree);
      else b.set_flag(Pipe::Mte1, Pipe::Mte2, kPEvent + pp);
      if (!aiv_gather_ || !d_.via_ub) b.set_flag(Pipe::Mte1, Pipe::Mte2, static_cast<int>(k % t_.stages));
      else b.cross_set(Pipe::Mte1, 2, kKFree);
    }
    b.set_flag(Pipe::Mte1, Pipe::M, p);
    b.wait_flag(Pipe::Mte1, Pipe::M, p);
    b.wait_flag(Pipe::Fixpipe, Pipe::M, 2 + ob);
    const TileRef acc = nz(l_.l0c_o[ob], r16(Hg), DType::Fp32);
    mmad(b, Hg, nl, n, p, acc, false);
    b.set_flag(Pipe::M, Pipe::Mte1, p);
    b.set_flag(Pipe::M, Pipe::Fixpipe, 2 + ob);
    b.wait_flag(Pipe::M, Pipe::Fixpipe, 2 + ob);
    if (nc == 0 && k >= d_.o_depth)
      for (int a = 0; a < d_.Av; ++a) b.cross_wait(Pipe::Fixpipe, up(kOFree, a));
    if (d_.via_ub) {
      for (int a = 0; a < d_.Av; ++a) {
        TileRef src = acc, dst = nd(u_.pv, D, DType::Fp32);
        src.row0 = static_cast<uint32_t>(a * Hh), dst.col0 = static_cast<uint32_t>(nc);
        em.copy(Path::L0CToUb, src, dst, Hh, nl, {}, -1, a);
      }
    } else {
      const uint64_t dst = ws_o(c, k) + nc * 4;
      em.copy(Path::L0CToGmNz2Nd, acc, nd(dst, D, DType::Fp32), Hg, nl, region(dst, Hg, nl * 4, D * 4));
    }
    b.set_flag(Pipe::Fixpipe, Pipe::M, 2 + ob);
  }
  b.cross_set(Pipe::Fixpipe, 2, kOReady);
}

void Lowering::aic(sim::CoreProgram& cp, int c) const {
  sim::CoreBuilder b(cp, functional_);
  Emit em{b};
  const DType dt = s_.dtype;
  const int64_t Hg = d_.Hg, Dq = d_.Dq, e = e_;
  for (int st = 0; st < t_.stages; ++st) b.set_flag(Pipe::Mte1, Pipe::Mte2, st);
  for (int q = 0; q < 2; ++q) b.set_flag(Pipe::Mte1, Pipe::Mte2, kQEvent + q), b.set_flag(Pipe::Mte1, Pipe::Mte2, kPEvent + q);
  for (int p = 0; p < 2; ++p) b.set_flag(Pipe::M, Pipe::Mte1, p);
  for (int i = 0; i < 4; ++i) b.set_flag(Pipe::Fixpipe, Pipe::M, i);
  int64_t k = 0, qn = 0, l0n = 0, on = 0;
  std::optional<std::pair<Block, int64_t>> due;  // the block whose C2 follows the next C1
  for (size_t i = static_cast<size_t>(c); i < plan_.items.size(); i += static_cast<size_t>(cores_)) {
    const Item& it = plan_.items[i];
    if (it.blocks == 0) {  // nothing valid: the index checks only
      b.scalar(static_cast<uint32_t>(aiv_gather_ ? 1 : std::max<int64_t>(1, it.p1 - it.p0)));
      continue;
    }
    const int q = static_cast<int>(qn++ % 2);
    // Q^T [Dq x Hg] of the item's heads: their rows of Q read column-major.
    b.wait_flag(Pipe::Mte1, Pipe::Mte2, kQEvent + q);
    const uint64_t qa = g_.q + static_cast<uint64_t>((it.token * d_.H + it.group * Hg) * Dq * e);
    em.copy(Path::GmToL1Nd2Nz, ndt(qa, Dq, dt), nz(l_.q[q], r16(Dq), dt), Dq, Hg, region(qa, Hg, Dq * e, Dq * e));
    b.set_flag(Pipe::Mte2, Pipe::Mte1, kQEvent + q);
    for (int64_t bi = 0; bi < it.blocks; ++bi, ++k) {
      const Block blk{&it, bi};
      const auto [ra, rb] = plan_.block_rows(it, bi);
      const int ks = static_cast<int>(k % t_.stages);
      if (!aiv_gather_) {  // each valid row one small GM->L1 transfer, ND->NZ into row r of the K tile
        const auto [pa, pb] = plan_.block_positions(it, bi);
        b.wait_flag(Pipe::Mte1, Pipe::Mte2, ks);
        b.scalar(static_cast<uint32_t>(pb - pa));  // every index: load, compare with -1 and the rows
        for (int64_t r = ra; r < rb; ++r) {
          const uint64_t src = row_addr(r);
          em.copy(Path::GmToL1Nd2Nz, nd(src, Dq, dt), nz(k_tile(k), r16(d_.KB), dt, r - ra, 0), 1, Dq,
                  region(src, 1, Dq * e, Dq * e));
        }
        b.set_flag(Pipe::Mte2, Pipe::Mte1, ks);
      } else if (!d_.via_ub) {  // the AIVs packed the rows into the core's GM slot: one load
        b.scalar(1);
        for (int a = 0; a < d_.A; ++a) b.cross_wait(Pipe::Mte2, up(kKReady, a));
        b.wait_flag(Pipe::Mte1, Pipe::Mte2, ks);
        const uint64_t src = ws_k(c, k);
        em.copy(Path::GmToL1Nd2Nz, nd(src, Dq, dt), nz(k_tile(k), r16(d_.KB), dt), rb - ra, Dq, region(src, rb - ra, Dq * e, Dq * e));
        b.cross_set(Pipe::Mte2, 2, kKFree);
        b.set_flag(Pipe::Mte2, Pipe::Mte1, ks);
      } else {
        b.scalar(1);  // the block's row count
      }
      c1(b, c, blk, k, q, l0n);
      if (due) c2(b, c, due->first, due->second, l0n, on);
      due = std::pair{blk, k};
    }
  }
  if (due) c2(b, c, due->first, due->second, l0n, on);
  // Take back the FREE sets of the last slots, and the primed events.
  for (int64_t i = 0; i < std::min<int64_t>(k, 2); ++i)
    for (int a = 0; a < d_.Av; ++a) b.cross_wait(Pipe::Fixpipe, up(kSFree, a));
  for (int64_t i = 0; i < std::min<int64_t>(k, d_.o_depth); ++i)
    for (int a = 0; a < d_.Av; ++a) b.cross_wait(Pipe::Fixpipe, up(kOFree, a));
  for (int st = 0; st < t_.stages; ++st) b.wait_flag(Pipe::Mte1, Pipe::Mte2, st);
  for (int q = 0; q < 2; ++q) b.wait_flag(Pipe::Mte1, Pipe::Mte2, kQEvent + q), b.wait_flag(Pipe::Mte1, Pipe::Mte2, kPEvent + q);
  for (int p = 0; p < 2; ++p) b.wait_flag(Pipe::M, Pipe::Mte1, p);
  for (int i = 0; i < 4; ++i) b.wait_flag(Pipe::Fixpipe, Pipe::M, i);
}

// gather: aiv. Block k's rows in chunks, chunk j on AIV j % A: each row one GM->UB copy,
// then the chunk onward in one copy (UB->L1 into the K tile, or UB->GM into the core's K slot).
void Lowering::gather_rows(sim::CoreBuilder& b, int c, int a, const Block& blk, int64_t k, int64_t& gn) const {
  Emit em{b};
  const DType dt = s_.dtype;
  const int64_t Dq = d_.Dq, e = e_;
  const auto [ra, rb] = plan_.block_rows(*blk.it, blk.b);
  const auto [pa, pb] = plan_.block_positions(*blk.it, blk.b);
  const int64_t n = rb - ra;
  b.scalar(static_cast<uint32_t>(pb - pa));  // every index of the block, to find this AIV's rows
  bool waited = false;
  auto destination_free = [&]() {
    if (!waited && k >= d_.k_depth) b.cross_wait(Pipe::Mte3, kKFree);
    waited = true;
  };
  const int64_t chunk = gather_chunk(d_.via_ub);
  for (int64_t j = a; j * chunk < n; j += d_.A) {
    const int64_t c0 = j * chunk, cn = std::min(chunk, n - c0);
    const int st = static_cast<int>(gn++ % 2);
    b.wait_flag(Pipe::Mte3, Pipe::Mte2, st);
    for (int64_t r = 0; r < cn; ++r) {
      const uint64_t src = row_addr(ra + c0 + r);
      em.copy(Path::GmToUb, nd(src, Dq, dt), nd(u_.stg[st] + r * Dq * e, Dq, dt), 1, Dq, region(src, 1, Dq * e, Dq * e));
    }
    b.set_flag(Pipe::Mte2, Pipe::Mte3, st);
    b.wait_flag(Pipe::Mte2, Pipe::Mte3, st);
    destination_free();
    if (d_.via_ub) {
      em.copy(Path::UbToL1, nd(u_.stg[st], Dq, dt), nz(k_tile(k), r16(d_.KB), dt, c0, 0), cn, Dq);
    } else {
      const uint64_t dst = ws_k(c, k) + c0 * Dq * e;
      em.copy(Path::UbToGm, nd(u_.stg[st], Dq, dt), nd(dst, Dq, dt), cn, Dq, region(dst, 1, cn * Dq * e, cn * Dq * e));
    }
    b.set_flag(Pipe::Mte3, Pipe::Mte2, st);
  }
  destination_free();
  b.cross_set(Pipe::Mte3, 2, up(kKReady, a));
}

// V1 of block k on this AIV's heads: P = exp(scale S - m), the running max and sum, P to the cube.
void Lowering::softmax(sim::CoreBuilder& b, int c, int a, const Block& blk, int64_t k) const {
  Emit em{b};
  const DType dt = s_.dtype;
  const int64_t Hh = d_.Hh, n = rows_of(blk), E = n * Hh, e = e_;
  const int sb = static_cast<int>(k % 2);
  const uint64_t S = u_.s[sb];
  if (!d_.via_ub) {
    b.cross_wait(Pipe::Mte2, kSReady);
    b.wait_flag(Pipe::V, Pipe::Mte2, sb);
    const uint64_t src = ws_s(c, k) + a * Hh * 4;
    em.copy(Path::GmToUb, nd(src, d_.Hg, DType::Fp32), nd(S, Hh, DType::Fp32), n, Hh, region(src, n, Hh * 4, d_.Hg * 4));
    b.cross_set(Pipe::Mte2, 2, up(kSFree, a));  // the GM slot is read
    b.set_flag(Pipe::Mte2, Pipe::V, sb);
    b.wait_flag(Pipe::Mte2, Pipe::V, sb);
  } else {
    b.cross_wait(Pipe::V, kSReady);
  }
  b.scalar(1);  // the block's row count
  const uint64_t m = u_.m[blk.b % 2], mp = u_.m[(blk.b + 1) % 2], al = u_.alpha[blk.b % 2];
  em.f32(VecOp::Muls, S, S, S, E, s_.scale);
  if (blk.b == 0) {
    em.fold(VecOp::Max, m, S, u_.scr, n, Hh);
  } else {  // m = max(m_prev, block max), alpha = exp(m_prev - m)
    em.fold(VecOp::Max, u_.bm, S, u_.scr, n, Hh);
    em.f32(VecOp::Max, m, mp, u_.bm, Hh);
    em.f32(VecOp::Sub, al, mp, m, Hh);
    em.f32(VecOp::Exp, al, al, al, Hh);
  }
  em.broadcast(u_.scr, m, n, Hh);
  em.f32(VecOp::Sub, S, S, u_.scr, E);
  em.f32(VecOp::Exp, S, S, S, E);
  b.wait_flag(Pipe::Mte3, Pipe::V, sb);
  em.ew(VecOp::Cast, DType::Fp32, u_.p[sb], dt, S, S, E);
  if (blk.b == 0) {
    em.fold(VecOp::Add, u_.l, S, u_.scr, n, Hh);
  } else {  // l = l alpha + block sum
    em.fold(VecOp::Add, u_.bs, S, u_.scr, n, Hh);
    em.f32(VecOp::Mul, u_.l, u_.l, al, Hh);
    em.f32(VecOp::Add, u_.l, u_.l, u_.bs, Hh);
  }
  if (d_.via_ub) b.cross_set(Pipe::V, 2, up(kSFree, a));  // the UB slot is consumed
  else b.set_flag(Pipe::V, Pipe::Mte2, sb);
  b.set_flag(Pipe::V, Pipe::Mte3, sb);
  b.wait_flag(Pipe::V, Pipe::Mte3, sb);
  if (k >= 2) b.cross_wait(Pipe::Mte3, kPFree);
  if (d_.via_ub) {  // P^T [n x Hh] read column-major: this AIV's rows of P, into its L1 tile
    em.copy(Path::UbToL1, ndt(u_.p[sb], Hh, dt), nz(l_.p0 + sb * l_.p_stride + a * l_.p_aiv, r16(Hh), dt), Hh, n);
  } else {  // this AIV's columns of the GM slot's P^T [n x Hg]
    const uint64_t dst = ws_p(c, k) + a * Hh * e;
    em.copy(Path::UbToGm, nd(u_.p[sb], Hh, dt), nd(dst, d_.Hg, dt), n, Hh, region(dst, n, Hh * e, d_.Hg * e));
  }
  b.cross_set(Pipe::Mte3, 2, up(kPReady, a));
  b.set_flag(Pipe::Mte3, Pipe::V, sb);
}

// O = O alpha + O_blk for block k (O = O_blk for an item's first block). On 2201 O_blk comes from
// the GM slot kPvRows rows at a time, double-buffered.
void Lowering::update(sim::CoreBuilder& b, int c, int a, const Block& blk, int64_t k) const {
  Emit em{b};
  const int64_t Hh = d_.Hh, D = d_.D;
  auto apply = [&](uint64_t o, uint64_t pv, int64_t rows, int64_t row0) {
    if (blk.b == 0) {
      em.move(o, pv, rows * D);
    } else {
      em.per_row_muls(o, o, u_.alpha[blk.b % 2] + row0 * 4, rows, D);
      em.f32(VecOp::Add, o, o, pv, rows * D);
    }
  };
  if (d_.via_ub) {
    b.cross_wait(Pipe::V, kOReady);
    if (blk.b == 0) b.wait_flag(Pipe::Mte3, Pipe::V, kOutEvent);  // the previous item's output has left O
    apply(u_.o, u_.pv, Hh, 0);
    b.cross_set(Pipe::V, 2, up(kOFree, a));
    return;
  }
  const int64_t chunks = ceil_div(Hh, kPvRows);
  const uint64_t slot = ws_o(c, k) + a * Hh * D * 4;
  auto load = [&](int64_t j) {
    const int buf = j % 2, ev = buf ? 7 : 2;
    const int64_t r0 = j * kPvRows, rows = std::min(kPvRows, Hh - r0);
    b.wait_flag(Pipe::V, Pipe::Mte2, ev);
    const uint64_t src = slot + r0 * D * 4;
    em.copy(Path::GmToUb, nd(src, D, DType::Fp32), nd(buf ? u_.pv2 : u_.pv, D, DType::Fp32), rows, D,
            region(src, 1, rows * D * 4, rows * D * 4));
    if (j == chunks - 1) b.cross_set(Pipe::Mte2, 2, up(kOFree, a));  // the GM slot is read
    b.set_flag(Pipe::Mte2, Pipe::V, ev);
  };
  b.cross_wait(Pipe::Mte2, kOReady);
  load(0);
  if (blk.b == 0) b.wait_flag(Pipe::Mte3, Pipe::V, kOutEvent);
  for (int64_t j = 0; j < chunks; ++j) {
    if (j + 1 < chunks) load(j + 1);
    const int buf = j % 2, ev = buf ? 7 : 2;
    const int64_t r0 = j * kPvRows, rows = std::min(kPvRows, Hh - r0);
    b.wait_flag(Pipe::Mte2, Pipe::V, ev);
    apply(u_.o + r0 * D * 4, buf ? u_.pv2 : u_.pv, rows, r0);
    b.set_flag(Pipe::V, Pipe::Mte2, ev);
  }
}

// out = O / (l + exp(sink - m)) in the output type, lse = m + ln l; with split_kv, the split's
// normalised partial O / l and its lse (fp32) into the GM workspace instead.
void Lowering::finalize(sim::CoreBuilder& b, int a, const Item& it) const {
  Emit em{b};
  const DType dt = s_.dtype;
  const int64_t Hh = d_.Hh, D = d_.D, row = head_row(it, a);
  const bool split = t_.split_kv > 1;
  if (it.blocks == 0) {  // no valid index: out 0, lse +inf
    b.wait_flag(Pipe::Mte3, Pipe::V, kOutEvent);
    em.dup(u_.o, Hh * D, 0.0, dt);
    em.dup(u_.lse, Hh, std::numeric_limits<double>::infinity());
  } else {
    const uint64_t m = u_.m[(it.blocks - 1) % 2];
    uint64_t den = u_.l;
    if (s_.sink && !split) {
      b.wait_flag(Pipe::Mte2, Pipe::V, kSinkEvent);
      em.f32(VecOp::Sub, u_.tmp, u_.sink, m, Hh);
      em.f32(VecOp::Exp, u_.tmp, u_.tmp, u_.tmp, Hh);
      em.f32(VecOp::Add, u_.den, u_.l, u_.tmp, Hh);
      b.set_flag(Pipe::V, Pipe::Mte2, kSinkEvent);
      den = u_.den;
    }
    em.f32(VecOp::Div, u_.bs, u_.ones, den, Hh);
    em.per_row_muls(u_.o, u_.o, u_.bs, Hh, D);
    if (!split) em.ew(VecOp::Cast, DType::Fp32, u_.o, dt, u_.o, u_.o, Hh * D);  // in place, narrowing
    em.f32(VecOp::Ln, u_.tmp, u_.l, u_.l, Hh);
    em.f32(VecOp::Add, u_.lse, u_.tmp, m, Hh);
    if (!split && s_.lse_base2) em.f32(VecOp::Muls, u_.lse, u_.lse, u_.lse, Hh, M_LOG2E);  // a split's partial stays natural
  }
  b.set_flag(Pipe::V, Pipe::Mte3, kOutEvent);
  b.wait_flag(Pipe::V, Pipe::Mte3, kOutEvent);
  const DType ot = split ? DType::Fp32 : dt;
  const int64_t eo = sim::dtype_bytes(ot);
  const int64_t prow = split ? (it.token * t_.split_kv + it.split) * d_.H + it.group * d_.Hg + a * Hh : row;
  const uint64_t o_dst = (split ? g_.part_o : g_.out) + static_cast<uint64_t>(prow * D * eo);
  const uint64_t l_dst = (split ? g_.part_lse : g_.lse) + static_cast<uint64_t>(prow * 4);
  em.copy(Path::UbToGm, nd(u_.o, D, ot), nd(o_dst, D, ot), Hh, D, region(o_dst, 1, Hh * D * eo, Hh * D * eo));
  em.copy(Path::UbToGm, nd(u_.lse, Hh, DType::Fp32), nd(l_dst, Hh, DType::Fp32), 1, Hh, region(l_dst, 1, Hh * 4, Hh * 4));
  b.set_flag(Pipe::Mte3, Pipe::V, kOutEvent);
}

void Lowering::aiv(sim::CoreProgram& cp, int c, int a) const {
  sim::CoreBuilder b(cp, functional_);
  Emit em{b};
  const bool split = t_.split_kv > 1, sink = s_.sink && !split;
  if (a >= d_.Av) {
    idle_aiv(b, c, a);
    if (split) merge(b, c * d_.A + a, cores_ * d_.A);
    return;
  }
  for (int q = 0; q < 3; ++q) {
    if (!d_.via_ub) b.set_flag(Pipe::V, Pipe::Mte2, q);
    b.set_flag(Pipe::Mte3, Pipe::V, q);
  }
  if (!d_.via_ub) b.set_flag(Pipe::V, Pipe::Mte2, 7);
  if (sink) b.set_flag(Pipe::V, Pipe::Mte2, kSinkEvent);
  if (aiv_gather_)
    for (int q = 0; q < 2; ++q) b.set_flag(Pipe::Mte3, Pipe::Mte2, q);
  em.dup(u_.ones, d_.Hh, 1.0);
  const std::vector<Block> blocks = blocks_of(c);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  int64_t k = 0, gn = 0;
  // Gathers run one block ahead of the softmax, so rows move while the vector unit computes.
  if (aiv_gather_ && nb > 0) gather_rows(b, c, a, blocks[0], 0, gn);
  for (size_t i = static_cast<size_t>(c); i < plan_.items.size(); i += static_cast<size_t>(cores_)) {
    const Item& it = plan_.items[i];
    if (it.blocks == 0) {
      b.scalar(static_cast<uint32_t>(aiv_gather_ ? std::max<int64_t>(1, it.p1 - it.p0) : 1));
      if (!split) finalize(b, a, it);
      continue;
    }
    if (sink) {
      const uint64_t src = g_.sinks + static_cast<uint64_t>((it.group * d_.Hg + a * d_.Hh) * 4);
      b.wait_flag(Pipe::V, Pipe::Mte2, kSinkEvent);
      em.copy(Path::GmToUb, nd(src, d_.Hh, DType::Fp32), nd(u_.sink, d_.Hh, DType::Fp32), 1, d_.Hh, region(src, 1, d_.Hh * 4, d_.Hh * 4));
      b.set_flag(Pipe::Mte2, Pipe::V, kSinkEvent);
    }
    for (int64_t bi = 0; bi < it.blocks; ++bi, ++k) {
      softmax(b, c, a, blocks[static_cast<size_t>(k)], k);
      if (aiv_gather_ && k + 1 < nb) gather_rows(b, c, a, blocks[static_cast<size_t>(k + 1)], k + 1, gn);
      if (bi > 0) update(b, c, a, blocks[static_cast<size_t>(k - 1)], k - 1);
    }
    update(b, c, a, blocks[static_cast<size_t>(k - 1)], k - 1);
    finalize(b, a, it);
  }
  for (int q = 0; q < 3; ++q) {
    if (!d_.via_ub) b.wait_flag(Pipe::V, Pipe::Mte2, q);
    b.wait_flag(Pipe::Mte3, Pipe::V, q);
  }
  if (!d_.via_ub) b.wait_flag(Pipe::V, Pipe::Mte2, 7);
  if (sink) b.wait_flag(Pipe::V, Pipe::Mte2, kSinkEvent);
  if (aiv_gather_) {
    for (int q = 0; q < 2; ++q) b.wait_flag(Pipe::Mte3, Pipe::Mte2, q);
    for (int64_t i = 0; i < std::min<int64_t>(nb, d_.k_depth); ++i) b.cross_wait(Pipe::Mte3, kKFree);
  }
  for (int64_t i = 0; i < std::min<int64_t>(nb, 2); ++i) b.cross_wait(Pipe::Mte3, kPFree);
  if (split) merge(b, c * d_.A + a, cores_ * d_.A);
}

// An AIV that holds none of the head block's heads (head_block / A no multiple of 8): it gathers
// its share of the rows as the others do, and takes the AIC's mode-2 broadcasts meant for the
// head-holding AIVs (S READY, O READY, P FREE) in the order they would, so none pile up past the
// pending limit; the AIC counts only the head-holding AIVs' S FREE, P READY and O FREE.
void Lowering::idle_aiv(sim::CoreBuilder& b, int c, int a) const {
  if (aiv_gather_)
    for (int q = 0; q < 2; ++q) b.set_flag(Pipe::Mte3, Pipe::Mte2, q);
  const std::vector<Block> blocks = blocks_of(c);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  int64_t gn = 0;
  if (aiv_gather_ && nb > 0) gather_rows(b, c, a, blocks[0], 0, gn);
  for (int64_t k = 0; k < nb; ++k) {
    b.cross_wait(Pipe::V, kSReady);
    if (aiv_gather_ && k + 1 < nb) gather_rows(b, c, a, blocks[static_cast<size_t>(k + 1)], k + 1, gn);
    if (k > 0) b.cross_wait(Pipe::V, kOReady), b.cross_wait(Pipe::V, kPFree);
  }
  if (nb > 0) b.cross_wait(Pipe::V, kOReady), b.cross_wait(Pipe::V, kPFree);
  if (aiv_gather_) {
    for (int q = 0; q < 2; ++q) b.wait_flag(Pipe::Mte3, Pipe::Mte2, q);
    for (int64_t i = 0; i < std::min<int64_t>(nb, d_.k_depth); ++i) b.cross_wait(Pipe::Mte3, kKFree);
  }
}

// Split-KV merge (FlashDecoding): after every AIV has written its partials (barrier), AIV v takes
// rows [v TH / V, (v + 1) TH / V) of the T x H query heads, kMergeRows at a time within a token:
//   M = max_s lse_s, w_s = exp(lse_s - M), L = sum_s w_s, out = (sum_s w_s o_s) / (L + exp(sink - M)),
//   lse = M + ln L, over the splits that hold a valid row (the split cores' counts say which).
void Lowering::merge(sim::CoreBuilder& b, int v, int aivs) const {
  Emit em{b};
  const DType dt = s_.dtype;
  const int64_t H = d_.H, D = d_.D, S = t_.split_kv, e = e_, TH = s_.tokens * H;
  b.cross_set(Pipe::Mte3, 0, kMergeBarrier);
  b.cross_wait(Pipe::Mte2, kMergeBarrier);
  for (int q = 4; q < 7; ++q) b.set_flag(Pipe::V, Pipe::Mte2, q);
  b.set_flag(Pipe::Mte3, Pipe::V, 3);
  em.dup(u_.mones, kMergeRows, 1.0);
  int64_t on = 0;
  for (int64_t r = TH * v / aivs, r_end = TH * (v + 1) / aivs; r < r_end;) {
    const int64_t t = r / H, h = r % H, R = std::min({kMergeRows, r_end - r, H - h});
    std::vector<int> splits;
    for (int s = 0; s < S; ++s)
      if (plan_.split_nonempty(t, s, static_cast<int>(S))) splits.push_back(s);
    b.scalar(static_cast<uint32_t>(S));  // each split's valid-row count
    auto part = [&](int s) { return (t * S + s) * H + h; };
    if (splits.empty()) {
      b.wait_flag(Pipe::Mte3, Pipe::V, 3);
      em.dup(u_.acc, R * D, 0.0, dt);
      em.dup(u_.mlse, R, std::numeric_limits<double>::infinity());
    } else {
      const int64_t ns = static_cast<int64_t>(splits.size());
      b.wait_flag(Pipe::V, Pipe::Mte2, 6);
      for (int64_t i = 0; i < ns; ++i) {
        const uint64_t src = g_.part_lse + static_cast<uint64_t>(part(splits[i]) * 4);
        em.copy(Path::GmToUb, nd(src, R, DType::Fp32), nd(u_.lses + i * R * 4, R, DType::Fp32), 1, R, region(src, 1, R * 4, R * 4));
      }
      if (s_.sink) {
        const uint64_t src = g_.sinks + static_cast<uint64_t>(h * 4);
        em.copy(Path::GmToUb, nd(src, R, DType::Fp32), nd(u_.msink, R, DType::Fp32), 1, R, region(src, 1, R * 4, R * 4));
      }
      b.set_flag(Pipe::Mte2, Pipe::V, 6);
      auto load = [&](int64_t i) {
        const int ob = static_cast<int>((on + i) % 2);
        const uint64_t src = g_.part_o + static_cast<uint64_t>(part(splits[i]) * D * 4);
        b.wait_flag(Pipe::V, Pipe::Mte2, 4 + ob);
        em.copy(Path::GmToUb, nd(src, D, DType::Fp32), nd(u_.ob[ob], D, DType::Fp32), R, D, region(src, 1, R * D * 4, R * D * 4));
        b.set_flag(Pipe::Mte2, Pipe::V, 4 + ob);
      };
      load(0);
      b.wait_flag(Pipe::Mte2, Pipe::V, 6);
      em.move(u_.mx, u_.lses, R);
      for (int64_t i = 1; i < ns; ++i) em.f32(VecOp::Max, u_.mx, u_.mx, u_.lses + i * R * 4, R);
      for (int64_t i = 0; i < ns; ++i) {
        em.f32(VecOp::Sub, u_.w + i * R * 4, u_.lses + i * R * 4, u_.mx, R);
        em.f32(VecOp::Exp, u_.w + i * R * 4, u_.w + i * R * 4, u_.w, R);
      }
      em.move(u_.L, u_.w, R);
      for (int64_t i = 1; i < ns; ++i) em.f32(VecOp::Add, u_.L, u_.L, u_.w + i * R * 4, R);
      b.wait_flag(Pipe::Mte3, Pipe::V, 3);
      for (int64_t i = 0; i < ns; ++i) {
        if (i + 1 < ns) load(i + 1);
        const int ob = static_cast<int>((on + i) % 2);
        b.wait_flag(Pipe::Mte2, Pipe::V, 4 + ob);
        if (i == 0) {
          em.per_row_muls(u_.acc, u_.ob[ob], u_.w, R, D);
        } else {
          em.per_row_muls(u_.ob[ob], u_.ob[ob], u_.w + i * R * 4, R, D);
          em.f32(VecOp::Add, u_.acc, u_.acc, u_.ob[ob], R * D);
        }
        b.set_flag(Pipe::V, Pipe::Mte2, 4 + ob);
      }
      on += ns;
      uint64_t den = u_.L;
      if (s_.sink) {
        em.f32(VecOp::Sub, u_.mtmp, u_.msink, u_.mx, R);
        em.f32(VecOp::Exp, u_.mtmp, u_.mtmp, u_.mtmp, R);
        em.f32(VecOp::Add, u_.mden, u_.L, u_.mtmp, R);
        den = u_.mden;
      }
      em.f32(VecOp::Div, u_.mrcp, u_.mones, den, R);
      em.per_row_muls(u_.acc, u_.acc, u_.mrcp, R, D);
      em.ew(VecOp::Cast, DType::Fp32, u_.acc, dt, u_.acc, u_.acc, R * D);
      em.f32(VecOp::Ln, u_.mtmp, u_.L, u_.L, R);
      em.f32(VecOp::Add, u_.mlse, u_.mtmp, u_.mx, R);
      if (s_.lse_base2) em.f32(VecOp::Muls, u_.mlse, u_.mlse, u_.mlse, R, M_LOG2E);
      b.set_flag(Pipe::V, Pipe::Mte2, 6);
    }
    b.set_flag(Pipe::V, Pipe::Mte3, 3);
    b.wait_flag(Pipe::V, Pipe::Mte3, 3);
    const uint64_t o_dst = g_.out + static_cast<uint64_t>(r * D * e), l_dst = g_.lse + static_cast<uint64_t>(r * 4);
    em.copy(Path::UbToGm, nd(u_.acc, D, dt), nd(o_dst, D, dt), R, D, region(o_dst, 1, R * D * e, R * D * e));
    em.copy(Path::UbToGm, nd(u_.mlse, R, DType::Fp32), nd(l_dst, R, DType::Fp32), 1, R, region(l_dst, 1, R * 4, R * 4));
    b.set_flag(Pipe::Mte3, Pipe::V, 3);
    r += R;
  }
  for (int q = 4; q < 7; ++q) b.wait_flag(Pipe::V, Pipe::Mte2, q);
  b.wait_flag(Pipe::Mte3, Pipe::V, 3);
}

}  // namespace

SparseL0 sparse_attention_l0(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw) {
  const Dims d = dims_of(s, t, hw);
  return {d.k0, d.n0};
}

int64_t sparse_attention_ub_bytes(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw) {
  const UbLayout u = ub_layout(s, t, dims_of(s, t, hw));
  return static_cast<int64_t>(std::max(u.end, u.merge_end));
}

int64_t sparse_attention_l1_bytes(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw) {
  return static_cast<int64_t>(l1_layout(s, t, dims_of(s, t, hw)).end);
}

int64_t sparse_attention_l0c_bytes(const SparseAttentionShape& s, const SparseAttentionTiling& t, const sim::HardwareSpec& hw) {
  return static_cast<int64_t>(l1_layout(s, t, dims_of(s, t, hw)).l0c_end);
}

sim::Program lower_sparse_attention(const SparseAttentionShape& s, const SparseAttentionTiling& t, const SparsePlan& plan,
                                    const std::vector<TensorInfo>& tensors, const sim::HardwareSpec& hw, bool functional,
                                    const std::string& name) {
  const Dims d = dims_of(s, t, hw);
  const int cores = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t.cores, static_cast<int64_t>(plan.items.size()))));
  const UbLayout u = ub_layout(s, t, d);
  const L1Layout l = l1_layout(s, t, d);
  const GmLayout g = gm_layout(s, t, d, tensors, cores);
  sim::Program prog;
  prog.name = name;
  prog.gm_footprint_bytes = g.footprint;
  const Lowering low(s, t, plan, d, u, l, g, cores, functional);
  for (int c = 0; c < cores; ++c) {
    sim::CoreProgram cp{sim::CoreKind::Aic, c, {}, {}};
    low.aic(cp, c);
    prog.cores.push_back(std::move(cp));
  }
  for (int c = 0; c < cores; ++c)
    for (int a = 0; a < d.A; ++a) {
      sim::CoreProgram cp{sim::CoreKind::Aiv, c * d.A + a, {}, {}};
      low.aiv(cp, c, a);
      prog.cores.push_back(std::move(cp));
    }
  return prog;
}

}  // namespace npusim::kernels
