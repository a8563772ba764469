// The compressor's AIC and AIV programs (prefill and decode), from the plan of compressor_impl.hpp.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <tuple>

#include "common/numerics.hpp"
#include "kernels/compressor_impl.hpp"
#include "kernels/tensor_io.hpp"

namespace npusim::kernels::compressor_impl {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;

struct Out3 { uint64_t m, z, n; };

// ---- AIV instruction helpers ----

class Aiv {
 public:
  Aiv(sim::CoreBuilder& b, const CompressorShape& s, const Plan& p, const Ub& u, const Gm& g, int buffers, bool fp8_cast)
      : b(b), s(s), p(p), u(u), g(g), nbuf(buffers), fp8_cast(fp8_cast) {}

  // dst[i] = op(src[i], src2[i] or the scalar) over n elements, as many instructions as it takes.
  void vec(VecOp op, uint64_t dst, uint64_t src, uint64_t src2, int64_t n, double scalar = 0, DType dt = DType::Fp32,
           DType dt_out = DType::Fp32, bool from_src2 = false) {
    for (int64_t i = 0; i < n; i += kPerInstr) {
      sim::Operands o;
      o.src = tr(src + i * sim::dtype_bytes(dt), dt);
      o.src2 = tr(from_src2 ? src2 : src2 + i * sim::dtype_bytes(dt), dt);
      o.dst = tr(dst + i * sim::dtype_bytes(dt_out), dt_out);
      o.scalar = scalar, o.scalar_from_src2 = from_src2;
      b.vec(op, dt, uint32_t(std::min(kPerInstr, n - i)), o);
    }
  }
  void cast(uint64_t dst, DType to, uint64_t src, DType from, int64_t n) { vec(VecOp::Cast, dst, src, src, n, 0, from, to); }
  void reduce(VecOp op, uint64_t dst, uint64_t src, int64_t n, int64_t seg) {
    const int64_t per = kPerInstr / seg * seg;
    for (int64_t i = 0; i < n; i += per) {
      sim::Operands o;
      o.src = tr(src + 4 * i), o.dst = tr(dst + 4 * (i / seg)), o.cols = uint32_t(seg);
      b.vec(op, DType::Fp32, uint32_t(std::min(per, n - i)), o);
    }
  }
  // dst[i] = src[idx[i]], the int32 offsets relative to src, over a region of `region` elements.
  void gather(uint64_t dst, uint64_t src, uint64_t idx, int64_t n, int64_t region) {
    for (int64_t i = 0; i < n; i += kPerInstr) {
      sim::Operands o;
      o.src = tr(src), o.src2 = tr(idx + 4 * i, DType::Int32), o.dst = tr(dst + 4 * i), o.cols = uint32_t(region);
      b.vec(VecOp::Gather, DType::Fp32, uint32_t(std::min(kPerInstr, n - i)), o);
    }
  }
  // rows x cols elements between UB and GM or within UB, row strides in elements.
  void copy(Path path, uint64_t src, int64_t src_ld, uint64_t dst, int64_t dst_ld, int64_t rows, int64_t cols,
            DType dt = DType::Fp32) {
    if (rows <= 0 || cols <= 0) return;
    const int64_t e = sim::dtype_bytes(dt);
    sim::Operands o;
    o.rows = uint32_t(rows), o.cols = uint32_t(cols);
    o.src = {src, uint32_t(src_ld), 0, 0, TileLayout::Nd, dt};
    o.dst = {dst, uint32_t(dst_ld), 0, 0, TileLayout::Nd, dt};
    sim::GmRegion gm{};
    if (sim::path_reads_gm(path)) gm = {src, uint32_t(rows), uint32_t(cols * e), uint64_t(src_ld * e)};
    if (sim::path_writes_gm(path)) gm = {dst, uint32_t(rows), uint32_t(cols * e), uint64_t(dst_ld * e)};
    b.copy(path, uint32_t(rows * cols * e), gm, o);
  }
  void ub_copy(uint64_t src, uint64_t dst, int64_t n) { copy(Path::UbToUb, src, n, dst, n, 1, n); }

