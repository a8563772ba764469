#include "kernels/compressor.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <tuple>

#include "common/numerics.hpp"
#include "kernels/cube_vector.hpp"
#include "kernels/tensor_io.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;

namespace {

// All-AIV barriers (cross-core flags, mode 0): the state read; the waves of items (two ids, alternating).
constexpr int kSDone = CubeVectorSlots::kFlags, kWave = kSDone + 1;
constexpr int kConstEvent = 7, kWaveEvent = 6;  // intra-core events: the constants' GM load; a wave's barrier to MTE2
constexpr int kMaxBuffers = 6;
constexpr int64_t kPerInstr = 255 * 256 / 4;   // fp32 elements of one vector instruction (255 repeats of 256 B)
constexpr int64_t kQBlock = 64;                // FP8 quantisation block
constexpr double kFp8Max = 448, kLn2 = 0.69314718055994530942;
constexpr double kBig = 1073741824.0;          // 2^30: turns a 1-ulp comparison margin into a clamped 0 / 1

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

Plan make_plan(const CompressorShape& s, const CompressorTiling& t, int aivs) {
  const auto& cf = s.cfg;
  Plan p;
  p.decode = cf.tokens == 1, p.overlap = cf.overlap, p.fp8 = cf.fp8, p.c = cf.coff();
  p.H = cf.hidden, p.d = cf.head_dim, p.m = cf.ratio, p.C = p.c * p.d, p.T = cf.tokens, p.B = cf.batch();
  p.rd = cf.rope.dims, p.ro = cf.rope.offset(p.d), p.nq = p.d - p.rd, p.qo = cf.rope.at_tail ? 0 : p.rd;
  // Channels per tile: the item's (prefill); decode's state rows go the whole head wide.
  p.nb = t.gemm.n1 > 0 && !p.decode ? std::min(t.gemm.n1, p.d) : p.d, p.Et = p.decode ? 1 : std::max<int64_t>(1, t.entries_per_tile);
  p.rpt = std::clamp<int64_t>(t.rows_per_tile, 1, p.m), p.bpt = p.m <= t.rows_per_tile && !p.decode ? std::max<int64_t>(1, t.blocks_per_tile) : 1;
  for (int64_t b = 0, e = 0; b < p.B; ++b) {
    const int64_t p0 = cf.starts[static_cast<size_t>(b)];
    p.seqs.push_back({p0, p0 / p.m, (p0 + p.T) / p.m, p0 % p.m, e, b * p.T});
    e += p.seqs.back().k1 - p.seqs.back().k0;
  }
  p.n_out = cf.entries();
  p.mask.assign(static_cast<size_t>(p.n_out), 0);
  auto mark = [&](const Seq& sq, int h, int64_t blk, int f) {
    if (p.target(h, blk) < sq.k1) p.mask[static_cast<size_t>(p.entry(sq, p.target(h, blk)))] |= 1u << (3 * h + f);
  };
  for (int b = 0; b < p.B; ++b) {  // the state's partials (phase S): a sequence whose held block completes
    const Seq& sq = p.seqs[static_cast<size_t>(b)];
    if (sq.p0 == 0 || sq.k1 == sq.k0 || !((p.overlap && sq.k0 >= 1) || sq.r0 > 0)) continue;
    if (p.overlap && sq.k0 >= 1) mark(sq, 0, sq.k0 - 1, 0);
    for (int h = 0; h < p.c && sq.r0 > 0; ++h) mark(sq, h, sq.k0, 0);
    for (int64_t ch = 0; ch < p.d; ch += p.nb)
      for (int h = 0; h < p.c; ++h) p.sunits.push_back({b, ch, h});
  }
  if (p.decode) {  // emitting sequences first, dealt round-robin, then the others
    p.decode_seqs.resize(static_cast<size_t>(aivs));
    std::vector<int> order;
    for (int pass = 0; pass < 2; ++pass)
      for (int b = 0; b < p.B; ++b)
        if ((p.seqs[static_cast<size_t>(b)].k1 > p.seqs[static_cast<size_t>(b)].k0) == (pass == 0)) order.push_back(b);
    for (size_t i = 0; i < order.size(); ++i) p.decode_seqs[i % static_cast<size_t>(aivs)].push_back(order[i]);
    const int64_t emitting = p.n_out;
    p.emit_max = ceil_div(emitting, aivs);
    return p;
  }
  // Prefill: each sequence's rows cut at block boundaries, grouped into items of at most m1 rows.
  const int64_t m1 = std::max(t.gemm.m1, p.m);  // can_implement refuses an item smaller than a block
  std::vector<std::vector<Frag>> ug;
  for (int b = 0; b < p.B; ++b) {
    const Seq& sq = p.seqs[static_cast<size_t>(b)];
    int64_t rows = m1;
    for (int64_t pos = sq.p0; pos < sq.p0 + p.T;) {
      const int64_t len = std::min(p.m - pos % p.m, sq.p0 + p.T - pos);
      if (rows + len > m1) ug.emplace_back(), rows = 0;
      ug.back().push_back({b, pos / p.m, pos % p.m, len, sq.xrow + pos - sq.p0, 1});
      rows += len, pos += len;
    }
  }
  // Items deal round-robin to the AICs; when the last wave would leave AICs idle, its groups are
  // cut into smaller ones so that it spreads over all of them.
  const int64_t per_group = ceil_div(p.d, p.nb) * p.c, cores = std::max(1, t.gemm.cores);
  const int64_t last = static_cast<int64_t>(ug.size()) * per_group % cores, q = ceil_div(last, per_group);
  const int64_t parts = last ? std::max<int64_t>(1, cores / (q * per_group)) : 1;
  std::vector<std::vector<Frag>> units;
  for (size_t i = 0; i < ug.size(); ++i) {
    const int64_t n = static_cast<int64_t>(ug[i].size()), k = i + q >= ug.size() ? std::min(parts, n) : 1;
    for (int64_t j = 0; j < k; ++j) units.emplace_back(ug[i].begin() + n * j / k, ug[i].begin() + n * (j + 1) / k);
  }
  for (const auto& u : units) {
    Group g;
    g.row0 = u.front().xrow;
    for (const Frag& f : u) g.rows += f.len;
    // AIV 0 takes the first blocks, about half the rows; a group of one block is split by rows.
    if (u.size() >= 2) {
      size_t cut = 1;
      for (int64_t acc = u[0].len, best = std::abs(2 * acc - g.rows), k = 1; k + 1 < static_cast<int64_t>(u.size()); ++k) {
        acc += u[static_cast<size_t>(k)].len;
        if (std::abs(2 * acc - g.rows) < best) best = std::abs(2 * acc - g.rows), cut = static_cast<size_t>(k) + 1;
      }
      for (size_t k = 0; k < u.size(); ++k) {
        Frag f = u[k];
        f.f = k < cut ? 1 : 2;
        g.frag[k < cut ? 0 : 1].push_back(f);
        if (k < cut) g.split += f.len;
      }
    } else {
      const Frag& f = u[0];
      const int64_t half = f.len >= 2 ? (f.len + 1) / 2 : f.len;
      g.frag[0].push_back({f.seq, f.blk, f.j0, half, f.xrow, 1});
      if (half < f.len) g.frag[1].push_back({f.seq, f.blk, f.j0 + half, f.len - half, f.xrow + half, 2});
      g.split = half;
    }
    p.h_max = std::max({p.h_max, g.split, g.rows - g.split});
    for (int k = 0; k < 2; ++k)
      for (const Frag& f : g.frag[k])
        for (int h = 0; h < p.c; ++h) mark(p.seqs[static_cast<size_t>(f.seq)], h, f.blk, f.f);  // pooled when its block completes here
    p.groups.push_back(std::move(g));
  }
  for (size_t g = 0; g < p.groups.size(); ++g)
    for (int64_t ch = 0; ch < p.d; ch += p.nb)
      for (int h = 0; h < p.c; ++h) p.items.push_back({g, ch, h});
  // An entry's partials come from its block's group and the one before: all out after the wave
  // holding its group's last item. Entry tiles share partials and a wave.
  p.cores = std::clamp<int64_t>(t.gemm.cores, 1, std::max<int64_t>(1, static_cast<int64_t>(p.items.size())));
  p.waves = ceil_div(static_cast<int64_t>(p.items.size()), p.cores);
  std::vector<int64_t> wave(static_cast<size_t>(p.n_out), 0);
  for (size_t g = 0; g < p.groups.size(); ++g)
    for (const auto& fr : p.groups[g].frag)
      for (const Frag& f : fr)
        if (const Seq& sq = p.seqs[static_cast<size_t>(f.seq)]; f.blk < sq.k1)
          wave[static_cast<size_t>(p.entry(sq, f.blk))] = ((static_cast<int64_t>(g) + 1) * per_group - 1) / p.cores;
  for (int64_t e = 0; e < p.n_out;) {
    const uint32_t mk = p.mask[static_cast<size_t>(e)];
    const int64_t w = wave[static_cast<size_t>(e)];
    int64_t n = 1;
    while (e + n < p.n_out && n < p.Et && p.mask[static_cast<size_t>(e + n)] == mk && wave[static_cast<size_t>(e + n)] == w) ++n;
    p.etiles.push_back({e, n, mk, w});
    p.max_partials = std::max(p.max_partials, std::popcount(mk));
    e += n;
  }
  return p;
}

// ---- GM and UB placement ----

struct Gm {
  uint64_t x, wkv, wg, ape, nw, cos, sin, kvs, scs, out, wsp, ws, footprint;
};

Gm place(const CompressorShape& s, const Plan& p, const CompressorTiling& t) {
  const int64_t e = sim::dtype_bytes(s.dtype), rows = p.B * p.T, srows = p.B * p.c * p.m;
  GmAllocator gm;
  Gm g{};
  g.x = gm.alloc(rows * p.H * e);
  g.wkv = gm.alloc(p.H * p.C * e);
  g.wg = gm.alloc(p.H * p.C * e);
  g.ape = gm.alloc(p.m * p.C * 4);
  g.nw = gm.alloc(p.d * 4);
  g.cos = gm.alloc(p.n_out * p.rd * 4);
  g.sin = gm.alloc(p.n_out * p.rd * 4);
  g.kvs = gm.alloc(srows * p.C * 4);
  g.scs = gm.alloc(srows * p.C * 4);
  g.out = gm.alloc(p.n_out * p.d * e);
  // Workspace: the partials (prefill) or the GEMM's rows (decode), then the GM slots.
  g.wsp = gm.alloc(p.decode ? rows * 2 * p.C * 4 : p.n_out * p.c * 9 * p.d * 4);
  g.ws = gm.footprint();
  g.footprint = g.ws + (p.decode ? 0 : static_cast<uint64_t>(t.gemm.cores) * t.slots * t.gemm.m1 * 2 * p.nb * 4);
  return g;
}

uint64_t a32(uint64_t x) { return (x + 31) / 32 * 32; }

struct Ub {
  uint64_t ones, wrep, swap, sgn, blk, c448, acc, slots, sets, set_bytes, total, tile_bytes, fin_bytes;
  uint64_t K, S, A, E, T, TP;          // tile view of a set
  uint64_t P, X[6], COS, SIN, OUT;     // finalise view (decode: P holds the new row and its ape row)
};

Ub ub_layout(const CompressorShape& s, const Plan& p, const CompressorTiling& t, bool via_ub) {
  Ub u{};
  const uint64_t E = static_cast<uint64_t>(p.Et), d = p.d, nb = p.nb, G = static_cast<uint64_t>(p.bpt);
  uint64_t at = 0;
  auto take = [&](uint64_t bytes) { const uint64_t r = at; at += a32(bytes); return r; };
  u.ones = take(4 * std::max<uint64_t>(E, d));
  u.wrep = take(4 * E * d);
  u.swap = take(4 * E * p.rd);
  u.sgn = take(4 * E * p.rd);
  u.blk = take(p.fp8 ? 4 * E * p.nq : 0);
  u.c448 = take(p.fp8 ? 4 * E * p.nq / kQBlock : 0);
  u.acc = take(p.decode ? 4 * p.emit_max * 6 * d : 4 * 3 * nb);
  u.slots = take(via_ub && !p.decode ? static_cast<uint64_t>(t.slots) * 2 * p.h_max * nb * 4 : 0);
  u.sets = at;
  // Tile view: kv, score, ape, exp rows [L][G][nb]; tree / merge scratch; the tile's partial.
  const uint64_t el = static_cast<uint64_t>(std::max(p.m <= p.rpt ? p.m * p.bpt : 0, p.rpt)) * nb;
  const uint64_t tel = std::max(el / 2 + G * nb, 4 * nb);
  uint64_t v = 0;
  for (uint64_t* o : {&u.K, &u.S, &u.A, &u.E}) *o = v, v += a32(4 * el);
  u.T = v, v += a32(4 * tel);
  u.TP = v, v += a32(12 * G * nb);
  const uint64_t tile = v;
  // Finalise view: the partials (or the new row), six [E][d] scratch rows, cos / sin, the output.
  v = 0;
  u.P = v, v += a32(4 * (p.decode ? 3 * static_cast<uint64_t>(p.C) : static_cast<uint64_t>(p.max_partials) * 3 * E * d));
  for (auto& x : u.X) x = v, v += a32(4 * E * d);
  u.COS = v, v += a32(4 * E * p.rd);
  u.SIN = v, v += a32(4 * E * p.rd);
  u.OUT = v, v += a32(sim::dtype_bytes(s.dtype) * E * d);
  u.tile_bytes = tile, u.fin_bytes = v, u.set_bytes = std::max(tile, v);
  u.total = u.sets + static_cast<uint64_t>(t.buffers) * u.set_bytes;
  return u;
}

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
struct Job { size_t f; int64_t G, ja, L; int ci, nch; };
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

}  // namespace

