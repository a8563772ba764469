// Lowering of the flash attention kernel (flash_attention.hpp): the AIC stream (K / V loads, C1,
// C2 and the FIXPIPE hand-offs), the AIV streams (V1, V2, the item epilogue) and the split merge.
#include <cmath>
#include <limits>

#include "kernels/flash_attention.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::TileRef;
using sim::VecOp;

namespace {

// Cross-core flags. AIC -> AIVs (each AIV counts its own): S ready, P slot free, O chunk ready.
// AIV k -> AIC: S slot free, P ready, O slot free, each with its own id per AIV (kSFree + k, ...):
// a shared id would let an AIV with no rows answer ahead and stand in for its sibling. Then the
// all-AIV merge barrier.
constexpr int kSReady = 0, kPFree = 1, kOReady = 2, kSFree = 3;
int p_ready(int aivs, int k) { return kSFree + aivs + k; }
int o_free(int aivs, int k) { return kSFree + 2 * aivs + k; }
int merge_barrier(int aivs) { return kSFree + 3 * aivs; }
// AIC event ids. MTE2 <-> MTE1: K/V stages 0-3, Q buffers 4-5, L1 P buffers 6-7 (2201). M <-> MTE1:
// L0A halves 0-1, L0B halves 2-3. FIXPIPE <-> M: S buffers 0-1, O buffers 2-3.
constexpr int kQEvent = 4, kPEvent = 6, kL0BEvent = 2, kOEvent = 2;
// AIV event ids. S slots 0-1 (MTE2 -> V, V -> MTE3, MTE3 -> MTE2), O-chunk slots 2-3 (MTE2 <-> V),
// staging 2-3 (V <-> MTE3), the sink vectors 4-5 (MTE2 <-> V; two, by item parity, because the
// next item's sinks load before this item's epilogue), the lse vector 4 (V <-> MTE3).
constexpr int kOinEvent = 2, kStageEvent = 2, kSinkEvent = 4, kLseEvent = 4;
constexpr int64_t kPerInstr = 255 * 256 / 4;  // fp32 elements one vector instruction reaches
constexpr double kInf = std::numeric_limits<double>::infinity();

TileRef flat(uint64_t off, DType d) { return {off, 0, 0, 0, TileLayout::Flat, d}; }
TileRef nz(uint64_t off, int64_t ld, DType d, int64_t row0 = 0, int64_t col0 = 0) {
  return {off, static_cast<uint32_t>(ld), static_cast<uint32_t>(row0), static_cast<uint32_t>(col0), TileLayout::Nz, d};
}
TileRef nd(uint64_t off, int64_t ld, DType d) { return {off, static_cast<uint32_t>(ld), 0, 0, TileLayout::Nd, d}; }
uint32_t u32(int64_t x) { return static_cast<uint32_t>(x); }
// `rows` rows of `row_bytes`, `stride` apart, from `addr`.
sim::GmRegion region(uint64_t addr, int64_t rows, int64_t row_bytes, int64_t stride) {
  return {addr, u32(rows), u32(row_bytes), static_cast<uint64_t>(stride)};
}
// Rows [row0, row0 + rows) of the strips of an NZ tile in GM whose strips hold `ld` rows.
sim::GmRegion nz_region(uint64_t base, int64_t ld, int64_t row0, int64_t rows, int64_t strips, int64_t e) {
  return region(base + static_cast<uint64_t>(row0 * 16 * e), strips, rows * 16 * e, ld * 16 * e);
}
// A rows x cols tile copied from src to dst (the operands of functional runs).
void move(sim::CoreBuilder& b, Path path, int64_t bytes, sim::GmRegion gm, int64_t rows, int64_t cols, TileRef src,
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

void Lowering::rows_io(sim::CoreBuilder& b, Path path, const fa::Group& g, int64_t r0, int64_t r1, uint64_t tensor,
                       int64_t cols, int64_t col0, int64_t width, DType dt, TileRef ub) {
  const bool in = path == Path::GmToUb || path == Path::GmToL1Nd2Nz;
  const int64_t ld = seg_stride(g, cols), es = sim::dtype_bytes(dt);
  for (const fa::Segment& sg : fa::segments(g.rows, r0, r1)) {
    const uint64_t addr = tensor + static_cast<uint64_t>((row_elem(g, sg.q, sg.h, cols) + col0) * es);
    TileRef t = ub;
    if (t.layout == TileLayout::Nz) t.row0 += u32(sg.row - r0);
    else t.offset += static_cast<uint64_t>((sg.row - r0) * width * es);
    const TileRef gm = nd(addr, ld, dt);
    // A run of rows of one query is contiguous; one head's rows are `ld` apart.
    const sim::GmRegion rg = ld == width ? region(addr, 1, sg.count * width * es, sg.count * width * es)
                                         : region(addr, sg.count, width * es, ld * es);
    move(b, path, sg.count * width * es, rg, sg.count, width, in ? gm : t, in ? t : gm);
  }
}

// ---------------------------------------------------------------- AIC

void Lowering::aic(int c, sim::CoreProgram& cp) {
  sim::CoreBuilder b(cp, fn_);
  pa_ = pb_ = u_ = items_ = 0;
  auto prime = [&](bool wait) {
    auto f = [&](Pipe from, Pipe to, int id) { wait ? b.wait_flag(from, to, id) : b.set_flag(from, to, id); };
    for (int st = 0; st < t_.stages; ++st) f(Pipe::Mte1, Pipe::Mte2, st);
    for (int q = 0; q < d_.q_bufs; ++q) f(Pipe::Mte1, Pipe::Mte2, kQEvent + q);
    if (!d_.via_ub)
      for (int p = 0; p < fa::Dims::kSlots; ++p) f(Pipe::Mte1, Pipe::Mte2, kPEvent + p);
    for (int h = 0; h < 2; ++h) f(Pipe::M, Pipe::Mte1, h), f(Pipe::M, Pipe::Mte1, kL0BEvent + h);
    for (int s = 0; s < d_.s_bufs; ++s) f(Pipe::Fixpipe, Pipe::M, s);
    for (int o = 0; o < d_.o_bufs; ++o) f(Pipe::Fixpipe, Pipe::M, kOEvent + o);
  };
  prime(false);
  const int64_t T = static_cast<int64_t>(steps_.size());
  // C1 runs `lead` blocks ahead of C2: C1(t), C2(t - lead), C1(t + 1), ...
  for (int64_t t = 0; t < T + d_.lead; ++t) {
    if (t < T) c1(b, c, t);
    if (t >= d_.lead) c2(b, c, t - d_.lead);
  }
  prime(true);
  // The FREE sets of the last slots' uses.
  for (int k = 0; k < d_.aivs; ++k) {
    for (int64_t i = 0; i < std::min<int64_t>(T, fa::Dims::kSlots); ++i) b.cross_wait(Pipe::Fixpipe, kSFree + k);
    for (int64_t i = 0; i < std::min<int64_t>(u_, fa::Dims::kSlots); ++i) b.cross_wait(Pipe::Fixpipe, o_free(d_.aivs, k));
  }
}

void Lowering::load_kv(sim::CoreBuilder& b, int64_t t) {
  const Step& st = steps_[static_cast<size_t>(t)];
  const fa::Group& g = group_of(st.item);
  const int64_t kb = block_keys(g, st.j), dq = s_.d_qk, N2 = s_.heads_kv, row = (g.b * s_.kv_len + st.j * d_.Bk) * N2 + g.n2;
  const int sg = static_cast<int>(t % t_.stages);
  const uint64_t l1_k = d_.l1_stage + sg * d_.stage_bytes, k = gm_.k + static_cast<uint64_t>(row * dq * e_);
  b.wait_flag(Pipe::Mte1, Pipe::Mte2, sg);
  const sim::GmRegion rk = region(k, kb, dq * e_, N2 * dq * e_);
  if (s_.kv_shared)  // NZ of K (keys x d_qk): C2 reads V from it, C1 transposes strips
    move(b, Path::GmToL1Nd2Nz, kb * dq * e_, rk, kb, dq, nd(k, N2 * dq, s_.dtype), nz(l1_k, Bp_, s_.dtype));
  else  // NZ of K^T (d_qk x keys), the B matrix of C1
    move(b, Path::GmToL1Nd2Nz, kb * dq * e_, rk, dq, kb, {k, u32(N2 * dq), 0, 0, TileLayout::NdT, s_.dtype}, nz(l1_k, dq, s_.dtype));
  if (!s_.kv_shared) {
    const uint64_t v = gm_.v + static_cast<uint64_t>(row * s_.d_v * e_);
    move(b, Path::GmToL1Nd2Nz, kb * s_.d_v * e_, region(v, kb, s_.d_v * e_, N2 * s_.d_v * e_), kb, s_.d_v,
         nd(v, N2 * s_.d_v, s_.dtype), nz(l1_k + d_.v_off, Bp_, s_.dtype));
  }
  b.set_flag(Pipe::Mte2, Pipe::Mte1, sg);
}

void Lowering::c1(sim::CoreBuilder& b, int c, int64_t t) {
  const Step& st = steps_[static_cast<size_t>(t)];
  const fa::Group& g = group_of(st.item);
  const int64_t Mr = g.rows.count(), Mr16 = round_up(Mr, 16), kb = block_keys(g, st.j), dq = s_.d_qk, T = static_cast<int64_t>(steps_.size());
  const int qb = static_cast<int>(items_ % d_.q_bufs);
  const uint64_t l1_q = d_.l1_q + qb * d_.q_bytes;
  if (st.first) {
    if (hw_.scalar_group_cycles > 0) b.scalar(static_cast<uint32_t>(hw_.scalar_group_cycles));  // the item's addresses
    b.wait_flag(Pipe::Mte1, Pipe::Mte2, kQEvent + qb);
    rows_io(b, Path::GmToL1Nd2Nz, g, 0, Mr, gm_.q, dq, 0, dq, s_.dtype, nz(l1_q, Mp_, s_.dtype));  // Q (NZ), per segment
    b.set_flag(Pipe::Mte2, Pipe::Mte1, kQEvent + qb);
    b.wait_flag(Pipe::Mte2, Pipe::Mte1, kQEvent + qb);
  }
  // K (and V) of block t + prefetch into its stage (at the first step, blocks 0 .. prefetch).
  for (int64_t p = t == 0 ? 0 : t + d_.prefetch; p <= std::min(T - 1, t + d_.prefetch); ++p) load_kv(b, p);
  const int sg = static_cast<int>(t % t_.stages);
  const uint64_t l1_k = d_.l1_stage + sg * d_.stage_bytes;
  b.wait_flag(Pipe::Mte2, Pipe::Mte1, sg);
  // S = Q K^T over d_qk in chunks of kq0, into L0C buffer t % s_bufs.
  const int sb = static_cast<int>(t % d_.s_bufs);
  const TileRef s_tile = nz(sb * d_.s_bytes, Mp_, DType::Fp32);
  const uint64_t half_a = hw_.aic.l0a_bytes / 2, half_b = hw_.aic.l0b_bytes / 2;
  for (int64_t kc = 0; kc < dq; kc += d_.kq0) {
    const int64_t kq = std::min(d_.kq0, dq - kc);
    const int a = static_cast<int>(pa_++ % 2), bb = static_cast<int>(pb_++ % 2);
    const TileRef l0a = nz(a * half_a, Mr16, s_.dtype), l0b = nz(bb * half_b, round_up(kq, 16), s_.dtype);
    b.wait_flag(Pipe::M, Pipe::Mte1, a);
    move(b, Path::L1ToL0A, Mr16 * kq * e_, {}, Mr, kq, nz(l1_q, Mp_, s_.dtype, 0, kc), l0a);
    b.wait_flag(Pipe::M, Pipe::Mte1, kL0BEvent + bb);
    if (s_.kv_shared) {
      // K^T from the NZ of K: each 16-column strip of K is a (keys x 16) row-major matrix, i.e.
      // its transpose read column-major with ld 16 (LoadData with transpose, per strip here).
      for (int64_t d = kc; d < kc + kq; d += 16) {
        TileRef dst = l0b;
        dst.row0 = u32(d - kc);
        move(b, Path::L1ToL0B, 16 * Bp_ * e_, {}, std::min<int64_t>(16, kc + kq - d), kb,
             {l1_k + static_cast<uint64_t>((d / 16) * Bp_ * 16 * e_), 16, 0, 0, TileLayout::NdT, s_.dtype}, dst);
      }
    } else {
      move(b, Path::L1ToL0B, round_up(kq, 16) * round_up(kb, 16) * e_, {}, kq, kb, nz(l1_k, dq, s_.dtype, kc, 0), l0b);
    }
    b.set_flag(Pipe::Mte1, Pipe::M, a);
    b.set_flag(Pipe::Mte1, Pipe::M, kL0BEvent + bb);
    b.wait_flag(Pipe::Mte1, Pipe::M, a);
    b.wait_flag(Pipe::Mte1, Pipe::M, kL0BEvent + bb);
    if (kc == 0) b.wait_flag(Pipe::Fixpipe, Pipe::M, sb);
    sim::Operands mm;
    mm.src = l0a, mm.src2 = l0b, mm.dst = s_tile, mm.accumulate = kc > 0;
    b.mmad(u32(Mr), u32(kb), u32(kq), s_.dtype, mm);
    b.set_flag(Pipe::M, Pipe::Mte1, a);
    b.set_flag(Pipe::M, Pipe::Mte1, kL0BEvent + bb);
  }
  if (st.last) {
    b.set_flag(Pipe::Mte1, Pipe::Mte2, kQEvent + qb);  // Q no longer read
    ++items_;
  }
  // S out of L0C into slot t % 2: the AIC's GM workspace (2201) or each AIV's UB (3510).
  b.set_flag(Pipe::M, Pipe::Fixpipe, sb);
  b.wait_flag(Pipe::M, Pipe::Fixpipe, sb);
  if (t >= fa::Dims::kSlots)
    for (int k = 0; k < d_.aivs; ++k) b.cross_wait(Pipe::Fixpipe, kSFree + k);
  const int slot = static_cast<int>(t % fa::Dims::kSlots);
  const int64_t strips = ceil_div(kb, 16);
  if (!d_.via_ub) {
    const uint64_t dst = ws(c) + gm_.ws_s + static_cast<uint64_t>(slot * Mp_ * Bp_ * 4);
    move(b, Path::L0CToGm, Mr * strips * 64, nz_region(dst, Mp_, 0, Mr, strips, 4), Mr, kb, s_tile, nz(dst, Mp_, DType::Fp32));
  } else {
    for (int k = 0; k < d_.aivs; ++k) {
      const Rows r = rows_of(g, k);
      if (r.n == 0) continue;
      TileRef src = s_tile;
      src.row0 = u32(r.r0);
      move(b, Path::L0CToUb, r.n * strips * 64, {}, r.n, kb, src, nz(d_.ub_s + slot * d_.s_slot, r.ldp, DType::Fp32), k);
    }
  }
  b.cross_set(Pipe::Fixpipe, 2, kSReady);
  b.set_flag(Pipe::Fixpipe, Pipe::M, sb);
}

void Lowering::c2(sim::CoreBuilder& b, int c, int64_t t) {
  const Step& st = steps_[static_cast<size_t>(t)];
  const fa::Group& g = group_of(st.item);
  const int64_t Mr = g.rows.count(), Mr16 = round_up(Mr, 16), kb = block_keys(g, st.j), strips = ceil_div(kb, 16);
  const int ps = static_cast<int>(t % fa::Dims::kSlots), sg = static_cast<int>(t % t_.stages);
  const uint64_t l1_p = d_.l1_p + ps * d_.p_bytes, l1_v = d_.l1_stage + sg * d_.stage_bytes + (s_.kv_shared ? 0 : d_.v_off);
  // P of the block in L1: copied from the AIC's workspace (2201) or written there by the AIVs (3510).
  if (!d_.via_ub) {
    for (int k = 0; k < d_.aivs; ++k) b.cross_wait(Pipe::Mte2, p_ready(d_.aivs, k));
    b.wait_flag(Pipe::Mte1, Pipe::Mte2, kPEvent + ps);
    const uint64_t src = ws(c) + gm_.ws_p + static_cast<uint64_t>(ps * Mp_ * Bp_ * e_);
    move(b, Path::GmToL1, Mr * strips * 16 * e_, nz_region(src, Mp_, 0, Mr, strips, e_), Mr, kb, nz(src, Mp_, s_.dtype),
         nz(l1_p, Mp_, s_.dtype));
    b.cross_set(Pipe::Mte2, 2, kPFree);
    b.set_flag(Pipe::Mte2, Pipe::Mte1, kPEvent + ps);
    b.wait_flag(Pipe::Mte2, Pipe::Mte1, kPEvent + ps);
  } else {
    for (int k = 0; k < d_.aivs; ++k) b.cross_wait(Pipe::Mte1, p_ready(d_.aivs, k));
  }
  // O_blk = P V in chunks of W columns; P stays in its L0A half when one K chunk covers the keys.
  const uint64_t half_a = hw_.aic.l0a_bytes / 2, half_b = hw_.aic.l0b_bytes / 2;
  const bool p_once = kb <= d_.kc0;
  TileRef l0a = nz(0, Mr16, s_.dtype);
  int a = 0;
  for (int64_t n0 = 0; n0 < s_.d_v; n0 += d_.W, ++u_) {
    const int ob = static_cast<int>(u_ % d_.o_bufs);
    const TileRef o_tile = nz(d_.s_bufs * d_.s_bytes + ob * d_.o_bytes, Mp_, DType::Fp32);
    for (int64_t kc = 0; kc < kb; kc += d_.kc0) {
      const int64_t kq = std::min(d_.kc0, kb - kc);
      if (!p_once || n0 == 0) {
        a = static_cast<int>(pa_++ % 2);
        l0a.offset = a * half_a;
        b.wait_flag(Pipe::M, Pipe::Mte1, a);
        move(b, Path::L1ToL0A, Mr16 * round_up(kq, 16) * e_, {}, Mr, kq, nz(l1_p, Mp_, s_.dtype, 0, kc), l0a);
        b.set_flag(Pipe::Mte1, Pipe::M, a);
        b.wait_flag(Pipe::Mte1, Pipe::M, a);
      }
      const int bb = static_cast<int>(pb_++ % 2);
      const TileRef l0b = nz(bb * half_b, round_up(kq, 16), s_.dtype);
      b.wait_flag(Pipe::M, Pipe::Mte1, kL0BEvent + bb);
      move(b, Path::L1ToL0B, round_up(kq, 16) * d_.W * e_, {}, kq, d_.W, nz(l1_v, Bp_, s_.dtype, kc, n0), l0b);
      b.set_flag(Pipe::Mte1, Pipe::M, kL0BEvent + bb);
      b.wait_flag(Pipe::Mte1, Pipe::M, kL0BEvent + bb);
      if (kc == 0) b.wait_flag(Pipe::Fixpipe, Pipe::M, kOEvent + ob);
      sim::Operands mm;
      mm.src = l0a, mm.src2 = l0b, mm.dst = o_tile, mm.accumulate = kc > 0;
      b.mmad(u32(Mr), u32(d_.W), u32(kq), s_.dtype, mm);
      b.set_flag(Pipe::M, Pipe::Mte1, kL0BEvent + bb);
      if (!p_once) b.set_flag(Pipe::M, Pipe::Mte1, a);
    }
    if (p_once && n0 + d_.W >= s_.d_v) b.set_flag(Pipe::M, Pipe::Mte1, a);
    // The chunk out of L0C into O slot u % 2.
    b.set_flag(Pipe::M, Pipe::Fixpipe, kOEvent + ob);
    b.wait_flag(Pipe::M, Pipe::Fixpipe, kOEvent + ob);
    if (u_ >= fa::Dims::kSlots)
      for (int k = 0; k < d_.aivs; ++k) b.cross_wait(Pipe::Fixpipe, o_free(d_.aivs, k));
    const int slot = static_cast<int>(u_ % fa::Dims::kSlots);
    if (!d_.via_ub) {
      const uint64_t dst = ws(c) + gm_.ws_o + static_cast<uint64_t>(slot * Mp_ * d_.W * 4);
      move(b, Path::L0CToGm, Mr * d_.W * 4, nz_region(dst, Mp_, 0, Mr, d_.W / 16, 4), Mr, d_.W, o_tile, nz(dst, Mp_, DType::Fp32));
    } else {
      for (int k = 0; k < d_.aivs; ++k) {
        const Rows r = rows_of(g, k);
        if (r.n == 0) continue;
        TileRef src = o_tile;
        src.row0 = u32(r.r0);
        move(b, Path::L0CToUb, r.n * d_.W * 4, {}, r.n, d_.W, src, nz(d_.ub_oin + slot * d_.oin_slot, r.ldp, DType::Fp32), k);
      }
    }
    b.cross_set(Pipe::Fixpipe, 2, kOReady);
    b.set_flag(Pipe::Fixpipe, Pipe::M, kOEvent + ob);
  }
  // The stage (K, V) and the P slot are free once MTE1 has read them.
  b.set_flag(Pipe::Mte1, Pipe::Mte2, sg);
  if (!d_.via_ub) b.set_flag(Pipe::Mte1, Pipe::Mte2, kPEvent + ps);
  else b.cross_set(Pipe::Mte1, 2, kPFree);
}

// ---------------------------------------------------------------- AIV

void Lowering::aiv(int c, int k, sim::CoreProgram& cp) {
  sim::CoreBuilder b(cp, fn_);
  Vec v(b);
  vu_ = stage_ = vbegun_ = vdone_ = 0;
  auto prime = [&](bool wait) {
    auto f = [&](Pipe from, Pipe to, int id) { wait ? b.wait_flag(from, to, id) : b.set_flag(from, to, id); };
    if (!d_.via_ub)
      for (int i = 0; i < fa::Dims::kSlots; ++i) f(Pipe::Mte3, Pipe::Mte2, i), f(Pipe::V, Pipe::Mte2, kOinEvent + i);
    for (int i = 0; i < 2; ++i) f(Pipe::V, Pipe::Mte2, kSinkEvent + i), f(Pipe::Mte3, Pipe::V, kStageEvent + i);
    f(Pipe::Mte3, Pipe::V, kLseEvent);
  };
  prime(false);
  v.dup(vec(3), round_up(d_.R, 16), 1.0);  // ones, the dividend of 1 / l
  const int64_t T = static_cast<int64_t>(steps_.size());
  for (int64_t t = 0; t < T + d_.lead; ++t) {
    if (t < T) v1(b, v, c, k, t);
    if (t >= d_.lead) v2(b, v, c, k, t - d_.lead);
  }
  prime(true);
  for (int64_t i = 0; i < std::min<int64_t>(T, fa::Dims::kSlots); ++i) b.cross_wait(Pipe::Mte3, kPFree);
  if (plan_.split_groups > 0) merge(b, v, c * d_.aivs + k);
}

void Lowering::v1(sim::CoreBuilder& b, Vec& v, int c, int k, int64_t t) {
  const Step& st = steps_[static_cast<size_t>(t)];
  const fa::Group& g = group_of(st.item);
  const int64_t kb = block_keys(g, st.j), k0 = st.j * d_.Bk, strips = ceil_div(kb, 16);
  const Rows r = rows_of(g, k);
  const int64_t Ra = r.n, ldp = r.ldp;
  const int i = static_cast<int>(t % fa::Dims::kSlots);
  const Pipe s_pipe = d_.via_ub ? Pipe::V : Pipe::Mte2;
  if (Ra == 0) {  // no rows of this block: answer the hand-offs so the counts stay balanced
    b.cross_wait(s_pipe, kSReady);
    b.cross_set(s_pipe, 2, kSFree + k);
    if (t >= fa::Dims::kSlots) b.cross_wait(Pipe::Mte3, kPFree);
    b.cross_set(Pipe::Mte3, 2, p_ready(d_.aivs, k));
    return;
  }
  const uint64_t sbuf = d_.ub_s + i * d_.s_slot, tmp = d_.ub_tmp, bc = d_.ub_bcast;
  const uint64_t m = stats(t), l = m + d_.vec, alpha = m + 2 * d_.vec, mp = stats(t + 1), lp = mp + d_.vec;
  const uint64_t mb = vec(0), lb = vec(1);
  if (st.first) {
    if (hw_.scalar_group_cycles > 0) b.scalar(static_cast<uint32_t>(hw_.scalar_group_cycles));
    const int par = static_cast<int>(vbegun_++ % 2);
    if (s_.sink && g.splits() == 1) {  // this AIV's rows' sinks, for the item's epilogue
      b.wait_flag(Pipe::V, Pipe::Mte2, kSinkEvent + par);
      for (const fa::Segment& sg : fa::segments(g.rows, r.r0, r.r1)) {
        // Head-major: one head's sink for each of its rows (a zero-stride read); query-major: a run of heads.
        const uint64_t src = gm_.sinks + static_cast<uint64_t>((g.n2 * s_.group() + g.rows.h0 + sg.h) * 4);
        move(b, Path::GmToUb, sg.count * 4, region(src, 1, g.rows.head_major ? 4 : sg.count * 4, 4), sg.count, 1,
             nd(src, g.rows.head_major ? 0 : 1, DType::Fp32), nd(vec(par ? 7 : 4) + (sg.row - r.r0) * 4, 1, DType::Fp32));
      }
      b.set_flag(Pipe::Mte2, Pipe::V, kSinkEvent + par);
    }
  }
  if (!d_.via_ub) {
    b.cross_wait(Pipe::Mte2, kSReady);
    b.wait_flag(Pipe::Mte3, Pipe::Mte2, i);
    const uint64_t src = ws(c) + gm_.ws_s + static_cast<uint64_t>(i * Mp_ * Bp_ * 4);
    move(b, Path::GmToUb, Ra * strips * 64, nz_region(src, Mp_, r.r0, Ra, strips, 4), Ra, kb, nz(src, Mp_, DType::Fp32, r.r0),
         nz(sbuf, ldp, DType::Fp32));
    b.set_flag(Pipe::Mte2, Pipe::V, i);
    b.cross_set(Pipe::Mte2, 2, kSFree + k);
    b.wait_flag(Pipe::Mte2, Pipe::V, i);
  } else {
    b.cross_wait(Pipe::V, kSReady);
  }
  const int64_t E = strips * ldp * 16;
  v.ew(VecOp::Muls, sbuf, sbuf, E, 0, s_.softmax_scale());
  // Keys a row does not see (causal) and the tail strip's padding columns become -inf: whole
  // strips for runs of rows, then each row's partly visible strip.
  std::vector<int64_t> vis(static_cast<size_t>(Ra));
  bool masked = false;
  for (int64_t x = 0; x < Ra; ++x) {
    vis[static_cast<size_t>(x)] = fa::visible(s_, s_.kv_len - s_.q_len + g.rows.q0 + g.rows.query(r.r0 + x), k0, kb);
    masked |= vis[static_cast<size_t>(x)] < strips * 16;
  }
  if (masked) {
    for (int64_t s = 0; s < strips; ++s)
      for (int64_t x = 0; x < Ra;) {
        int64_t n = 0;
        while (x + n < Ra && vis[static_cast<size_t>(x + n)] <= s * 16) ++n;
        if (n) v.dup(sbuf + static_cast<uint64_t>((s * ldp + x) * 64), n * 16, -kInf);
        x += std::max<int64_t>(n, 1);
      }
    for (int64_t x = 0; x < Ra; ++x) {
      const int64_t n = vis[static_cast<size_t>(x)], s = n / 16;
      if (n % 16 && s < strips) v.dup(sbuf + static_cast<uint64_t>(((s * ldp + x) * 16 + n % 16) * 4), 16 - n % 16, -kInf);
    }
  }
  // Online softmax: m = max(m_prev, rowmax), alpha = exp(m_prev - m), P = exp(S - m), l = l alpha + rowsum.
  v.row_reduce(VecOp::Max, VecOp::ReduceMax, st.first ? m : mb, sbuf, tmp, strips, ldp, Ra);
  if (!st.first) {
    v.ew(VecOp::Max, m, mb, Ra, mp);
    v.ew(VecOp::Sub, alpha, mp, Ra, m);
    v.ew(VecOp::Exp, alpha, alpha, Ra);
  }
  const int64_t bstrips = std::min(d_.Wb / 16, strips);
  v.broadcast(bc, m, Ra, ldp, bstrips * 16);
  v.by_row(VecOp::Sub, sbuf, sbuf, bc, strips, bstrips, ldp);
  v.ew(VecOp::Exp, sbuf, sbuf, E);
  v.row_reduce(VecOp::Add, VecOp::ReduceSum, st.first ? l : lb, sbuf, tmp, strips, ldp, Ra);
  if (!st.first) {
    v.ew(VecOp::Mul, l, lp, Ra, alpha);
    v.ew(VecOp::Add, l, l, Ra, lb);
  }
  v.ew(VecOp::Cast, sbuf, sbuf, E, 0, 0, DType::Fp32, s_.dtype);  // P in the input type, in place
  b.set_flag(Pipe::V, Pipe::Mte3, i);
  // P to the cube: the AIC's GM workspace (2201) or its L1 (3510), rows r0.. of the slot.
  b.wait_flag(Pipe::V, Pipe::Mte3, i);
  if (t >= fa::Dims::kSlots) b.cross_wait(Pipe::Mte3, kPFree);
  if (!d_.via_ub) {
    const uint64_t dst = ws(c) + gm_.ws_p + static_cast<uint64_t>(i * Mp_ * Bp_ * e_);
    move(b, Path::UbToGm, Ra * strips * 16 * e_, nz_region(dst, Mp_, r.r0, Ra, strips, e_), Ra, kb, nz(sbuf, ldp, s_.dtype),
         nz(dst, Mp_, s_.dtype, r.r0));
    b.cross_set(Pipe::Mte3, 2, p_ready(d_.aivs, k));
    b.set_flag(Pipe::Mte3, Pipe::Mte2, i);  // the S buffer is free again
  } else {
    move(b, Path::UbToL1, Ra * strips * 16 * e_, {}, Ra, kb, nz(sbuf, ldp, s_.dtype), nz(d_.l1_p + i * d_.p_bytes, Mp_, s_.dtype, r.r0));
    b.cross_set(Pipe::Mte3, 2, p_ready(d_.aivs, k));
    b.cross_set(Pipe::Mte3, 2, kSFree + k);  // the UB S slot is free again
  }
}

void Lowering::v2(sim::CoreBuilder& b, Vec& v, int c, int k, int64_t t) {
  const Step& st = steps_[static_cast<size_t>(t)];
  const Rows r = rows_of(group_of(st.item), k);
  const int64_t W = d_.W, wstrips = W / 16, bstrips = std::min(d_.Wb / 16, wstrips), n = r.ldp * W;
  const Pipe o_pipe = d_.via_ub ? Pipe::V : Pipe::Mte2;
  for (int64_t cw = 0; cw < s_.d_v / W; ++cw, ++vu_) {
    const int oi = static_cast<int>(vu_ % fa::Dims::kSlots);
    if (r.n == 0) {
      b.cross_wait(o_pipe, kOReady);
      b.cross_set(o_pipe, 2, o_free(d_.aivs, k));
      continue;
    }
    const uint64_t oin = d_.ub_oin + oi * d_.oin_slot, acc = d_.ub_acc + static_cast<uint64_t>(cw * n * 4);
    if (!d_.via_ub) {
      b.cross_wait(Pipe::Mte2, kOReady);
      b.wait_flag(Pipe::V, Pipe::Mte2, kOinEvent + oi);
      const uint64_t src = ws(c) + gm_.ws_o + static_cast<uint64_t>(oi * Mp_ * W * 4);
      move(b, Path::GmToUb, r.n * W * 4, nz_region(src, Mp_, r.r0, r.n, wstrips, 4), r.n, W, nz(src, Mp_, DType::Fp32, r.r0),
           nz(oin, r.ldp, DType::Fp32));
      b.set_flag(Pipe::Mte2, Pipe::V, kOinEvent + oi);
      b.cross_set(Pipe::Mte2, 2, o_free(d_.aivs, k));
      b.wait_flag(Pipe::Mte2, Pipe::V, kOinEvent + oi);
    } else {
      b.cross_wait(Pipe::V, kOReady);
    }
    if (st.first) {  // O = O_blk
      move(b, Path::UbToUb, n * 4, {}, 1, n, flat(oin, DType::Fp32), flat(acc, DType::Fp32));
    } else {  // O = O alpha + O_blk
      if (cw == 0) v.broadcast(d_.ub_bcast, stats(t) + 2 * d_.vec, r.n, r.ldp, bstrips * 16);
      v.by_row(VecOp::Mul, acc, acc, d_.ub_bcast, wstrips, bstrips, r.ldp);
      v.ew(VecOp::Add, acc, acc, n, oin);
    }
    if (!d_.via_ub) b.set_flag(Pipe::V, Pipe::Mte2, kOinEvent + oi);
    else b.cross_set(Pipe::V, 2, o_free(d_.aivs, k));
  }
  if (st.last && r.n > 0) finalize(b, v, k, t);
}

void Lowering::finalize(sim::CoreBuilder& b, Vec& v, int k, int64_t t) {
  const Step& st = steps_[static_cast<size_t>(t)];
  const fa::Item& it = item(st.item);
  const fa::Group& g = group_of(st.item);
  const Rows r = rows_of(g, k);
  const int64_t W = d_.W, wstrips = W / 16, bstrips = std::min(d_.Wb / 16, wstrips), n = r.ldp * W;
  const int par = static_cast<int>(vdone_++ % 2);
  const uint64_t m = stats(t), l = m + d_.vec, vtmp = vec(2), ones = vec(3), sinkv = vec(par ? 7 : 4), inv = vec(5), lse = vec(6);
  const bool split = g.splits() > 1;
  // 1 / (l + exp(sink - m)), or 1 / l for a split's partial result.
  if (s_.sink && !split) {
    b.wait_flag(Pipe::Mte2, Pipe::V, kSinkEvent + par);
    v.ew(VecOp::Sub, vtmp, sinkv, r.n, m);
    b.set_flag(Pipe::V, Pipe::Mte2, kSinkEvent + par);
    v.ew(VecOp::Exp, vtmp, vtmp, r.n);
    v.ew(VecOp::Add, inv, l, r.n, vtmp);
    v.ew(VecOp::Div, inv, ones, r.n, inv);
  } else {
    v.ew(VecOp::Div, inv, ones, r.n, l);
  }
  v.broadcast(d_.ub_bcast, inv, r.n, r.ldp, bstrips * 16);
  const int64_t part_base = g.part * plan_.max_splits;
  for (int64_t cw = 0; cw < s_.d_v / W; ++cw, ++stage_) {
    const int si = static_cast<int>(stage_ % 2);
    const uint64_t acc = d_.ub_acc + static_cast<uint64_t>(cw * n * 4), stg = d_.ub_stage + si * d_.stage_slot;
    b.wait_flag(Pipe::Mte3, Pipe::V, kStageEvent + si);
    if (!split) {
      v.by_row(VecOp::Mul, acc, acc, d_.ub_bcast, wstrips, bstrips, r.ldp);
      v.ew(VecOp::Cast, stg, acc, n, 0, 0, DType::Fp32, s_.dtype);
    } else {
      v.by_row(VecOp::Mul, stg, acc, d_.ub_bcast, wstrips, bstrips, r.ldp);
    }
    b.set_flag(Pipe::V, Pipe::Mte3, kStageEvent + si);
    b.wait_flag(Pipe::V, Pipe::Mte3, kStageEvent + si);
    if (!split) {  // out rows, one copy per segment (NZ -> ND on the way out)
      rows_io(b, Path::UbToGm, g, r.r0, r.r1, gm_.out, s_.d_v, cw * W, W, s_.dtype, nz(stg, r.ldp, s_.dtype));
    } else {  // the split's part: columns split x d_v + cw W of the group's NZ part tile
      const uint64_t base = gm_.part_o + static_cast<uint64_t>(part_base * s_.d_v * Mp_ * 4);
      const int64_t col = it.split * s_.d_v + cw * W;
      move(b, Path::UbToGm, r.n * W * 4, nz_region(base + static_cast<uint64_t>((col / 16) * Mp_ * 64), Mp_, r.r0, r.n, wstrips, 4),
           r.n, W, nz(stg, r.ldp, DType::Fp32), nz(base, Mp_, DType::Fp32, r.r0, col));
    }
    b.set_flag(Pipe::Mte3, Pipe::V, kStageEvent + si);
  }
  // lse = m + ln l.
  b.wait_flag(Pipe::Mte3, Pipe::V, kLseEvent);
  v.ew(VecOp::Ln, vtmp, l, r.n);
  v.ew(VecOp::Add, lse, vtmp, r.n, m);
  if (!split && s_.lse_base2) v.ew(VecOp::Muls, lse, lse, r.n, 0, M_LOG2E);  // a split's partial stays natural
  b.set_flag(Pipe::V, Pipe::Mte3, kLseEvent);
  b.wait_flag(Pipe::V, Pipe::Mte3, kLseEvent);
  if (!split) {
    rows_io(b, Path::UbToGm, g, r.r0, r.r1, gm_.lse, 1, 0, 1, DType::Fp32, nd(lse, 1, DType::Fp32));
  } else {
    const uint64_t dst = gm_.part_lse + static_cast<uint64_t>(((part_base + it.split) * d_.M + r.r0) * 4);
    move(b, Path::UbToGm, r.n * 4, region(dst, 1, r.n * 4, r.n * 4), 1, r.n, flat(lse, DType::Fp32), flat(dst, DType::Fp32));
  }
  b.set_flag(Pipe::Mte3, Pipe::V, kLseEvent);
}

// ---------------------------------------------------------------- split merge

void Lowering::merge(sim::CoreBuilder& b, Vec& v, int aiv_index) {
  // Every AIV's parts are in GM once all of them have passed the barrier.
  b.cross_set(Pipe::Mte3, 0, merge_barrier(d_.aivs));
  b.cross_wait(Pipe::Mte2, merge_barrier(d_.aivs));
  const int aivs = cores_ * d_.aivs;
  const int64_t R = d_.merge_rows, rp = round_up(R, 16), S = plan_.max_splits, dstrips = s_.d_v / 16;
  const fa::MergeUb u = fa::merge_ub(s_, d_, S, R);
  const uint64_t vs = u.vec, mx = u.vecs, L = mx + vs, inv = mx + 2 * vs, tmp = mx + 3 * vs, ones = mx + 4 * vs,
                 sinkv = mx + 5 * vs, lse = mx + 6 * vs;
  // Flags: the part lse (MTE2 <-> V, id 0), the two part buffers (MTE2 <-> V, ids 1-2), the
  // result (V <-> MTE3, id 0).
  b.set_flag(Pipe::V, Pipe::Mte2, 0);
  for (int i = 1; i <= 2; ++i) b.set_flag(Pipe::V, Pipe::Mte2, i);
  b.set_flag(Pipe::Mte3, Pipe::V, 0);
  v.dup(ones, rp, 1.0);
  int64_t task = 0, part = 0;
  for (const fa::Group& g : plan_.groups) {
    if (g.part < 0) continue;
    const int64_t sp = g.splits();
    const uint64_t base = gm_.part_o + static_cast<uint64_t>(g.part * S * s_.d_v * Mp_ * 4);
    for (int64_t r0 = 0; r0 < g.rows.count(); r0 += R, ++task) {
      if (task % aivs != aiv_index) continue;
      const int64_t Rr = std::min(R, g.rows.count() - r0), ldp = round_up(Rr, 16), n = ldp * s_.d_v;
      // The splits' lse (and the rows' sinks) first: the weights need all of them.
      b.wait_flag(Pipe::V, Pipe::Mte2, 0);
      const uint64_t lsrc = gm_.part_lse + static_cast<uint64_t>((g.part * S * d_.M + r0) * 4);
      move(b, Path::GmToUb, sp * Rr * 4, region(lsrc, sp, Rr * 4, d_.M * 4), sp, Rr, nd(lsrc, d_.M, DType::Fp32), nd(u.plse, Rr, DType::Fp32));
      if (s_.sink)
        for (const fa::Segment& sg : fa::segments(g.rows, r0, r0 + Rr)) {
          const uint64_t src = gm_.sinks + static_cast<uint64_t>((g.n2 * s_.group() + g.rows.h0 + sg.h) * 4);
          move(b, Path::GmToUb, sg.count * 4, region(src, 1, g.rows.head_major ? 4 : sg.count * 4, 4), sg.count, 1,
               nd(src, g.rows.head_major ? 0 : 1, DType::Fp32), nd(sinkv + (sg.row - r0) * 4, 1, DType::Fp32));
        }
      b.set_flag(Pipe::Mte2, Pipe::V, 0);
      b.wait_flag(Pipe::Mte2, Pipe::V, 0);
      // M = max lse_s, w_s = exp(lse_s - M), L = sum w_s, coef_s = w_s / (L + exp(sink - M)).
      const uint64_t w = u.w;
      v.ew(VecOp::Max, mx, u.plse, Rr, u.plse + Rr * 4);
      for (int64_t s = 2; s < sp; ++s) v.ew(VecOp::Max, mx, mx, Rr, u.plse + s * Rr * 4);
      for (int64_t s = 0; s < sp; ++s) v.ew(VecOp::Sub, w + s * Rr * 4, u.plse + s * Rr * 4, Rr, mx);
      v.ew(VecOp::Exp, w, w, sp * Rr);
      v.ew(VecOp::Add, L, w, Rr, w + Rr * 4);
      for (int64_t s = 2; s < sp; ++s) v.ew(VecOp::Add, L, L, Rr, w + s * Rr * 4);
      if (s_.sink) {
        v.ew(VecOp::Sub, tmp, sinkv, Rr, mx);
        v.ew(VecOp::Exp, tmp, tmp, Rr);
        v.ew(VecOp::Add, inv, L, Rr, tmp);
        v.ew(VecOp::Div, inv, ones, Rr, inv);
      } else {
        v.ew(VecOp::Div, inv, ones, Rr, L);
      }
      b.set_flag(Pipe::V, Pipe::Mte2, 0);  // the part lse and the sinks are read
      for (int64_t s = 0; s < sp; ++s) v.ew(VecOp::Mul, w + s * Rr * 4, w + s * Rr * 4, Rr, inv);
      // out = sum_s coef_s O_s, the parts streamed through two buffers, rows scaled through the
      // broadcast tile; then cast in place.
      const int64_t bstrips = std::min(d_.Wb / 16, dstrips);
      b.wait_flag(Pipe::Mte3, Pipe::V, 0);  // the accumulator's last result is out
      for (int64_t s = 0; s < sp; ++s, ++part) {
        const int pb = static_cast<int>(part % 2);
        const uint64_t ob = u.parts + pb * u.part_bytes;
        b.wait_flag(Pipe::V, Pipe::Mte2, 1 + pb);
        move(b, Path::GmToUb, Rr * s_.d_v * 4, nz_region(base + static_cast<uint64_t>(s * dstrips * Mp_ * 64), Mp_, r0, Rr, dstrips, 4), Rr,
             s_.d_v, nz(base, Mp_, DType::Fp32, r0, s * s_.d_v), nz(ob, ldp, DType::Fp32));
        b.set_flag(Pipe::Mte2, Pipe::V, 1 + pb);
        b.wait_flag(Pipe::Mte2, Pipe::V, 1 + pb);
        v.broadcast(u.bcast, w + s * Rr * 4, Rr, ldp, bstrips * 16);
        v.by_row(VecOp::Mul, s == 0 ? u.acc : ob, ob, u.bcast, dstrips, bstrips, ldp);
        if (s > 0) v.ew(VecOp::Add, u.acc, u.acc, n, ob);
        b.set_flag(Pipe::V, Pipe::Mte2, 1 + pb);
      }
      v.ew(VecOp::Cast, u.acc, u.acc, n, 0, 0, DType::Fp32, s_.dtype);
      v.ew(VecOp::Ln, tmp, L, Rr);
      v.ew(VecOp::Add, lse, tmp, Rr, mx);
      if (s_.lse_base2) v.ew(VecOp::Muls, lse, lse, Rr, 0, M_LOG2E);
      b.set_flag(Pipe::V, Pipe::Mte3, 0);
      b.wait_flag(Pipe::V, Pipe::Mte3, 0);
      rows_io(b, Path::UbToGm, g, r0, r0 + Rr, gm_.out, s_.d_v, 0, s_.d_v, s_.dtype, nz(u.acc, ldp, s_.dtype));
      rows_io(b, Path::UbToGm, g, r0, r0 + Rr, gm_.lse, 1, 0, 1, DType::Fp32, nd(lse, 1, DType::Fp32));
      b.set_flag(Pipe::Mte3, Pipe::V, 0);
    }
  }
  b.wait_flag(Pipe::V, Pipe::Mte2, 0);
  for (int i = 1; i <= 2; ++i) b.wait_flag(Pipe::V, Pipe::Mte2, i);
  b.wait_flag(Pipe::Mte3, Pipe::V, 0);
}

}  // namespace

sim::Program FlashAttentionKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  return Lowering(s_, t_, hw, functional, name()).run();
}

}  // namespace npusim::kernels