  // Reduces L slabs of n elements (src) to one (dst) pairwise: op(first half, second half), an odd
  // slab folded in separately; `tmp` holds ceil(L / 2) slabs.
  void tree(VecOp op, uint64_t src, int64_t L, int64_t n, uint64_t tmp, uint64_t dst) {
    if (L == 1) return ub_copy(src, dst, n);
    uint64_t cur = src;
    for (int64_t len = L; len > 1;) {
      const int64_t h = len / 2;
      const bool odd = len % 2, last = h == 1;
      const uint64_t out = last && !odd ? dst : tmp;
      vec(op, out, cur, cur + 4 * (len - h) * n, h * n);
      if (odd) vec(op, last ? dst : tmp, tmp, cur + 4 * h * n, n);
      cur = tmp, len = h;
    }
  }
  // The partial (M, Z, N) of L slabs of n channels: kv at K, scores at S; E is overwritten.
  void partial(uint64_t K, uint64_t S, uint64_t E, uint64_t T, int64_t L, int64_t n, Out3 o) {
    tree(VecOp::Max, S, L, n, T, o.m);
    for (int64_t j = 0; j < L; ++j) vec(VecOp::Sub, E + 4 * j * n, S + 4 * j * n, o.m, n);
    vec(VecOp::Exp, E, E, E, L * n);
    tree(VecOp::Add, E, L, n, T, o.z);
    vec(VecOp::Mul, E, E, K, L * n);
    tree(VecOp::Add, E, L, n, T, o.n);
  }
  // d = a (+) q: M = max, Z and N rescaled by exp(M_a - M) and exp(M_q - M); d may alias a or q.
  void merge(Out3 a, Out3 q, Out3 dst, int64_t n, uint64_t t0, uint64_t t1, uint64_t t2, uint64_t t3) {
    vec(VecOp::Max, t0, a.m, q.m, n);
    vec(VecOp::Sub, t1, a.m, t0, n);
    vec(VecOp::Exp, t1, t1, t1, n);
    vec(VecOp::Sub, t2, q.m, t0, n);
    vec(VecOp::Exp, t2, t2, t2, n);
    for (auto [az, qz, dz] : {std::tuple{a.z, q.z, dst.z}, {a.n, q.n, dst.n}}) {
      vec(VecOp::Mul, t3, qz, t2, n);
      vec(VecOp::Mul, dz, az, t1, n);
      vec(VecOp::Add, dz, dz, t3, n);
    }
    ub_copy(t0, dst.m, n);
  }
  // A fragment in row chunks: chunk 0 of several starts `acc`, later ones merge into it through the
  // set's TP and the last leaves the result in `fin` (a lone chunk goes straight to `fin`).
  void chunk_partial(uint64_t base, int64_t L, int64_t n, int ci, int nch, Out3 acc, Out3 fin) {
    const Out3 tp = tp_of(base, n);
    const Out3 o = nch == 1 ? fin : ci == 0 ? acc : tp;
    partial(base + u.K, base + u.S, base + u.E, base + u.T, L, n, o);
    if (nch > 1 && ci > 0) {
      const uint64_t T = base + u.T;
      merge(acc, tp, ci == nch - 1 ? fin : acc, n, T, T + 4 * n, T + 8 * n, T + 12 * n);
    }
  }
  Out3 tp_of(uint64_t base, int64_t n) const { return {base + u.TP, base + u.TP + 4 * n, base + u.TP + 8 * n}; }

  // 2^ceil(log2 x) for x > 0 in place: k = round(log2 x) from ln, 2^k from exp snapped to bf16
  // (exact: the error is far below a bf16 ulp), doubled where x / 2^k > 1 (0 / 1 by a clamped
  // 2^30 x margin, exact because a 1-ulp margin already saturates).
  void pow2_ceil(uint64_t x, uint64_t t1, uint64_t t2, int64_t n) {
    vec(VecOp::Ln, t1, x, x, n);
    vec(VecOp::Muls, t1, t1, t1, n, 1 / kLn2);
    exp2_int(t1, n);
    vec(VecOp::Div, t2, x, t1, n);
    vec(VecOp::Adds, t2, t2, t2, n, -1);
    clamp01(t2, n, kBig, 0);
    vec(VecOp::Adds, t2, t2, t2, n, 1);
    vec(VecOp::Mul, x, t1, t2, n);
  }
  // y <- 2^round(y) exactly (y holds log2 of something).
  void exp2_int(uint64_t y, int64_t n) {
    cast(y, DType::Int32, y, DType::Fp32, n);
    cast(y, DType::Fp32, y, DType::Int32, n);
    vec(VecOp::Muls, y, y, y, n, kLn2);
    vec(VecOp::Exp, y, y, y, n);
    cast(y, DType::Bf16, y, DType::Fp32, n);
    cast(y, DType::Fp32, y, DType::Bf16, n);
  }
  void clamp01(uint64_t x, int64_t n, double scale, double add) {
    vec(VecOp::Muls, x, x, x, n, scale);
    if (add != 0) vec(VecOp::Adds, x, x, x, n, add);
    vec(VecOp::Mins, x, x, x, n, 1);
    vec(VecOp::Maxs, x, x, x, n, 0);
  }
  // x <- e4m3(x) for |x| <= 448: a cast where the hardware has fp8, else the grid step
  // 2^(max(floor(log2 |x|), -6) - 3) found as pow2_ceil finds 2^k, and x = step * rne(x / step).
  void round_e4m3(uint64_t x, uint64_t a, uint64_t bb, uint64_t cc, int64_t n) {
    if (fp8_cast) {
      cast(a, DType::Fp8, x, DType::Fp32, n);
      cast(x, DType::Fp32, a, DType::Fp8, n);
      return;
    }
    vec(VecOp::Muls, a, x, x, n, -1);
    vec(VecOp::Max, a, a, x, n);
    vec(VecOp::Maxs, a, a, a, n, std::ldexp(1.0, -6));
    vec(VecOp::Ln, cc, a, a, n);
    vec(VecOp::Muls, cc, cc, cc, n, 1 / kLn2);
    vec(VecOp::Adds, cc, cc, cc, n, -0.5);
    exp2_int(cc, n);                                   // 2^k, k = floor(log2 a) or one off
    vec(VecOp::Div, a, a, cc, n);                      // r = a / 2^k, exact
    vec(VecOp::Adds, bb, a, a, n, -1);
    clamp01(bb, n, -kBig, 0);                          // r < 1: k one too big
    vec(VecOp::Muls, bb, bb, bb, n, -0.5);
    vec(VecOp::Adds, bb, bb, bb, n, 1);
    vec(VecOp::Mul, cc, cc, bb, n);
    vec(VecOp::Adds, bb, a, a, n, -2);
    clamp01(bb, n, kBig, 1);                           // r >= 2: k one too small
    vec(VecOp::Adds, bb, bb, bb, n, 1);
    vec(VecOp::Mul, cc, cc, bb, n);
    vec(VecOp::Muls, cc, cc, cc, n, 0.125);            // the step
    vec(VecOp::Div, a, x, cc, n);
    cast(a, DType::Int32, a, DType::Fp32, n);
    cast(a, DType::Fp32, a, DType::Int32, n);
    vec(VecOp::Mul, x, a, cc, n);
  }