std::string CompressorKernel::name() const {
  const auto& c = s_.cfg;
  return fmt::format("compressor_m{}_d{}_{}x{}x{}{}", c.ratio, c.head_dim, c.batch(), c.tokens, c.hidden, c.fp8 ? "_fp8" : "");
}

nlohmann::json CompressorKernel::tiling_json() const {
  nlohmann::json j = GemmKernel(GemmShape{}, t_.gemm, default_).tiling_json();
  j.erase("layout"), j.erase("swizzle");  // items go round-robin in group order; no swizzle
  j["rows_per_tile"] = t_.rows_per_tile, j["blocks_per_tile"] = t_.blocks_per_tile;
  j["entries_per_tile"] = t_.entries_per_tile, j["buffers"] = t_.buffers, j["slots"] = t_.slots;
  return j;
}

nlohmann::json CompressorKernel::details() const {
  const Plan p = make_plan(s_, t_, 1);
  return {{"mode", p.decode ? "decode" : "prefill"}, {"entries", p.n_out}, {"items", p.items.size()},
          {"state_units", p.sunits.size()}, {"entry_tiles", p.etiles.size()}};
}

std::vector<TensorInfo> CompressorKernel::tensors() const {
  const Plan p = make_plan(s_, t_, 1);
  const Gm g = place(s_, p, t_);
  const DType dt = s_.dtype, f32 = DType::Fp32;
  const int64_t srows = p.B * p.c * p.m;
  using L = TensorLayout;
  return {{"x", dt, p.B * p.T, p.H, L::RowMajor, g.x, false},
          {"w_kv", dt, p.H, p.C, L::ColMajor, g.wkv, false},
          {"w_gate", dt, p.H, p.C, L::ColMajor, g.wg, false},
          {"ape", f32, p.m, p.C, L::RowMajor, g.ape, false},
          {"norm_weight", f32, 1, p.d, L::RowMajor, g.nw, false},
          {"rope_cos", f32, p.n_out, p.rd, L::RowMajor, g.cos, false},
          {"rope_sin", f32, p.n_out, p.rd, L::RowMajor, g.sin, false},
          {"kv_state", f32, srows, p.C, L::RowMajor, g.kvs, false},
          {"score_state", f32, srows, p.C, L::RowMajor, g.scs, false},
          {"c", dt, p.n_out, p.d, L::RowMajor, g.out, true},
          {"kv_state_out", f32, srows, p.C, L::RowMajor, g.kvs, true},
          {"score_state_out", f32, srows, p.C, L::RowMajor, g.scs, true}};
}