  // Per-core constants: ones, the norm weight on every row of a tile, the RoPE partner indices and
  // signs, the FP8 block indices and 448s. Index tables come from arange: floor(i / w) =
  // rne((i - (w - 1) / 2) / w), exact in fp32 for these sizes.
  void constants() {
    const int64_t E = p.Et, n = E * p.rd, w = s.cfg.rope.layout == ref::RopeLayout::Interleaved ? 1 : p.rd / 2;
    vec(VecOp::Dup, u.ones, u.ones, u.ones, std::max(E, p.d), 1.0);
    copy(Path::GmToUb, g.nw, p.d, u.wrep, p.d, 1, p.d);
    b.set_flag(Pipe::Mte2, Pipe::V, kConstEvent);
    b.wait_flag(Pipe::Mte2, Pipe::V, kConstEvent);
    for (int64_t r = 1; r < E; r *= 2) ub_copy(u.wrep, u.wrep + 4 * r * p.d, std::min(r, E - r) * p.d);
    const uint64_t t0 = u.sets, t1 = t0 + a32(4 * std::max(n, E * p.nq)), t2 = t1 + a32(4 * n);
    vec(VecOp::Arange, t0, t0, t0, n, 0);
    uint64_t q = t0;  // the pair's position along its partner axis: i, or floor(i / (dims / 2))
    if (w > 1) floor_div(t1, t0, w, n), q = t1;
    floor_div(t2, q, 2, n);
    vec(VecOp::Muls, t2, t2, t2, n, -2);
    vec(VecOp::Add, t2, t2, q, n);                  // parity: 0 on a pair's first dim, 1 on its second
    vec(VecOp::Muls, t1, t2, t2, n, -2.0 * w);
    vec(VecOp::Adds, t1, t1, t1, n, static_cast<double>(w));
    vec(VecOp::Add, t1, t1, t0, n);                 // partner = i + w - 2 w parity
    cast(u.swap, DType::Int32, t1, DType::Fp32, n);
    vec(VecOp::Muls, u.sgn, t2, t2, n, 2);
    vec(VecOp::Adds, u.sgn, u.sgn, u.sgn, n, -1);
    if (p.fp8) {
      const int64_t nq = E * p.nq;
      vec(VecOp::Arange, t0, t0, t0, nq, 0);
      floor_div(t0, t0, kQBlock, nq);
      cast(u.blk, DType::Int32, t0, DType::Fp32, nq);
      vec(VecOp::Dup, u.c448, u.c448, u.c448, nq / kQBlock, kFp8Max);
    }
  }
  void floor_div(uint64_t dst, uint64_t src, int64_t w, int64_t n) {
    vec(VecOp::Adds, dst, src, src, n, -(static_cast<double>(w) - 1) / 2);
    vec(VecOp::Muls, dst, dst, dst, n, 1.0 / static_cast<double>(w));
    cast(dst, DType::Int32, dst, DType::Fp32, n);
    cast(dst, DType::Fp32, dst, DType::Int32, n);
  }

  // E entries at X0 (fp32, pooled) -> OUT in the output type: RMSNorm, RoPE, FP8 fake quant.
  void finalize(uint64_t base, int64_t E) {
    const int64_t d = p.d, rd = p.rd;
    const uint64_t* X = u.X;
    const uint64_t x0 = base + X[0], x1 = base + X[1], x2 = base + X[2], x3 = base + X[3], x4 = base + X[4], x5 = base + X[5];
    vec(VecOp::Mul, x1, x0, x0, E * d);
    reduce(VecOp::ReduceSum, x2, x1, E * d, d);
    vec(VecOp::Muls, x2, x2, x2, E, 1.0 / static_cast<double>(d));
    vec(VecOp::Adds, x2, x2, x2, E, s.cfg.eps);
    vec(VecOp::Sqrt, x2, x2, x2, E);
    vec(VecOp::Div, x2, u.ones, x2, E);
    for (int64_t e = 0; e < E; ++e) {
      b.scalar(1);  // the row's 1 / rms into a scalar register
      vec(VecOp::Muls, x0 + 4 * e * d, x0 + 4 * e * d, x2 + 4 * e, d, 0, DType::Fp32, DType::Fp32, true);
    }
    vec(VecOp::Mul, x0, x0, u.wrep, E * d);
    // RoPE on the packed rope dims: y = x cos + (sign sin) x_partner.
    copy(Path::UbToUb, x0 + 4 * p.ro, d, x1, rd, E, rd);
    gather(x2, x1, u.swap, E * rd, E * rd);
    const uint64_t cs = base + u.COS, sn = base + u.SIN;
    vec(VecOp::Mul, sn, sn, u.sgn, E * rd);
    vec(VecOp::Mul, sn, sn, x2, E * rd);
    vec(VecOp::Mul, x1, x1, cs, E * rd);
    vec(VecOp::Add, x1, x1, sn, E * rd);
    copy(Path::UbToUb, x1, rd, x0 + 4 * p.ro, d, E, rd);
    if (p.fp8) {
      const int64_t n = E * p.nq, ns = n / kQBlock;
      copy(Path::UbToUb, x0 + 4 * p.qo, d, x1, p.nq, E, p.nq);
      vec(VecOp::Muls, x2, x1, x1, n, -1);
      vec(VecOp::Max, x2, x2, x1, n);
      reduce(VecOp::ReduceMax, x3, x2, n, kQBlock);
      vec(VecOp::Maxs, x3, x3, x3, ns, static_cast<double>(1e-4f));
      vec(VecOp::Div, x3, x3, u.c448, ns);
      pow2_ceil(x3, x4, x5, ns);
      gather(x2, x3, u.blk, n, ns);                 // each element's block scale
      vec(VecOp::Div, x1, x1, x2, n);
      vec(VecOp::Mins, x1, x1, x1, n, kFp8Max);
      vec(VecOp::Maxs, x1, x1, x1, n, -kFp8Max);
      round_e4m3(x1, x3, x4, x5, n);
      vec(VecOp::Mul, x1, x1, x2, n);
      copy(Path::UbToUb, x1, p.nq, x0 + 4 * p.qo, d, E, p.nq);
    }
    cast(base + u.OUT, s.dtype, x0, DType::Fp32, E * d);
  }

  // The buffer-set hand-offs (as swiglu.cpp): MTE2 fills, V computes, MTE3 drains.
  void prologue() {
    for (int q = 0; q < nbuf; ++q) b.set_flag(Pipe::V, Pipe::Mte2, q), b.set_flag(Pipe::Mte3, Pipe::V, q);
  }
  std::pair<int, uint64_t> begin() {
    const int q = static_cast<int>(tiles++ % nbuf);
    b.wait_flag(Pipe::V, Pipe::Mte2, q);
    return {q, u.sets + q * u.set_bytes};
  }
  void loaded(int q) {
    b.set_flag(Pipe::Mte2, Pipe::V, q);
    b.wait_flag(Pipe::Mte2, Pipe::V, q);
    b.wait_flag(Pipe::Mte3, Pipe::V, q);
  }
  void computed(int q) {
    b.set_flag(Pipe::V, Pipe::Mte2, q);
    b.set_flag(Pipe::V, Pipe::Mte3, q);
    b.wait_flag(Pipe::V, Pipe::Mte3, q);
  }
  void done(int q) { b.set_flag(Pipe::Mte3, Pipe::V, q); }
  void epilogue() {
    for (int q = 0; q < nbuf; ++q) b.wait_flag(Pipe::V, Pipe::Mte2, q), b.wait_flag(Pipe::Mte3, Pipe::V, q);
  }

  // GM addresses.
  uint64_t state(uint64_t base, int seq, int64_t row, int64_t col) const {
    return base + static_cast<uint64_t>(((seq * p.c * p.m + row) * p.C + col) * 4);
  }
  uint64_t wsp(int64_t e, int h, int f, int qq, int64_t ch) const {
    return g.wsp + static_cast<uint64_t>(((((e * p.c + h) * 3 + f) * 3 + qq) * p.d + ch) * 4);
  }
  void put_partial(Out3 o, int64_t rows, int64_t n, int64_t e, int h, int f, int64_t ch) {
    const uint64_t src[3] = {o.m, o.z, o.n};
    for (int qq = 0; qq < 3; ++qq) copy(Path::UbToGm, src[qq], n, wsp(e, h, f, qq, ch), p.c * 9 * p.d, rows, n);
  }

  sim::CoreBuilder& b;
  const CompressorShape& s;
  const Plan& p;
  const Ub& u;
  const Gm& g;
  int nbuf;
  bool fp8_cast;
  int64_t tiles = 0;