namespace {
// Each entry's position (its block's first token).
std::vector<int64_t> entry_positions(const ref::CompressorConfig& c) {
  std::vector<int64_t> pos;
  for (int64_t s : c.starts)
    for (int64_t i = s / c.ratio; i < (s + c.tokens) / c.ratio; ++i) pos.push_back(i * c.ratio);
  return pos;
}
}  // namespace

std::vector<double> CompressorKernel::make_input(size_t index, const InputSpec& spec) const {
  const auto t = tensors();
  std::vector<double> v = generate_input(spec, t.at(index), static_cast<int>(index));
  const num::Format f = sim::number_format(t[index].dtype);
  if (index == 1 || index == 2)  // nn.Linear-like weights keep x W at the scale of x
    for (double& x : v) x = num::round_to(f, x / std::sqrt(static_cast<double>(s_.cfg.hidden)));
  if (index == 4)
    for (double& x : v) x = num::round_to(f, 1.0 + 0.25 * x);
  if (index == 5 || index == 6) {  // the tables the model's rotary cache holds
    const auto pos = entry_positions(s_.cfg);
    std::vector<double> cs(v.size()), sn(v.size());
    ref::rope_tables(s_.cfg.rope, static_cast<int64_t>(pos.size()), pos.data(), cs.data(), sn.data());
    v = index == 5 ? cs : sn;
    for (double& x : v) x = num::round_to(f, x);
  }
  return v;
}