 private:
  static sim::TileRef tr(uint64_t off, DType dt = DType::Fp32) { return {off, 0, 0, 0, TileLayout::Flat, dt}; }
};

// A state unit (sequence, channel chunk, half): the held block's rows -> partials; an overlapped
// state's current rows move to its previous-block rows when their block completes. Partials go to
// the GM workspace (prefill) or, with `acc`, accumulate in UB (decode; kind 0 = previous block,
// 1 = current rows).
void state_unit(Aiv& a, const StateUnit& su, const std::function<Out3(int kind)>* acc) {
  const Plan& p = a.p;
  const Seq& sq = p.seqs[static_cast<size_t>(su.seq)];
  const int h = su.half;
  const int64_t nb = std::min(p.nb, p.d - su.ch0), col = h * p.d + su.ch0;
  struct Run { int64_t row0, rows, target; bool move; int kind; };
  std::vector<Run> runs;
  if (p.overlap && h == 0 && sq.k0 >= 1) runs.push_back({0, p.m, sq.k0, false, 0});
  if (sq.r0 > 0) runs.push_back({p.off(), sq.r0, p.target(h, sq.k0), p.overlap && sq.k1 == sq.k0 + 1, 1});
  for (const Run& r : runs) {
    const bool pooled = r.target < sq.k1;
    if (!pooled && !r.move) continue;
    const int nch = static_cast<int>(ceil_div(r.rows, p.rpt));
    for (int ci = 0; ci < nch; ++ci) {
      const int64_t j = ci * p.rpt, L = std::min(p.rpt, r.rows - j);
      auto [q, base] = a.begin();
      a.copy(Path::GmToUb, a.state(a.g.kvs, su.seq, r.row0 + j, col), p.C, base + a.u.K, nb, L, nb);
      a.copy(Path::GmToUb, a.state(a.g.scs, su.seq, r.row0 + j, col), p.C, base + a.u.S, nb, L, nb);
      a.loaded(q);
      if (pooled) {
        const Out3 fin = acc ? (*acc)(r.kind) : a.tp_of(base, nb);
        const Out3 ac = acc ? fin : Out3{a.u.acc, a.u.acc + 4 * nb, a.u.acc + 8 * nb};
        a.chunk_partial(base, L, nb, ci, nch, ac, fin);
      }
      a.computed(q);
      if (r.move) {
        a.copy(Path::UbToGm, base + a.u.K, nb, a.state(a.g.kvs, su.seq, j, col), p.C, L, nb);
        a.copy(Path::UbToGm, base + a.u.S, nb, a.state(a.g.scs, su.seq, j, col), p.C, L, nb);
      }
      if (pooled && !acc && ci == nch - 1) a.put_partial(a.tp_of(base, nb), 1, nb, p.entry(sq, r.target), h, 0, su.ch0);
      a.done(q);
    }
  }
}

int64_t items_of_core(int64_t items, int cores, int c) { return (items - c + cores - 1) / cores; }

// The AIV tiles of a share: up to blocks_per_tile whole blocks side by side, else one block's
// rows in chunks of rows_per_tile.
std::vector<Job> jobs_of(const Plan& p, const std::vector<Frag>& fr) {
  std::vector<Job> jobs;
  auto whole = [&](const Frag& f) { return p.m <= p.rpt && f.j0 == 0 && f.len == p.m; };
  for (size_t i = 0; i < fr.size();) {
    if (whole(fr[i])) {
      int64_t G = 1;
      while (i + G < fr.size() && G < p.bpt && whole(fr[i + G]) && fr[i + G].blk == fr[i].blk + G) ++G;
      jobs.push_back({i, G, 0, p.m, 0, 1});
      i += G;
      continue;
    }
    const int nch = static_cast<int>(ceil_div(fr[i].len, p.rpt));
    for (int ci = 0; ci < nch; ++ci)
      jobs.push_back({i, 1, fr[i].j0 + ci * p.rpt, std::min(p.rpt, fr[i].len - ci * p.rpt), ci, nch});
    ++i;
  }
  return jobs;
}

// Prefill phase A for AIV k of an item: its blocks of the group, tile by tile (see the file comment).
void share(Aiv& a, const CubeVectorSlots& cv, const Item& it, const Group& gr, int k, int core, int64_t n) {
  const Plan& p = a.p;
  const auto& fr = gr.frag[k];
  const int h = it.half;
  const int64_t nb = p.nb, col = h * p.d + it.ch0, slot_ld = cv.via_ub ? nb : 2 * nb;
  const std::vector<Job> jobs = jobs_of(p, fr);
  auto slot = [&](int kind, int64_t row) -> uint64_t {  // row of the item
    if (cv.via_ub) return a.u.slots + cv.ub_slot(n) + static_cast<uint64_t>((kind * p.h_max + row - (k ? gr.split : 0)) * nb * 4);
    return cv.ws_slot(core, n) + static_cast<uint64_t>((row * 2 * nb + kind * nb) * 4);
  };
  for (size_t ji = 0; ji < jobs.size(); ++ji) {
    const Job& jb = jobs[ji];
    const Frag& f = fr[jb.f];
    const Seq& sq = p.seqs[static_cast<size_t>(f.seq)];
    const int64_t G = jb.G, L = jb.L, ns = G * nb, row = f.xrow - gr.row0 + jb.ja - f.j0;
    const bool last = ji + 1 == jobs.size();
    auto [q, base] = a.begin();
    auto fill = [&](Path path) {  // kv and score rows; whole blocks go j-major: [j][block][channel]
      for (int kind = 0; kind < 2; ++kind) {
        const uint64_t dst = base + (kind ? a.u.S : a.u.K);
        if (G == 1) a.copy(path, slot(kind, row), slot_ld, dst, nb, L, nb);
        for (int64_t j = 0; G > 1 && j < p.m; ++j) a.copy(path, slot(kind, row + j), p.m * slot_ld, dst + 4 * j * ns, nb, G, nb);
      }
    };
    if (!cv.via_ub) fill(Path::GmToUb);
    if (G == 1) a.copy(Path::GmToUb, a.g.ape + static_cast<uint64_t>((jb.ja * p.C + col) * 4), p.C, base + a.u.A, nb, L, nb);
    for (int64_t gi = 0; G > 1 && gi < G; ++gi)
      a.copy(Path::GmToUb, a.g.ape + static_cast<uint64_t>(col * 4), p.C, base + a.u.A + 4 * gi * nb, ns, p.m, nb);
    if (last && !cv.via_ub) a.b.cross_set(Pipe::Mte2, 2, CubeVectorSlots::free_flag(k));  // the workspace slot is read
    a.loaded(q);
    if (cv.via_ub) {
      fill(Path::UbToUb);
      if (last) a.b.cross_set(Pipe::V, 2, CubeVectorSlots::free_flag(k));  // the UB slot is read
    }
    a.vec(VecOp::Add, base + a.u.S, base + a.u.S, base + a.u.A, L * ns);
    int64_t pooled = 0;  // blocks (a prefix) whose partial belongs to an entry of this call
    while (pooled < G && p.target(h, f.blk + pooled) < sq.k1) ++pooled;
    if (pooled && G > 1) a.partial(base + a.u.K, base + a.u.S, base + a.u.E, base + a.u.T, L, ns, a.tp_of(base, ns));
    if (pooled && G == 1)
      a.chunk_partial(base, L, nb, jb.ci, jb.nch, {a.u.acc, a.u.acc + 4 * nb, a.u.acc + 8 * nb}, a.tp_of(base, nb));
    a.computed(q);
    for (int64_t gi = 0; gi < G; ++gi) {  // state rows that change: the trailing block, the last complete one
      const int64_t blk = f.blk + gi;
      const int64_t srow = blk == sq.k1 ? p.off() + jb.ja : p.overlap && blk == sq.k1 - 1 ? jb.ja : -1;
      if (srow < 0) continue;
      a.copy(Path::UbToGm, base + a.u.K + 4 * gi * nb, ns, a.state(a.g.kvs, f.seq, srow, col), p.C, L, nb);
      a.copy(Path::UbToGm, base + a.u.S + 4 * gi * nb, ns, a.state(a.g.scs, f.seq, srow, col), p.C, L, nb);
    }
    if (pooled && jb.ci == jb.nch - 1)
      a.put_partial(a.tp_of(base, ns), pooled, nb, p.entry(sq, p.target(h, f.blk)), h, f.f, it.ch0);
    a.done(q);
  }
}

// Prefill phase C: `n` entries with the same partials: merge, N / Z, finalise, write.
void entry_tile(Aiv& a, const EntryTile& et) {
  const Plan& p = a.p;
  const int64_t E = et.n, d = p.d, Ed = E * d;
  auto [q, base] = a.begin();
  int np = 0;
  for (int bit = 0; bit < 3 * p.c; ++bit) {
    if (!(et.mask >> bit & 1)) continue;
    for (int qq = 0; qq < 3; ++qq)
      a.copy(Path::GmToUb, a.wsp(et.e0, bit / 3, bit % 3, qq, 0), p.c * 9 * d, base + a.u.P + 4 * (np * 3 + qq) * Ed, d, E, d);
    ++np;
  }
  a.copy(Path::GmToUb, a.g.cos + static_cast<uint64_t>(et.e0 * p.rd * 4), p.rd, base + a.u.COS, p.rd, E, p.rd);
  a.copy(Path::GmToUb, a.g.sin + static_cast<uint64_t>(et.e0 * p.rd * 4), p.rd, base + a.u.SIN, p.rd, E, p.rd);
  a.loaded(q);
  auto P = [&](int i) {
    const uint64_t o = base + a.u.P + 4 * i * 3 * Ed;
    return Out3{o, o + 4 * Ed, o + 8 * Ed};
  };
  const uint64_t* X = a.u.X;
  for (int i = 1; i < np; ++i) a.merge(P(0), P(i), P(0), Ed, base + X[1], base + X[2], base + X[3], base + X[4]);
  a.vec(VecOp::Div, base + X[0], P(0).n, P(0).z, Ed);
  a.finalize(base, E);
  a.computed(q);
  const int64_t eo = sim::dtype_bytes(a.s.dtype);
  a.copy(Path::UbToGm, base + a.u.OUT, d, a.g.out + static_cast<uint64_t>(et.e0 * d * eo), d, E, d, a.s.dtype);
  a.done(q);
}

// Decode, after the GEMM: sequence `b`'s new row (ape added) to the state; an emitting sequence
// (UB accumulators `acc`: previous block, current rows) merges it and writes its entry.
void new_row(Aiv& a, int b, const std::function<Out3(int)>* acc) {
  const Plan& p = a.p;
  const Seq& sq = p.seqs[static_cast<size_t>(b)];
  const int64_t C = p.C, d = p.d;
  auto [q, base] = a.begin();
  const uint64_t y = base + a.u.P, ap = y + 8 * C;
  const int64_t e = acc ? sq.e0 : -1;
  a.copy(Path::GmToUb, a.g.wsp + static_cast<uint64_t>(b * 2 * C * 4), 2 * C, y, 2 * C, 1, 2 * C);
  a.copy(Path::GmToUb, a.g.ape + static_cast<uint64_t>(sq.r0 * C * 4), C, ap, C, 1, C);
  if (acc) {
    a.copy(Path::GmToUb, a.g.cos + static_cast<uint64_t>(e * p.rd * 4), p.rd, base + a.u.COS, p.rd, 1, p.rd);
    a.copy(Path::GmToUb, a.g.sin + static_cast<uint64_t>(e * p.rd * 4), p.rd, base + a.u.SIN, p.rd, 1, p.rd);
  }
  a.loaded(q);
  a.vec(VecOp::Add, y + 4 * C, y + 4 * C, ap, C);
  if (acc) {
    const uint64_t* X = a.u.X;
    const Out3 cur = (*acc)(1), prev = (*acc)(0), row{y + 4 * (C + (p.c - 1) * d), a.u.ones, y + 4 * (p.c - 1) * d};
    a.merge(cur, row, cur, d, base + X[1], base + X[2], base + X[3], base + X[4]);
    if (p.overlap && sq.k0 >= 1) a.merge(cur, prev, cur, d, base + X[1], base + X[2], base + X[3], base + X[4]);
    a.vec(VecOp::Div, base + X[0], cur.n, cur.z, d);
    a.finalize(base, 1);
  }
  a.computed(q);
  const int64_t srow = !acc ? p.off() + sq.r0 : p.overlap ? p.m - 1 : -1;
  if (srow >= 0) {
    a.copy(Path::UbToGm, y, C, a.state(a.g.kvs, b, srow, 0), C, 1, C);
    a.copy(Path::UbToGm, y + 4 * C, C, a.state(a.g.scs, b, srow, 0), C, 1, C);
  }
  const int64_t eo = sim::dtype_bytes(a.s.dtype);
  if (acc) a.copy(Path::UbToGm, base + a.u.OUT, d, a.g.out + static_cast<uint64_t>(e * d * eo), d, 1, d, a.s.dtype);
  a.done(q);
}

bool has_fp8_cast(const sim::HardwareSpec& hw) {
  return hw.aiv.vec_rate[static_cast<int>(VecOp::Cast)][static_cast<int>(DType::Fp8)] > 0;
}

int decode_aivs(const CompressorShape& s, const CompressorTiling& t, const sim::HardwareSpec& hw) {
  // Every AIV of an AIC that has GEMM blocks waits for them; sequences spread over at least those.
  const int cores = t.gemm.cores;
  return static_cast<int>(std::clamp<int64_t>(std::max<int64_t>(s.cfg.batch(), 2 * cores), 1, hw.num_aiv));
}

sim::Program lower_prefill(const CompressorShape& s, const CompressorTiling& t, const Plan& p, const Gm& g,
                           const sim::HardwareSpec& hw, bool functional, const std::string& name) {
  CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t.slots);
  const int64_t nitems = static_cast<int64_t>(p.items.size()), nb = p.nb;
  const int cores = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t.gemm.cores, nitems)));
  cv.ws = g.ws, cv.ws_slot_bytes = static_cast<uint64_t>(t.gemm.m1 * 2 * nb * 4);
  cv.ub_slot_bytes = cv.via_ub ? static_cast<uint64_t>(2 * p.h_max * nb * 4) : 0;
  const Ub u = ub_layout(s, p, t, cv.via_ub);
  GemmShape gs{0, p.C, p.H, s.dtype, DType::Fp32, TensorLayout::RowMajor, TensorLayout::ColMajor};
  GemmBlocks blocks;
  blocks.name = name;
  blocks.a = g.x, blocks.a_rows = p.B * p.T, blocks.footprint = g.footprint, blocks.item_blocks = 2;
  for (const Item& it : p.items) {
    const Group& gr = p.groups[it.group];
    for (uint64_t w : {g.wkv, g.wg}) blocks.list.push_back({gr.row0, gr.rows, it.half * p.d + it.ch0, nb, w});
  }
  cv.install(blocks);
  blocks.write_c = [&](sim::CoreBuilder& b, int core, int64_t n, const GemmBlock& blk, const sim::TileRef& c_tile) {
    const int kind = blk.b == g.wg;
    if (!cv.via_ub) return cv.write_block(b, core, n, c_tile, blk.mb, blk.nb, DType::Fp32, kind * nb, 2 * nb, 0);
    const int64_t split = p.groups[p.items[static_cast<size_t>(core + n * cores)].group].split;
    for (int k = 0; k < 2; ++k) {  // each AIV's blocks of the group, into its UB slot
      const int64_t r0 = k ? split : 0, r1 = k ? blk.mb : split;
      if (r1 <= r0) continue;
      sim::Operands o;
      o.rows = uint32_t(r1 - r0), o.cols = uint32_t(blk.nb), o.src = c_tile, o.src.row0 = uint32_t(r0), o.sibling = uint8_t(k);
      o.dst = {u.slots + cv.ub_slot(n) + static_cast<uint64_t>(kind * p.h_max * nb * 4), uint32_t(nb), 0, 0, TileLayout::Nd, DType::Fp32};
      b.copy(Path::L0CToUb, uint32_t((r1 - r0) * blk.nb * 4), {}, o);
    }
  };
  sim::Program prog = lower_gemm_blocks(gs, t.gemm, blocks, hw, functional);
  cv.drain(prog, cores, nitems, functional);
  const int aivs = 2 * cores;
  const Pipe reader = cv.via_ub ? Pipe::V : Pipe::Mte2;
  for (int c = 0; c < cores; ++c)
    for (int k = 0; k < 2; ++k) {
      const int v = 2 * c + k;
      sim::CoreProgram cp{sim::CoreKind::Aiv, v, {}, {}};
      sim::CoreBuilder b(cp, functional);
      Aiv a(b, s, p, u, g, t.buffers, has_fp8_cast(hw));
      a.constants();
      a.prologue();
      for (size_t i = static_cast<size_t>(v); i < p.sunits.size(); i += aivs) state_unit(a, p.sunits[i], nullptr);
      if (!p.sunits.empty()) b.cross_set(Pipe::Mte3, 0, kSDone), b.cross_wait(Pipe::Mte2, kSDone);
      // Wave n: the entries whose partials were all out after wave n - 1 (their barrier passed:
      // the AICs are busy with wave n meanwhile), then this AIV's share of item c + n cores and the
      // barrier of wave n. The barriers wait on MTE3, where they are set (a set never overtakes the
      // previous wait), and hand over to MTE2 before the partials load.
      auto entries_of_wave = [&](int64_t w) {
        b.cross_wait(Pipe::Mte3, kWave + static_cast<int>(w % 2));
        b.set_flag(Pipe::Mte3, Pipe::Mte2, kWaveEvent);
        b.wait_flag(Pipe::Mte3, Pipe::Mte2, kWaveEvent);
        for (size_t i = 0, j = 0; i < p.etiles.size(); ++i)
          if (p.etiles[i].wave == w && j++ % static_cast<size_t>(aivs) == static_cast<size_t>(v)) entry_tile(a, p.etiles[i]);
      };
      for (int64_t n = 0; n < p.waves; ++n) {
        if (n > 0) entries_of_wave(n - 1);
        if (const int64_t idx = c + n * cores; idx < nitems) {
          const Item& it = p.items[static_cast<size_t>(idx)];
          const Group& gr = p.groups[it.group];
          b.cross_wait(reader, CubeVectorSlots::kReady);
          if (gr.frag[k].empty()) b.cross_set(reader, 2, CubeVectorSlots::free_flag(k));
          else share(a, cv, it, gr, k, c, n);
        }
        b.cross_set(Pipe::Mte3, 0, kWave + static_cast<int>(n % 2));
      }
      entries_of_wave(p.waves - 1);
      a.epilogue();
      prog.cores.push_back(std::move(cp));
    }
  return prog;
}