std::vector<Golden> CompressorKernel::references(const std::vector<std::vector<double>>& in,
                                                 const std::vector<std::vector<double>>& device) const {
  const auto& c = s_.cfg;
  // Exact: fp64 from the device's operands, with the rotary angles' exact cos / sin; the
  // same-precision golden runs the fp32 steps on the fp32 tables the device reads.
  const auto pos = entry_positions(c);
  std::vector<double> cs(pos.size() * static_cast<size_t>(c.rope.dims)), sn(cs.size());
  ref::rope_tables(c.rope, static_cast<int64_t>(pos.size()), pos.data(), cs.data(), sn.data());
  const auto ex = ref::compressor(c, in[0].data(), in[1].data(), in[2].data(), in[3].data(), in[4].data(), in[7].data(),
                                  in[8].data(), cs.data(), sn.data());
  std::vector<std::vector<float>> f;
  for (const auto& v : in) f.emplace_back(v.begin(), v.end());
  const auto sp = ref::compressor(c, f[0].data(), f[1].data(), f[2].data(), f[3].data(), f[4].data(), f[7].data(),
                                  f[8].data(), f[5].data(), f[6].data());
  std::vector<Golden> g(3);
  g[0].exact = ex.entries;
  if (c.fp8 && !device.empty()) {
    // FP8 codes may flip only where fp32 arithmetic upstream reaches a rounding tie, and at most
    // for 0.1% of the elements (KERNELS.md 5.2); beyond that the plain fp64 golden judges.
    const int64_t d = c.head_dim, nq = d - c.rope.dims, q0 = c.rope.at_tail ? 0 : c.rope.dims;
    std::vector<double> adopted = g[0].exact;
    int64_t flips = 0;
    for (size_t e = 0; e < pos.size(); ++e) {
      const size_t o = e * static_cast<size_t>(d) + static_cast<size_t>(q0);
      flips += ref::fp8_fake_quant_like(ex.prequant.data() + o, device[0].data() + o, nq, kQBlock, std::ldexp(1.0, -14),
                                        adopted.data() + o);
    }
    if (flips <= std::max<int64_t>(1, static_cast<int64_t>(pos.size()) * nq / 1000)) g[0].exact = std::move(adopted);
  }
  const num::Format out = sim::number_format(s_.dtype);
  for (float x : sp.entries) g[0].same_precision.push_back(num::round_to(out, x));
  g[1].exact = ex.kv_state, g[2].exact = ex.score_state;
  g[1].same_precision.assign(sp.kv_state.begin(), sp.kv_state.end());
  g[2].same_precision.assign(sp.score_state.begin(), sp.score_state.end());
  return g;
}

Golden CompressorKernel::reference(const std::vector<std::vector<double>>& inputs) const {
  return references(inputs, {})[0];
}

double CompressorKernel::flops() const {
  const auto& c = s_.cfg;
  const double rows = static_cast<double>(c.batch() * c.tokens), C = static_cast<double>(c.coff() * c.head_dim);
  // GEMM; per row ape, max, exp, sum, product, sum (~8 per channel); per entry merge, norm, rope, quant (~40 per dim)
  return 2.0 * rows * 2 * C * static_cast<double>(c.hidden) + 8.0 * rows * C + 40.0 * static_cast<double>(c.entries() * c.head_dim);
}

double CompressorKernel::compulsory_bytes() const {
  const Plan p = make_plan(s_, t_, 1);
  const double e = sim::dtype_bytes(s_.dtype);
  double state = 0;  // state rows read (held blocks of emitting sequences) and rewritten
  for (const Seq& sq : p.seqs) {
    const bool held = sq.p0 > 0 && sq.k1 > sq.k0;
    state += held ? ((p.overlap && sq.k0 >= 1 ? p.m * p.d : 0) + sq.r0 * p.C) * 2.0 : 0.0;
    const int64_t changed = sq.k1 > sq.k0 ? (p.overlap ? p.m : 0) + (sq.p0 + p.T) % p.m : p.T;
    state += static_cast<double>(changed * p.C) * 2.0;
  }
  return static_cast<double>(p.B * p.T * p.H + 2 * p.H * p.C + p.n_out * p.d) * e +
         4.0 * static_cast<double>(p.m * p.C + p.d + 2 * p.n_out * p.rd) + 4.0 * state;
}

namespace {
// Instruction counts of the AIV building blocks above (vector instructions stay below the
// 255-repeat limit at these sizes, so one per op).
double tree_n(int64_t L) {
  double n = L == 1;
  for (int64_t len = L; len > 1; len /= 2) n += 1 + len % 2;
  return n;
}
double partial_n(int64_t L) { return 3 * tree_n(L) + static_cast<double>(L) + 2; }
constexpr double kMergeN = 13, kSetN = 8;  // a merge; a buffer set's flags
double finalize_n(const Plan& p, int64_t E, bool fp8_cast) {
  return 15 + static_cast<double>(E) + (p.fp8 ? 30 + (fp8_cast ? 2 : 32) : 0);
}
}  // namespace