sim::Program lower_decode(const CompressorShape& s, const CompressorTiling& t, const Plan& p, const Gm& g,
                          const sim::HardwareSpec& hw, bool functional, const std::string& name) {
  const int64_t m1 = t.gemm.m1, n1 = t.gemm.n1, C = p.C;
  GemmShape gs{0, p.C, p.H, s.dtype, DType::Fp32, TensorLayout::RowMajor, TensorLayout::ColMajor};
  GemmBlocks blocks;
  blocks.name = name;
  blocks.a = g.x, blocks.a_rows = p.B, blocks.footprint = g.footprint;
  for (int64_t r = 0; r < p.B; r += m1)
    for (int kind = 0; kind < 2; ++kind)
      for (int64_t col = 0; col < C; col += n1)
        blocks.list.push_back({r, std::min(m1, p.B - r), col, std::min(n1, C - col), kind ? g.wg : g.wkv,
                               g.wsp + static_cast<uint64_t>((r * 2 * C + kind * C + col) * 4), 2 * C});
  const int64_t nitems = static_cast<int64_t>(blocks.list.size());
  const int cores = static_cast<int>(std::min<int64_t>(t.gemm.cores, nitems));
  blocks.after_item = [&](sim::CoreBuilder& b, int core, int64_t n) {  // the AIC's last block is out
    if (n == items_of_core(nitems, cores, core) - 1) b.cross_set(Pipe::Fixpipe, 2, CubeVectorSlots::kReady);
  };
  sim::Program prog = lower_gemm_blocks(gs, t.gemm, blocks, hw, functional);
  const Ub u = ub_layout(s, p, t, false);
  for (int v = 0; v < static_cast<int>(p.decode_seqs.size()); ++v) {
    sim::CoreProgram cp{sim::CoreKind::Aiv, v, {}, {}};
    sim::CoreBuilder b(cp, functional);
    Aiv a(b, s, p, u, g, t.buffers, has_fp8_cast(hw));
    a.constants();
    a.prologue();
    const auto& mine = p.decode_seqs[static_cast<size_t>(v)];
    auto acc_of = [&](int ls, int64_t ch0) {
      return std::function<Out3(int)>([&u, &p, ls, ch0](int kind) {
        const uint64_t o = u.acc + static_cast<uint64_t>(((ls * 2 + kind) * 3 * p.d + ch0) * 4);
        return Out3{o, o + 4 * p.d, o + 8 * p.d};
      });
    };
    int ls = 0;  // the state's rows of the emitting sequences, while the cube works
    for (int sb : mine) {
      const Seq& sq = p.seqs[static_cast<size_t>(sb)];
      if (sq.k1 == sq.k0) continue;
      for (int64_t ch = 0; ch < p.d; ch += p.nb)
        for (int h = 0; h < p.c; ++h) {
          const auto acc = acc_of(ls, ch);
          state_unit(a, {sb, ch, h}, &acc);
        }
      ++ls;
    }
    if (v / 2 < cores) b.cross_wait(Pipe::Mte2, CubeVectorSlots::kReady);
    b.cross_set(Pipe::Mte2, 0, kSDone);  // every AIC's rows are out once every AIV has seen its own
    b.cross_wait(Pipe::Mte2, kSDone);
    ls = 0;
    for (int sb : mine) {
      const Seq& sq = p.seqs[static_cast<size_t>(sb)];
      const bool emitting = sq.k1 > sq.k0;
      const auto acc = acc_of(emitting ? ls++ : 0, 0);
      new_row(a, sb, emitting ? &acc : nullptr);
    }
    a.epilogue();
    prog.cores.push_back(std::move(cp));
  }
  return prog;
}

}  // namespace npusim::kernels::compressor_impl