double CompressorKernel::estimated_instructions() const {
  const Plan p = make_plan(s_, t_, 1);
  const GemmTiling& g = t_.gemm;
  const double k1s = static_cast<double>(ceil_div(p.H, g.k1));
  const double l0 = static_cast<double>(ceil_div(g.k1, g.k0) * ceil_div(g.m1, g.m0) * ceil_div(g.n1, g.n0));
  const double blocks = p.decode ? static_cast<double>(ceil_div(p.B, g.m1) * 2 * ceil_div(p.C, g.n1)) : 2.0 * p.items.size();
  const double cores = static_cast<double>(p.decode ? std::max<int64_t>(1, std::min<int64_t>(g.cores, static_cast<int64_t>(blocks))) : p.cores);
  double n = blocks * (k1s * (6 + 7 * l0) + 5) + cores * 2 * (g.stages + 4) + 3 * blocks;  // as GemmKernel counts, with hand-offs
  const double fin = finalize_n(p, p.Et, false), aivs = p.decode ? static_cast<double>(std::max<int64_t>(p.B, 2 * static_cast<int64_t>(cores))) : 2 * cores;
  n += aivs * (30 + 4.0 * t_.buffers + 4.0 * static_cast<double>(p.waves));  // constants, set flags, barriers
  auto run_n = [&](int64_t rows, bool pooled) {  // a run of state rows in chunks
    const int64_t nch = ceil_div(rows, p.rpt);
    return static_cast<double>(nch) * (kSetN + 4 + (pooled ? partial_n(std::min(rows, p.rpt)) : 0)) +
           (pooled ? kMergeN * static_cast<double>(nch - 1) + 3 : 0);
  };
  for (const Seq& sq : p.seqs) {  // the state units
    const bool emits = sq.k1 > sq.k0;
    if (!emits || (p.decode ? false : sq.p0 == 0)) continue;
    const double units = static_cast<double>(ceil_div(p.d, p.nb)) * p.c;
    if (p.overlap && sq.k0 >= 1) n += units / p.c * run_n(p.m, true);
    if (sq.r0 > 0) n += units * run_n(sq.r0, true);
  }
  for (const Item& it : p.items)  // phase A
    for (int k = 0; k < 2; ++k) {
      n += 2;
      for (const Job& jb : jobs_of(p, p.groups[it.group].frag[k]))
        n += kSetN + 2 * (jb.G > 1 ? p.m : 1) + static_cast<double>(jb.G) + 1 + partial_n(jb.L) + (jb.ci ? kMergeN : 0) + 5;
    }
  for (const EntryTile& et : p.etiles) {  // phase C
    const int np = std::popcount(et.mask);
    n += kSetN + 3 * np + 2 + kMergeN * (np - 1) + 2 + fin;
  }
  if (p.decode) n += static_cast<double>(p.B) * (kSetN + 5) + static_cast<double>(p.n_out) * (2 * kMergeN + fin + 3);
  return n;
}

int64_t compressor_ub_bytes(const CompressorShape& s, const CompressorTiling& t, const sim::HardwareSpec& hw) {
  const Plan p = make_plan(s, t, decode_aivs(s, t, hw));
  return static_cast<int64_t>(ub_layout(s, p, t, !p.decode && hw.path(Path::L0CToUb).available).total);
}

Status CompressorKernel::can_implement(const sim::HardwareSpec& hw) const {
  const auto& c = s_.cfg;
  const bool decode = c.tokens == 1;
  if (c.hidden % 16)
    return Status::bad("workload.hidden", fmt::format("hidden {} is not a multiple of 16 (the cube's K fractal and the 32-byte rows of x)", c.hidden));
  if (c.head_dim % 16)
    return Status::bad("workload.head_dim", fmt::format("head_dim {} is not a multiple of 16 (the cube's N fractal)", c.head_dim));
  if (c.rope.dims <= 0 || c.rope.dims % 2 || c.rope.dims > c.head_dim)
    return Status::bad("workload.rope.dims", fmt::format("rope dims {} must be even (rotated in pairs), > 0 and at most head_dim {}",
                                                         c.rope.dims, c.head_dim));
  if (c.fp8 && (c.head_dim - c.rope.dims) % kQBlock)
    return Status::bad("workload.quant", fmt::format("fp8 quantises the {} non-rope dims in blocks of 64", c.head_dim - c.rope.dims));
  if (c.ratio < 2) return Status::bad("workload.ratio", fmt::format("ratio must be >= 2, found {}", c.ratio));
  if (!hw.aic.cube_k0[static_cast<int>(s_.dtype)])
    return Status::bad("workload.dtype", fmt::format("{} has no {} cube", hw.name, sim::dtype_name(s_.dtype)));
  const std::vector<std::pair<VecOp, DType>> ops{
      {VecOp::Add, DType::Fp32}, {VecOp::Sub, DType::Fp32}, {VecOp::Mul, DType::Fp32}, {VecOp::Div, DType::Fp32},
      {VecOp::Max, DType::Fp32}, {VecOp::Muls, DType::Fp32}, {VecOp::Adds, DType::Fp32}, {VecOp::Maxs, DType::Fp32},
      {VecOp::Mins, DType::Fp32}, {VecOp::Exp, DType::Fp32}, {VecOp::Ln, DType::Fp32}, {VecOp::Sqrt, DType::Fp32},
      {VecOp::Dup, DType::Fp32}, {VecOp::Arange, DType::Fp32}, {VecOp::ReduceSum, DType::Fp32},
      {VecOp::ReduceMax, DType::Fp32}, {VecOp::Gather, DType::Fp32}, {VecOp::Cast, DType::Fp32},
      {VecOp::Cast, DType::Int32}, {VecOp::Cast, DType::Bf16}};
  for (auto [op, dt] : ops)
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(dt)] > 0))
      return Status::bad("hardware", fmt::format("{} has no vector {} on {}", hw.name, sim::vec_op_name(op), sim::dtype_name(dt)));
  if (hw.aiv_per_aic != 2) return Status::bad("hardware", "the compressor splits each item between an AIC's two AIVs");
  if (hw.sync.cross_flag_ids < kWave + 2 || hw.sync.event_ids < 8)
    return Status::bad("hardware", fmt::format("the compressor needs {} cross-core flag ids and 8 event ids", kWave + 2));
  GemmShape gs{c.batch() * c.tokens, c.coff() * c.head_dim, c.hidden, s_.dtype, DType::Fp32, TensorLayout::RowMajor,
               TensorLayout::ColMajor};
  if (Status st = check_gemm_tiling(gs, t_.gemm, hw); !st.ok) return st;
  if (!decode && (t_.gemm.m1 < c.ratio || c.head_dim % t_.gemm.n1))
    return Status::bad("tiling.l1", fmt::format("an item of [{}, {}] must hold a whole block ({} rows) and divide head_dim {}",
                                                t_.gemm.m1, t_.gemm.n1, c.ratio, c.head_dim));
  for (auto [key, v] : {std::pair{"tiling.rows_per_tile", t_.rows_per_tile}, {"tiling.blocks_per_tile", t_.blocks_per_tile},
                        {"tiling.entries_per_tile", t_.entries_per_tile}})
    if (v < 1) return Status::bad(key, fmt::format("must be >= 1, found {}", v));
  if (t_.buffers < 1 || t_.buffers > kMaxBuffers)
    return Status::bad("tiling.buffers", fmt::format("buffers must be 1..{} (event ids, one kept for the constants), found {}", kMaxBuffers, t_.buffers));
  if (!decode)
    if (Status st = CubeVectorSlots::for_hardware(hw, t_.slots).check(hw); !st.ok) return st;
  const Plan p = make_plan(s_, t_, decode_aivs(s_, t_, hw));
  const bool via_ub = !decode && hw.path(Path::L0CToUb).available;
  const Ub u = ub_layout(s_, p, t_, via_ub);
  const char* blame = u.sets - u.slots > static_cast<uint64_t>(hw.aiv.ub_bytes) / 2 ? "tiling.l1"  // the slots
                      : u.fin_bytes > u.tile_bytes                                ? "tiling.entries_per_tile"
                      : c.ratio <= t_.rows_per_tile                               ? "tiling.blocks_per_tile"
                                                                                  : "tiling.rows_per_tile";
  if (u.total > static_cast<uint64_t>(hw.aiv.ub_bytes))
    return Status::bad(blame,
                       fmt::format("UB needs {} B ({} B of constants and accumulators, {} B of L0C->UB slots, {} buffer sets of "
                                   "{} B), more than its {} B", u.total, u.slots, u.sets - u.slots, t_.buffers, u.set_bytes,
                                   hw.aiv.ub_bytes));
  if (static_cast<int64_t>(u.set_bytes) > (int64_t(1) << 31) || c.batch() * c.tokens > (int64_t(1) << 30))
    return Status::bad("workload.tokens", "beyond what the 32-bit instruction fields address");
  return Status::good();
}

sim::Program CompressorKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  const Plan p = make_plan(s_, t_, decode_aivs(s_, t_, hw));
  const Gm g = place(s_, p, t_);
  return p.decode ? lower_decode(s_, t_, p, g, hw, functional, name()) : lower_prefill(s_, t_, p, g, hw, functional, name());
}

CompressorTiling default_compressor_tiling(const CompressorShape& s, const sim::HardwareSpec& hw) {
  const auto& c = s.cfg;
  const int64_t B = c.batch(), C = c.coff() * c.head_dim, e = sim::dtype_bytes(s.dtype);
  CompressorTiling t;
  GemmTiling& g = t.gemm;
  g.k1 = std::min<int64_t>(512 / e, round_up(c.hidden, 32 / e)), g.k0 = std::min<int64_t>(128 / e, g.k1);
  while (g.k1 % g.k0) g.k0 -= 32 / e;
  g.stages = 2, g.swizzle_offset = 1, g.swizzle_direction = 0;
  if (c.tokens == 1) {  // decode: one GEMM over the batch, n1 narrowed until half the AICs have a block
    g.m1 = std::min<int64_t>(128, round_up(B, 16)), g.n1 = std::min<int64_t>(256, round_up(C, 16));
    while (g.n1 > 32 && g.n1 % 32 == 0 && 2 * ceil_div(B, g.m1) * 2 * ceil_div(C, g.n1) < hw.num_aic) g.n1 /= 2;
    g.m0 = g.m1, g.n0 = g.n1;
    g.cores = static_cast<int>(std::min<int64_t>(hw.num_aic, ceil_div(B, g.m1) * 2 * ceil_div(C, g.n1)));
    t.entries_per_tile = 1;
    while (compressor_ub_bytes(s, t, hw) > hw.aiv.ub_bytes && t.rows_per_tile > 4) t.rows_per_tile /= 2;
    return t;
  }
  // Prefill: the first item shape (rows x channels, rows a multiple of the ratio) whose fp32 block
  // fits L0C and whose L0C->UB slots (2, else 1) leave room for the buffer sets, these shrunk
  // until they fit. Wide-enough blocks keep the cube fed; every AIC takes items (the plan cuts the
  // last wave's groups to spread it).
  const bool via_ub = hw.path(Path::L0CToUb).available;
  g.cores = hw.num_aic;
  // (16 channels for head dims such as the toy's 80 that no wider item divides.)
  for (auto [rows, nb] : {std::pair<int64_t, int64_t>{256, 128}, {128, 256}, {128, 128}, {128, 64}, {64, 64}, {64, 32}, {64, 16}})
    for (int slots : {2, 1}) {
      g.m1 = g.m0 = round_up(std::max(rows, c.ratio), c.ratio), g.n1 = g.n0 = nb, t.slots = slots;
      if (nb > c.head_dim || c.head_dim % nb || g.m1 * nb * 4 > hw.aic.l0c_bytes || (slots == 1 && !via_ub)) continue;
      t.blocks_per_tile = 4, t.rows_per_tile = 32, t.entries_per_tile = 2;
      while (compressor_ub_bytes(s, t, hw) > hw.aiv.ub_bytes) {
        if (c.ratio <= t.rows_per_tile && t.blocks_per_tile > 1) t.blocks_per_tile /= 2;
        else if (t.rows_per_tile > 8) t.rows_per_tile /= 2;
        else break;
      }
      if (compressor_ub_bytes(s, t, hw) <= hw.aiv.ub_bytes) return t;
    }
  g.m1 = g.m0 = round_up(std::max<int64_t>(64, c.ratio), c.ratio), g.n1 = g.n0 = std::min<int64_t>(c.head_dim, 32);
  return t;  // can_implement says why it does not fit
}

std::unique_ptr<Kernel> make_compressor(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  CompressorShape s;
  auto& c = s.cfg;
  c.hidden = w.at("hidden").as_positive_int();
  c.head_dim = w.at("head_dim").as_positive_int();
  c.ratio = w.at("ratio").as_positive_int();
  c.tokens = w.at("tokens").as_positive_int();
  if (c.hidden > (int64_t(1) << 20) || c.head_dim > 4096 || c.ratio > 4096 || c.tokens > (int64_t(1) << 24))
    w.fail("hidden beyond 2^20, head_dim or ratio beyond 4096, or tokens beyond 2^24 are not supported");
  if (auto st = w.get("starts")) {
    for (int64_t v : st->as_int_list())
      if (v < 0) st->fail(fmt::format("start positions must be >= 0, found {}", v));
    c.starts = st->as_int_list();
    if (c.starts.empty()) st->fail("expected at least one sequence");
  } else {
    const int64_t batch = w.at("batch").as_positive_int();
    const int64_t start = w.get("start") ? w.at("start").as_int() : 0, step = w.get("start_step") ? w.at("start_step").as_int() : 0;
    if (start < 0 || step < 0) w.fail("start and start_step must be >= 0");
    for (int64_t b = 0; b < batch; ++b) c.starts.push_back(start + b * step);
  }
  if (auto d = w.get("dtype")) s.dtype = *sim::dtype_from_name(d->as_enum({"bf16", "fp16"}));
  if (auto e = w.get("eps")) c.eps = e->as_positive_double();
  c.overlap = c.ratio == 4;
  if (auto o = w.get("overlap")) c.overlap = o->as_bool();
  if (auto q = w.get("quant")) c.fp8 = q->as_enum({"none", "fp8"}) == "fp8";
  if (auto r = w.get("rope")) {
    if (auto l = r->get("layout")) c.rope.layout = l->as_enum({"interleaved", "half"}) == "half" ? ref::RopeLayout::Half : ref::RopeLayout::Interleaved;
    if (auto d = r->get("dims")) c.rope.dims = d->as_int();
    if (auto a = r->get("at")) c.rope.at_tail = a->as_enum({"tail", "head"}) == "tail";
    if (auto th = r->get("theta")) c.rope.theta = th->as_positive_double();
  }
  CompressorTiling t = default_compressor_tiling(s, hw);
  if (tiling) {
    const int cores = t.gemm.cores;
    t.gemm = parse_gemm_tiling(tiling, t.gemm, 1, 1, hw, s.dtype);
    if (!tiling->get("cores")) t.gemm.cores = cores;
    if (auto x = tiling->get("rows_per_tile")) t.rows_per_tile = x->as_positive_int();
    if (auto x = tiling->get("blocks_per_tile")) t.blocks_per_tile = x->as_positive_int();
    if (auto x = tiling->get("entries_per_tile")) t.entries_per_tile = x->as_positive_int();
    if (auto x = tiling->get("buffers")) t.buffers = static_cast<int>(x->as_positive_int());
    if (auto x = tiling->get("slots")) t.slots = static_cast<int>(x->as_positive_int());
  }
  return std::make_unique<CompressorKernel>(std::move(s), t, !tiling.has_value());
}

}  // namespace npusim::kernels
