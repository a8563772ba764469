#include "kernels/lightning_indexer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/cube_vector.hpp"
#include "kernels/reference/indexer.hpp"
#include "kernels/rng.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/topk.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::TileRef;
using sim::VecOp;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kBarrier = CubeVectorSlots::kFlags;  // cross-core flag of the all-AIV barrier before stage 2 (after READY, FREE)
constexpr int kUnitBuf = 2;       // AIV V<->MTE2 event of the unit's weights (2201 score copies use 0, 1)
constexpr int kScaleBuf = 3;      // AIV V<->MTE2 events of the k_scale groups (3, 4)
constexpr int kOut = 0;           // AIV MTE3->V: the fused outputs / lists have left the areas (1, 2: keys rows)
constexpr int kSync = 3;          // AIV V->MTE3: the fill buffer is ready; everything is done before the barrier
constexpr int64_t kMaxFill = 2048;

uint32_t u32(int64_t v) { return static_cast<uint32_t>(v); }
uint32_t r16(int64_t v) { return u32(round_up(v, 16)); }
int64_t k_align(DType d) { return 32 / sim::dtype_bytes(d); }
uint64_t align32(int64_t bytes) { return static_cast<uint64_t>(round_up(bytes, 32)); }
int64_t fill_len(const IndexerShape& s) { return std::min(s.max_keys(), kMaxFill); }

// ---- Work plan: query blocks, their key-block ranges (units) and the AIC each unit runs on ----

struct QBlock {
  int64_t t0, nq, key_base, vis_max, blocks;
  int splits;
};
struct Unit {
  int qb, split;
  int64_t b0, b1;
};
struct Plan {
  int64_t qa = 1;  // queries per AIV of an item
  std::vector<QBlock> qblocks;
  std::vector<Unit> units;
  std::vector<std::vector<int>> per_core;  // unit ids in ascending order
  int max_splits = 1;
  bool stage2 = false;
  int64_t items = 0;
};

Plan make_plan(const IndexerShape& s, const IndexerTiling& t, int aiv_per_aic) {
  Plan p;
  p.qa = ceil_div(t.q_block, aiv_per_aic);
  const std::vector<int64_t> vis = s.visible(), base = s.key_base();
  int64_t t0 = 0;
  for (size_t b = 0; b < s.queries.size(); t0 += s.queries[b++])
    for (int64_t j = 0; j < s.queries[b]; j += t.q_block) {
      const int64_t nq = std::min(t.q_block, s.queries[b] - j), first = t0 + j;
      const int64_t vmax = vis[first + nq - 1], blocks = ceil_div(vmax, t.key_block);
      const int sp = static_cast<int>(std::clamp<int64_t>(t.splits, 1, std::max<int64_t>(1, blocks)));
      p.qblocks.push_back({first, nq, base[first], vmax, blocks, sp});
      p.max_splits = std::max(p.max_splits, sp);
      p.stage2 |= s.fused_topk && sp > 1;
      for (int k = 0; k < sp; ++k)
        p.units.push_back({static_cast<int>(p.qblocks.size()) - 1, k, blocks * k / sp, blocks * (k + 1) / sp});
      p.items += blocks;
    }
  // Longest first to the least loaded AIC; an empty unit still costs its outputs.
  const int cores = static_cast<int>(std::clamp<int64_t>(t.cores, 1, static_cast<int64_t>(p.units.size())));
  std::vector<int> order(p.units.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return p.units[a].b1 - p.units[a].b0 > p.units[b].b1 - p.units[b].b0;
  });
  std::vector<double> load(static_cast<size_t>(cores), 0.0);
  p.per_core.assign(static_cast<size_t>(cores), {});
  for (int u : order) {
    const auto c = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    load[c] += static_cast<double>(p.units[u].b1 - p.units[u].b0) + 0.01;
    p.per_core[c].push_back(u);
  }
  for (auto& v : p.per_core) std::sort(v.begin(), v.end());
  return p;
}

// ---- On-chip layouts ----

struct AicLayout {
  uint64_t q_l1, k_l1, k_stage, l0b_half, l0c_buf;
  int64_t n0;
  int l0c_bufs;
  int64_t l1_bytes;
};

AicLayout aic_layout(const IndexerShape& s, const IndexerTiling& t, const sim::HardwareSpec& hw) {
  const int64_t e = sim::dtype_bytes(s.dtype), d = round_up(s.head_dim, 32), m = round_up(t.q_block * s.heads, 16);
  AicLayout l{};
  l.q_l1 = 0;
  l.k_l1 = static_cast<uint64_t>(m * d * e);
  l.k_stage = static_cast<uint64_t>(d * round_up(t.l1_blocks * t.key_block, 16) * e);
  l.l1_bytes = static_cast<int64_t>(l.k_l1 + t.stages * l.k_stage);
  l.n0 = std::min<int64_t>(round_up(t.key_block, 16), hw.aic.l0b_bytes / 2 / (d * e) / 16 * 16);
  l.l0b_half = static_cast<uint64_t>(d * l.n0 * e);
  l.l0c_buf = static_cast<uint64_t>(m * round_up(t.key_block, 16) * 4);
  l.l0c_bufs = 2 * static_cast<int64_t>(l.l0c_buf) <= hw.aic.l0c_bytes ? 2 : 1;
  return l;
}

// One AIV's UB. Stage 1: the L0C->UB slots (3510) or the workspace copies (2201), the k_scale of
// a group of merge_blocks key blocks (two), the unit's weights and weight tile, then per query the
// batch's keys and two top-k areas, and the batch's columns (fused), or two sets of keys rows and
// the -inf fill (unfused). Stage 2 reuses the UB from 0.
struct AivUb {
  uint64_t slot_bytes = 0, scores[2] = {0, 0}, kscale[2] = {0, 0}, wbuf = 0, qsbuf = 0, wtile = 0;
  uint64_t keys[2] = {0, 0}, idx = 0, areas = 0, area_bytes = 0, fill = 0, bytes = 0;
  uint64_t s2_area[2] = {0, 0}, s2_out = 0, s2_bytes = 0;
  uint64_t area(int64_t i, int which) const { return areas + static_cast<uint64_t>(2 * i + which) * area_bytes; }
};

AivUb aiv_ub(const IndexerShape& s, const IndexerTiling& t, bool via_ub, int64_t qa, int max_splits) {
  AivUb u;
  uint64_t at = 0;
  auto put = [&at](uint64_t bytes) {
    const uint64_t off = at;
    at += align32(static_cast<int64_t>(bytes));
    return off;
  };
  const int64_t rows = qa * s.heads, N = t.key_block, K = s.topk, cap = t.merge_blocks * N;
  u.slot_bytes = static_cast<uint64_t>(rows * N * 4);
  if (via_ub) put(t.slots * u.slot_bytes);
  else u.scores[0] = put(u.slot_bytes), u.scores[1] = put(u.slot_bytes);
  u.kscale[0] = put(cap * 4), u.kscale[1] = put(cap * 4);
  u.wbuf = put(rows * 4), u.qsbuf = put(rows * 4), u.wtile = put(u.slot_bytes);
  if (s.fused_topk) {
    u.keys[0] = put(qa * cap * 4);
    u.idx = put(cap * 4);
    u.area_bytes = align32(static_cast<int64_t>(TopkEmitter::area_bytes(K, cap)));
    u.areas = put(2 * qa * u.area_bytes);
  } else {
    u.keys[0] = put(qa * N * 4), u.keys[1] = put(qa * N * 4);
    u.fill = put(fill_len(s) * 4);
  }
  u.bytes = at;
  if (s.fused_topk && max_splits > 1) {  // TopkStage2's layout, from 0
    u.s2_area[1] = align32(max_splits * K * sim::kSortPairBytes), u.s2_out = 2 * u.s2_area[1];
    u.s2_bytes = TopkStage2::ub_bytes(K, max_splits);
  }
  return u;
}

// ---- GM placement: the tensors, then the workspaces ----

struct Gm {
  uint64_t q, k, qs, ks, w, scores = 0, idx = 0, vals = 0, end;
};

Gm place(const IndexerShape& s) {
  const int64_t T = s.tokens(), e = sim::dtype_bytes(s.dtype), HI = s.heads;
  GmAllocator gm;
  Gm g{};
  g.q = gm.alloc(T * HI * s.head_dim * e);
  g.k = gm.alloc(s.total_keys() * s.head_dim * e);
  g.qs = gm.alloc(T * HI * 4);
  g.ks = gm.alloc(s.total_keys() * 4);
  g.w = gm.alloc(T * HI * 4);
  if (s.fused_topk) g.idx = gm.alloc(T * s.topk * 4), g.vals = gm.alloc(T * s.topk * 4);
  else g.scores = gm.alloc(T * s.max_keys() * 4);
  g.end = gm.footprint();
  return g;
}

sim::TileRef flat(uint64_t off, DType d) { return {off, 0, 0, 0, TileLayout::Flat, d}; }

}  // namespace

// ---- Shape ----

std::vector<int64_t> IndexerShape::key_base() const {
  std::vector<int64_t> v;
  int64_t base = 0;
  for (size_t b = 0; b < queries.size(); ++b) {
    v.insert(v.end(), static_cast<size_t>(queries[b]), base);
    base += keys[b];
  }
  return v;
}

std::vector<int64_t> IndexerShape::visible() const {
  std::vector<int64_t> v;
  for (size_t b = 0; b < queries.size(); ++b)
    for (int64_t j = 0; j < queries[b]; ++j) {
      const int64_t pos = context[b] - queries[b] + j;
      v.push_back(std::min(keys[b], (pos + 1) / ratio));
    }
  return v;
}

sim::DType indexer_dtype_for(const sim::HardwareSpec& hw) {
  return hw.aic.cube_k0[static_cast<int>(DType::Fp8)] ? DType::Fp8 : DType::Bf16;
}

// ---- The lowering ----

namespace {

class IndexerLowering {
 public:
  IndexerLowering(const IndexerShape& s, const IndexerTiling& t, const sim::HardwareSpec& hw, const Plan& p)
      : s_(s), t_(t), p_(p), g_(place(s)), l_(aic_layout(s, t, hw)),
        cv_(CubeVectorSlots::for_hardware(hw, t.slots)), u_(aiv_ub(s, t, cv_.via_ub, p.qa, p.max_splits)),
        vis_(s.visible()) {
    GmAllocator gm;
    gm.alloc(g_.end);
    cv_.ub_slot_bytes = u_.slot_bytes;
    cv_.ws_slot_bytes = static_cast<uint64_t>(t.q_block * s.heads * t.key_block * 4);
    cv_.ws = gm.alloc(cv_.via_ub ? 0 : static_cast<int64_t>(p.per_core.size() * t.slots * cv_.ws_slot_bytes));
    lists_ = gm.alloc(p.stage2 ? s.tokens() * p.max_splits * s.topk * sim::kSortPairBytes : 0);
    footprint_ = gm.footprint();
  }
  uint64_t footprint() const { return footprint_; }
  void aic(sim::CoreBuilder& b, int c) const;
  void aiv(sim::CoreBuilder& b, int c, int k) const;

 private:
  int64_t nb_of(const QBlock& q, int64_t blk) const { return std::min(t_.key_block, q.vis_max - blk * t_.key_block); }
  std::pair<int64_t, int64_t> mine(const QBlock& q, int k) const {  // this AIV's queries [q0, q1) of the block
    return {std::min(q.nq, k * p_.qa), std::min(q.nq, (k + 1) * p_.qa)};
  }
  void stage2(sim::CoreBuilder& b, int v) const;

  const IndexerShape& s_;
  const IndexerTiling& t_;
  const Plan& p_;
  const Gm g_;
  const AicLayout l_;
  CubeVectorSlots cv_;
  const AivUb u_;
  const std::vector<int64_t> vis_;
  uint64_t lists_ = 0, footprint_ = 0;
};

void IndexerLowering::aic(sim::CoreBuilder& b, int c) const {
  const int64_t HI = s_.heads, D = s_.head_dim, N = t_.key_block, e = sim::dtype_bytes(s_.dtype), dk = round_up(D, k_align(s_.dtype));
  const DType dt = s_.dtype;
  const int kq = t_.stages;  // the Q area's MTE2<->MTE1 event
  for (int st = 0; st <= t_.stages; ++st) b.set_flag(Pipe::Mte1, Pipe::Mte2, st);
  for (int p = 0; p < 3; ++p) b.set_flag(Pipe::M, Pipe::Mte1, p);  // L0B halves 0, 1; L0A 2
  for (int q = 0; q < l_.l0c_bufs; ++q) b.set_flag(Pipe::Fixpipe, Pipe::M, q);
  int64_t n = 0, kiter = 0, l0iter = 0;
  for (int ui : p_.per_core[static_cast<size_t>(c)]) {
    const Unit& un = p_.units[static_cast<size_t>(ui)];
    const QBlock& qb = p_.qblocks[static_cast<size_t>(un.qb)];
    if (un.b1 == un.b0) continue;
    const int64_t M = qb.nq * HI;
    const TileRef q_l1{l_.q_l1, r16(M), 0, 0, TileLayout::Nz, dt}, l0a{0, r16(M), 0, 0, TileLayout::Nz, dt};
    b.wait_flag(Pipe::Mte1, Pipe::Mte2, kq);
    sim::Operands oq;
    oq.rows = u32(M), oq.cols = u32(D), oq.dst = q_l1;
    const uint64_t qaddr = g_.q + static_cast<uint64_t>(qb.t0 * HI * D * e);
    oq.src = {qaddr, u32(D), 0, 0, TileLayout::Nd, dt};
    b.copy(Path::GmToL1Nd2Nz, u32(M * D * e), sim::GmRegion{qaddr, u32(M), u32(D * e), static_cast<uint64_t>(D * e)}, oq);
    b.set_flag(Pipe::Mte2, Pipe::Mte1, kq);
    b.wait_flag(Pipe::Mte2, Pipe::Mte1, kq);
    b.wait_flag(Pipe::M, Pipe::Mte1, 2);  // the last unit's MMADs are done with L0A
    sim::Operands la;
    la.rows = u32(M), la.cols = u32(D), la.src = q_l1, la.dst = l0a;
    b.copy(Path::L1ToL0A, u32(r16(M) * dk * e), {}, la);
    b.set_flag(Pipe::Mte1, Pipe::Mte2, kq);
    b.set_flag(Pipe::Mte1, Pipe::M, 2);
    bool first = true;
    for (int64_t g0 = un.b0; g0 < un.b1; g0 += t_.l1_blocks, ++kiter) {
      // One MTE2 copy brings the K rows of l1_blocks key blocks (K^T: DI x keys, read column-major).
      const int64_t g1 = std::min(un.b1, g0 + t_.l1_blocks), keys = (g1 - 1 - g0) * N + nb_of(qb, g1 - 1);
      const int st = static_cast<int>(kiter % t_.stages);
      const TileRef k_l1{l_.k_l1 + st * l_.k_stage, r16(D), 0, 0, TileLayout::Nz, dt};
      b.wait_flag(Pipe::Mte1, Pipe::Mte2, st);
      sim::Operands ok;
      const uint64_t kaddr = g_.k + static_cast<uint64_t>((qb.key_base + g0 * N) * D * e);
      ok.rows = u32(D), ok.cols = u32(keys), ok.dst = k_l1, ok.src = {kaddr, u32(D), 0, 0, TileLayout::NdT, dt};
      b.copy(Path::GmToL1Nd2Nz, u32(keys * D * e), sim::GmRegion{kaddr, u32(keys), u32(D * e), static_cast<uint64_t>(D * e)}, ok);
      b.set_flag(Pipe::Mte2, Pipe::Mte1, st);
      b.wait_flag(Pipe::Mte2, Pipe::Mte1, st);
      for (int64_t blk = g0; blk < g1; ++blk, ++n) {
        const int64_t nb = nb_of(qb, blk), col = (blk - g0) * N;
        const int cb = static_cast<int>(n % l_.l0c_bufs);
        const TileRef c_tile{cb * l_.l0c_buf, r16(M), 0, 0, TileLayout::Nz, DType::Fp32};
        for (int64_t ns = 0; ns < nb; ns += l_.n0, ++l0iter) {
          const int64_t na = std::min(l_.n0, nb - ns);
          const int p = static_cast<int>(l0iter % 2);
          const TileRef l0b{p * l_.l0b_half, r16(D), 0, 0, TileLayout::Nz, dt};
          b.wait_flag(Pipe::M, Pipe::Mte1, p);
          sim::Operands lb, mm;
          lb.rows = u32(D), lb.cols = u32(na), lb.src = k_l1, lb.src.col0 = u32(col + ns), lb.dst = l0b;
          b.copy(Path::L1ToL0B, u32(dk * r16(na) * e), {}, lb);
          b.set_flag(Pipe::Mte1, Pipe::M, p);
          b.wait_flag(Pipe::Mte1, Pipe::M, p);
          if (first) b.wait_flag(Pipe::Mte1, Pipe::M, 2), first = false;
          if (ns == 0) b.wait_flag(Pipe::Fixpipe, Pipe::M, cb);
          mm.src = l0a, mm.src2 = l0b, mm.dst = c_tile, mm.dst.col0 = u32(ns);
          b.mmad(u32(M), u32(na), u32(D), dt, mm);
          b.set_flag(Pipe::M, Pipe::Mte1, p);
        }
        b.set_flag(Pipe::M, Pipe::Fixpipe, cb);
        b.wait_flag(Pipe::M, Pipe::Fixpipe, cb);
        if (n >= t_.slots)
          for (int k = 0; k < cv_.aiv_per_aic; ++k) b.cross_wait(Pipe::Fixpipe, CubeVectorSlots::free_flag(k));
        if (!cv_.via_ub) {  // the whole block into the AIC's workspace slot, rows N apart
          cv_.write_block(b, c, n, c_tile, M, nb, DType::Fp32, 0, N, 0);
        } else {  // each AIV's queries, all their head rows, into its UB slot
          for (int k = 0; k < cv_.aiv_per_aic; ++k) {
            const auto [q0, q1] = mine(qb, k);
            if (q1 <= q0) continue;
            sim::Operands o;
            o.rows = u32((q1 - q0) * HI), o.cols = u32(nb), o.src = c_tile, o.src.row0 = u32(q0 * HI);
            o.dst = {cv_.ub_slot(n), u32(N), 0, 0, TileLayout::Nd, DType::Fp32}, o.sibling = static_cast<uint8_t>(k);
            b.copy(Path::L0CToUb, u32((q1 - q0) * HI * nb * 4), {}, o);
          }
        }
        b.set_flag(Pipe::Fixpipe, Pipe::M, cb);
        b.cross_set(Pipe::Fixpipe, 2, CubeVectorSlots::kReady);
      }
      b.set_flag(Pipe::Mte1, Pipe::Mte2, st);
    }
    b.set_flag(Pipe::M, Pipe::Mte1, 2);  // L0A is free after the unit's last MMAD
  }
  for (int st = 0; st <= t_.stages; ++st) b.wait_flag(Pipe::Mte1, Pipe::Mte2, st);
  for (int p = 0; p < 3; ++p) b.wait_flag(Pipe::M, Pipe::Mte1, p);
  for (int q = 0; q < l_.l0c_bufs; ++q) b.wait_flag(Pipe::Fixpipe, Pipe::M, q);
  for (int64_t i = 0; i < std::min<int64_t>(n, t_.slots); ++i)
    for (int k = 0; k < cv_.aiv_per_aic; ++k) b.cross_wait(Pipe::Fixpipe, CubeVectorSlots::free_flag(k));
}

void IndexerLowering::aiv(sim::CoreBuilder& b, int c, int k) const {
  const int64_t HI = s_.heads, N = t_.key_block, K = s_.topk, S = s_.max_keys(), MB = t_.merge_blocks;
  const TopkEmitter em(b, K);
  const Pipe reader = cv_.via_ub ? Pipe::V : Pipe::Mte2;  // where the slot is read
  for (int q = 0; q < 5; ++q) b.set_flag(Pipe::V, Pipe::Mte2, q);
  for (int q = 0; q < 3; ++q) b.set_flag(Pipe::Mte3, Pipe::V, q);
  if (!s_.fused_topk) {
    em.dup(u_.fill, fill_len(s_), -kInf);
    b.set_flag(Pipe::V, Pipe::Mte3, kSync);
    b.wait_flag(Pipe::V, Pipe::Mte3, kSync);
  }
  int64_t n = 0, kb = 0, groups = 0;
  std::vector<TopkEmitter::State> st(static_cast<size_t>(p_.qa));
  std::vector<int64_t> fill(static_cast<size_t>(p_.qa));
  for (int ui : p_.per_core[static_cast<size_t>(c)]) {
    const Unit& un = p_.units[static_cast<size_t>(ui)];
    const QBlock& qb = p_.qblocks[static_cast<size_t>(un.qb)];
    const auto [q0, q1] = mine(qb, k);
    const int64_t nm = q1 - q0, rows = nm * HI, t0 = qb.t0 + q0;
    if (nm <= 0) {  // no query of this AIV in the block: answer the hand-off only
      for (int64_t blk = un.b0; blk < un.b1; ++blk, ++n) {
        b.cross_wait(reader, CubeVectorSlots::kReady);
        b.cross_set(reader, 2, CubeVectorSlots::free_flag(k));
      }
      continue;
    }
    // The unit's weights w * q_scale, broadcast along the key columns of the weight tile.
    b.wait_flag(Pipe::V, Pipe::Mte2, kUnitBuf);
    copy_gm_to_ub(b, u_.wbuf, rows, g_.w + static_cast<uint64_t>(t0 * HI * 4), rows, 1, rows, DType::Fp32);
    copy_gm_to_ub(b, u_.qsbuf, rows, g_.qs + static_cast<uint64_t>(t0 * HI * 4), rows, 1, rows, DType::Fp32);
    b.set_flag(Pipe::Mte2, Pipe::V, kUnitBuf);
    b.wait_flag(Pipe::Mte2, Pipe::V, kUnitBuf);
    em.ew(VecOp::Mul, u_.wbuf, u_.wbuf, rows, 0, u_.qsbuf);
    b.scalar(u32(rows));  // each weight into a scalar register for its broadcast
    for (int64_t r = 0; r < rows; ++r) {
      sim::Operands o;
      o.dst = flat(u_.wtile + static_cast<uint64_t>(r * N * 4), DType::Fp32), o.src = o.dst;
      o.src2 = flat(u_.wbuf + static_cast<uint64_t>(r * 4), DType::Fp32), o.scalar_from_src2 = true;
      b.vec(VecOp::Dup, DType::Fp32, u32(N), o);
    }
    b.set_flag(Pipe::V, Pipe::Mte2, kUnitBuf);
    if (s_.fused_topk) {
      b.wait_flag(Pipe::Mte3, Pipe::V, kOut);  // the last unit's outputs have left the areas
      for (int64_t i = 0; i < nm; ++i) st[i].area[0] = u_.area(i, 0), st[i].area[1] = u_.area(i, 1), em.reset(st[i]), fill[i] = 0;
    }
    for (int64_t blk = un.b0; blk < un.b1; ++blk, ++n) {
      const int64_t key0 = blk * N, nb = nb_of(qb, blk), npad = round_up(nb, 32), j = blk - un.b0;
      const int q = static_cast<int>(n % 2), g = kScaleBuf + static_cast<int>(groups % 2);
      const uint64_t kscale = u_.kscale[groups % 2] + static_cast<uint64_t>((j % MB) * N * 4);
      if (j % MB == 0) {  // the k_scale of the group of merge_blocks blocks this one starts
        const int64_t g1 = std::min(un.b1, blk + MB), keys = (g1 - 1 - blk) * N + nb_of(qb, g1 - 1);
        b.wait_flag(Pipe::V, Pipe::Mte2, g);
        copy_gm_to_ub(b, u_.kscale[groups % 2], keys, g_.ks + static_cast<uint64_t>((qb.key_base + key0) * 4), keys, 1, keys, DType::Fp32);
        b.set_flag(Pipe::Mte2, Pipe::V, g);
        b.wait_flag(Pipe::Mte2, Pipe::V, g);
      }
      uint64_t data = cv_.ub_slot(n);
      if (!cv_.via_ub) {
        data = u_.scores[q];
        b.wait_flag(Pipe::V, Pipe::Mte2, q);
        b.cross_wait(Pipe::Mte2, CubeVectorSlots::kReady);
        copy_gm_to_ub(b, data, N, cv_.ws_slot(c, n) + static_cast<uint64_t>(q0 * HI * N * 4), N, rows, nb, DType::Fp32);
        b.cross_set(Pipe::Mte2, 2, CubeVectorSlots::free_flag(k));
        b.set_flag(Pipe::Mte2, Pipe::V, q);
        b.wait_flag(Pipe::Mte2, Pipe::V, q);
      } else {
        b.cross_wait(Pipe::V, CubeVectorSlots::kReady);
      }
      // Weighted ReLU of every head row, then per query its heads summed, times k_scale, masked.
      em.ew(VecOp::Relu, data, data, rows * N);
      em.ew(VecOp::Mul, data, data, rows * N, 0, u_.wtile);
      if (!s_.fused_topk) b.wait_flag(Pipe::Mte3, Pipe::V, 1 + static_cast<int>(kb));
      for (int64_t i = 0; i < nm; ++i) {
        const int64_t valid = std::clamp<int64_t>(vis_[t0 + i] - key0, 0, nb), end = s_.fused_topk ? npad : nb;
        const uint64_t row = data + static_cast<uint64_t>(i * HI * N * 4);
        const uint64_t out = s_.fused_topk ? u_.keys[0] + static_cast<uint64_t>((i * MB * N + fill[i]) * 4)
                                           : u_.keys[kb] + static_cast<uint64_t>(i * N * 4);
        if (valid > 0) {
          int64_t p = 1;
          while (p * 2 <= HI) p *= 2;
          if (HI > p) em.ew(VecOp::Add, row, row, (HI - p) * N, 0, row + static_cast<uint64_t>(p * N * 4));
          for (int64_t h = p / 2; h >= 1; h /= 2) em.ew(VecOp::Add, row, row, h * N, 0, row + static_cast<uint64_t>(h * N * 4));
          em.ew(VecOp::Mul, out, row, nb, 0, kscale);
        }
        if (valid < end && (valid > 0 || !s_.fused_topk)) em.dup(out + static_cast<uint64_t>(valid * 4), end - valid, -kInf);
        if (s_.fused_topk && valid > 0) fill[i] += npad;
      }
      if (cv_.via_ub) b.cross_set(Pipe::V, 2, CubeVectorSlots::free_flag(k));  // the slot is read
      else b.set_flag(Pipe::V, Pipe::Mte2, q);
      if (j % MB == MB - 1 || blk + 1 == un.b1) b.set_flag(Pipe::V, Pipe::Mte2, g), ++groups;
      if (s_.fused_topk) {
        // A query's batch ends with the group or with the last block it sees.
        for (int64_t i = 0; i < nm; ++i)
          if (fill[i] > 0 && (j % MB == MB - 1 || blk + 1 == std::min(un.b1, ceil_div(vis_[t0 + i], N)))) {
            em.arange(u_.idx, fill[i], static_cast<double>((blk - j % MB) * N));
            em.merge_batch(st[i], u_.keys[0] + static_cast<uint64_t>(i * MB * N * 4), u_.idx, fill[i]);
            fill[i] = 0;
          }
      } else {
        b.set_flag(Pipe::V, Pipe::Mte3, static_cast<int>(kb));
        b.wait_flag(Pipe::V, Pipe::Mte3, static_cast<int>(kb));
        copy_ub_to_gm(b, g_.scores + static_cast<uint64_t>((t0 * S + key0) * 4), S, u_.keys[kb], N, nm, nb, DType::Fp32);
        b.set_flag(Pipe::Mte3, Pipe::V, 1 + static_cast<int>(kb));
        kb ^= 1;
      }
    }
    if (!s_.fused_topk) {  // the columns no block computed, once per query block (its last split)
      if (un.split + 1 == qb.splits)
        for (int64_t i = 0; i < nm; ++i)
          for (int64_t c0 = qb.vis_max; c0 < S; c0 += fill_len(s_))
            copy_ub_to_gm(b, g_.scores + static_cast<uint64_t>(((t0 + i) * S + c0) * 4), S, u_.fill, S, 1,
                          std::min(fill_len(s_), S - c0), DType::Fp32);
      continue;
    }
    if (qb.splits == 1)  // into the free area: values, then indices
      for (int64_t i = 0; i < nm; ++i) {
        const uint64_t spare = st[i].area[1 - st[i].cur];
        em.extract_list(spare, spare + static_cast<uint64_t>(K * 4), em.list(st[i]));
      }
    b.set_flag(Pipe::V, Pipe::Mte3, kOut);
    b.wait_flag(Pipe::V, Pipe::Mte3, kOut);
    for (int64_t i = 0; i < nm; ++i) {
      const uint64_t row = static_cast<uint64_t>((t0 + i) * K * 4);
      if (qb.splits == 1) {
        const uint64_t spare = st[i].area[1 - st[i].cur];
        copy_ub_to_gm(b, g_.vals + row, K, spare, K, 1, K, DType::Fp32);
        copy_ub_to_gm(b, g_.idx + row, K, spare + static_cast<uint64_t>(K * 4), K, 1, K, DType::Int32);
      } else {
        const uint64_t at = lists_ + static_cast<uint64_t>(((t0 + i) * p_.max_splits + un.split) * K) * sim::kSortPairBytes;
        copy_ub_to_gm(b, at, 2 * K, em.list(st[i]), 2 * K, 1, 2 * K, DType::Fp32);
      }
    }
    b.set_flag(Pipe::Mte3, Pipe::V, kOut);
  }
  if (p_.stage2) stage2(b, c * cv_.aiv_per_aic + k);
  for (int q = 0; q < 5; ++q) b.wait_flag(Pipe::V, Pipe::Mte2, q);
  for (int q = 0; q < 3; ++q) b.wait_flag(Pipe::Mte3, Pipe::V, q);
}

void IndexerLowering::stage2(sim::CoreBuilder& b, int v) const {
  std::vector<std::pair<int64_t, int>> rows;  // (token, splits) of the query blocks split in two stages
  for (const QBlock& qb : p_.qblocks)
    if (qb.splits > 1)
      for (int64_t i = 0; i < qb.nq; ++i) rows.push_back({qb.t0 + i, qb.splits});
  const int64_t aivs = static_cast<int64_t>(p_.per_core.size()) * cv_.aiv_per_aic, R = static_cast<int64_t>(rows.size());
  TopkStage2 s2;
  s2.lists = lists_, s2.values = g_.vals, s2.indices = g_.idx, s2.k = s_.topk, s2.max_splits = p_.max_splits;
  s2.barrier = kBarrier, s2.sync = kSync, s2.out_event = kOut;
  s2.area[0] = u_.s2_area[0], s2.area[1] = u_.s2_area[1], s2.out = u_.s2_out;
  emit_topk_stage2(b, s2, {rows.begin() + R * v / aivs, rows.begin() + R * (v + 1) / aivs});
}

}  // namespace

sim::Program LightningIndexerKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  const Plan p = make_plan(s_, t_, std::max(1, hw.aiv_per_aic));
  const IndexerLowering low(s_, t_, hw, p);
  sim::Program prog;
  prog.name = name();
  prog.gm_footprint_bytes = low.footprint();
  const int cores = static_cast<int>(p.per_core.size()), A = std::max(1, hw.aiv_per_aic);
  // Room for each core's stream up front: a large program is built without reallocations.
  std::vector<size_t> room(static_cast<size_t>(cores), 64);
  for (int c = 0; c < cores; ++c)
    for (int u : p.per_core[static_cast<size_t>(c)])
      room[c] += static_cast<size_t>(24 * (p.units[u].b1 - p.units[u].b0) + 24 + p.qa * s_.heads);
  for (int c = 0; c < cores; ++c) {
    sim::CoreProgram cp{sim::CoreKind::Aic, c, {}, {}};
    cp.code.reserve(room[c]);
    sim::CoreBuilder b(cp, functional);
    low.aic(b, c);
    prog.cores.push_back(std::move(cp));
  }
  for (int c = 0; c < cores; ++c)
    for (int k = 0; k < A; ++k) {
      sim::CoreProgram cp{sim::CoreKind::Aiv, c * A + k, {}, {}};
      cp.code.reserve(room[c] * static_cast<size_t>(p.qa));
      sim::CoreBuilder b(cp, functional);
      low.aiv(b, c, k);
      prog.cores.push_back(std::move(cp));
    }
  return prog;
}

// ---- Kernel interface ----

std::string LightningIndexerKernel::name() const {
  return fmt::format("lightning_indexer_{}x{}_h{}x{}_k{}{}_{}{}", s_.tokens(), s_.max_keys(), s_.heads, s_.head_dim, s_.topk,
                     s_.ratio > 1 ? fmt::format("_r{}", s_.ratio) : "", sim::dtype_name(s_.dtype), s_.fused_topk ? "" : "_scores");
}

nlohmann::json LightningIndexerKernel::tiling_json() const {
  return {{"q_block", t_.q_block}, {"key_block", t_.key_block}, {"l1_blocks", t_.l1_blocks}, {"stages", t_.stages},
          {"slots", t_.slots}, {"merge_blocks", t_.merge_blocks}, {"splits", t_.splits}, {"cores", t_.cores}};
}

nlohmann::json LightningIndexerKernel::details() const {
  const Plan p = make_plan(s_, t_, 2);
  return {{"indexer", {{"batch", s_.keys.size()}, {"ratio", s_.ratio}, {"fused_topk", s_.fused_topk},
                       {"dtype", sim::dtype_name(s_.dtype)}, {"query_blocks", p.qblocks.size()}, {"units", p.units.size()},
                       {"key_blocks", p.items}, {"two_stage", p.stage2}}}};
}

std::vector<TensorInfo> LightningIndexerKernel::tensors() const {
  const Gm g = place(s_);
  const int64_t T = s_.tokens(), HI = s_.heads, SK = s_.total_keys();
  std::vector<TensorInfo> out{{"q", s_.dtype, T, HI * s_.head_dim, TensorLayout::RowMajor, g.q, false},
                              {"k", s_.dtype, SK, s_.head_dim, TensorLayout::RowMajor, g.k, false},
                              {"q_scale", DType::Fp32, T, HI, TensorLayout::RowMajor, g.qs, false},
                              {"k_scale", DType::Fp32, 1, SK, TensorLayout::RowMajor, g.ks, false},
                              {"w", DType::Fp32, T, HI, TensorLayout::RowMajor, g.w, false}};
  if (s_.fused_topk) {
    out.push_back({"indices", DType::Int32, T, s_.topk, TensorLayout::RowMajor, g.idx, true});
    out.push_back({"values", DType::Fp32, T, s_.topk, TensorLayout::RowMajor, g.vals, true});
  } else {
    out.push_back({"scores", DType::Fp32, T, s_.max_keys(), TensorLayout::RowMajor, g.scores, true});
  }
  return out;
}

double LightningIndexerKernel::flops() const {
  // Per visible (query, key): the HI dot products of DI, ReLU, weight and head sum, the k_scale product.
  const std::vector<int64_t> v = s_.visible();
  const double pairs = static_cast<double>(std::accumulate(v.begin(), v.end(), int64_t{0}));
  return pairs * (2.0 * s_.heads * s_.head_dim + 3.0 * s_.heads + 1.0);
}

double LightningIndexerKernel::compulsory_bytes() const {
  double bytes = 0;
  for (const auto& t : tensors()) bytes += static_cast<double>(t.rows * t.cols) * sim::dtype_bytes(t.dtype);
  return bytes;
}

double LightningIndexerKernel::estimated_instructions() const {
  // Mirrors the lowering (the GM hand-off of 2201, which costs a few more per block than L0C->UB).
  const Plan p = make_plan(s_, t_, 2);
  const double items = static_cast<double>(p.items), units = static_cast<double>(p.units.size()), qa = static_cast<double>(p.qa);
  const double tree = std::ceil(std::log2(static_cast<double>(s_.heads))), mb = static_cast<double>(t_.merge_blocks);
  const double subs = static_cast<double>(ceil_div(t_.key_block, s_.dtype == DType::Fp8 ? 256 : 128));
  const double aic = 12 + 4 * subs + 5.0 / static_cast<double>(t_.l1_blocks) + 4;
  const double batch = s_.fused_topk ? 3 + TopkEmitter::levels(t_.merge_blocks * t_.key_block) : 3;
  const double aiv = 10 + qa * (tree + 1) + (5 + qa * batch) / mb;
  const double unit = 12 + 2 * (8 + qa * s_.heads + qa * 4);
  return items * (aic + 2 * aiv) + units * unit + (p.stage2 ? 12.0 * s_.tokens() : 0) + static_cast<double>(p.per_core.size()) * 40;
}

int64_t LightningIndexerKernel::ub_bytes(const IndexerShape& s, const IndexerTiling& t, const sim::HardwareSpec& hw) {
  const int A = std::max(1, hw.aiv_per_aic);
  const int64_t qa = ceil_div(t.q_block, A);
  const int max_splits = s.fused_topk ? make_plan(s, t, A).max_splits : 1;
  const AivUb u = aiv_ub(s, t, hw.path(Path::L0CToUb).available, qa, max_splits);
  return static_cast<int64_t>(std::max(u.bytes, u.s2_bytes));
}

Status LightningIndexerKernel::can_implement(const sim::HardwareSpec& hw) const {
  const int64_t e = sim::dtype_bytes(s_.dtype), ka = k_align(s_.dtype), D = s_.head_dim;
  if (!hw.aic.cube_k0[static_cast<int>(s_.dtype)])
    return Status::bad("workload.dtype", fmt::format("{} has no {} cube; fp8 values are exact in bf16 (dtype: bf16)", hw.name,
                                                     sim::dtype_name(s_.dtype)));
  if (D % ka)
    return Status::bad("workload.head_dim", fmt::format("head_dim {} cannot be tiled by the {} cube: its K fractal holds 32 bytes, "
                                                        "so it must be a multiple of {}", D, sim::dtype_name(s_.dtype), ka));
  if (2 * D * 16 * e > hw.aic.l0b_bytes)
    return Status::bad("workload.head_dim", fmt::format("head_dim {} leaves no double-buffered 16-key tile in L0B ({} B)", D, hw.aic.l0b_bytes));
  if (s_.fused_topk && (s_.topk < 1 || s_.topk > s_.max_keys() || s_.topk > kMaxTopk))
    return Status::bad("workload.topk", fmt::format("topk {} must lie in 1..{} (the keys of the longest sequence, at most {})",
                                                    s_.topk, s_.max_keys(), kMaxTopk));
  if (t_.q_block < 1 || round_up(t_.q_block * s_.heads, 16) * round_up(D, ka) * e > hw.aic.l0a_bytes)
    return Status::bad("tiling.q_block", fmt::format("q_block {} x {} heads x head_dim {} must be >= 1 block and fit L0A ({} B)",
                                                     t_.q_block, s_.heads, D, hw.aic.l0a_bytes));
  if (t_.key_block < 32 || t_.key_block % 32)
    return Status::bad("tiling.key_block", fmt::format("key_block {} must be a multiple of 32 (sort32 blocks)", t_.key_block));
  const AicLayout l = aic_layout(s_, t_, hw);
  if (static_cast<int64_t>(l.l0c_buf) > hw.aic.l0c_bytes)
    return Status::bad("tiling.key_block", fmt::format("the fp32 score tile {} x {} needs {} B of L0C, more than its {} B",
                                                       t_.q_block * s_.heads, t_.key_block, l.l0c_buf, hw.aic.l0c_bytes));
  if (t_.stages < 1 || t_.stages >= hw.sync.event_ids || l.l1_bytes > hw.aic.l1_bytes)
    return Status::bad("tiling.stages", fmt::format("stages must be 1..{} and Q + stages x K tiles of l1_blocks key blocks ({} B) fit L1 ({} B)",
                                                    hw.sync.event_ids - 1, l.l1_bytes, hw.aic.l1_bytes));
  if (hw.sync.event_ids < 5) return Status::bad("hardware", "the AIVs use five V<->MTE2 events");
  const CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t_.slots);
  if (Status st = cv.check(hw); !st.ok) return st;
  if (hw.sync.cross_flag_ids <= kBarrier) return Status::bad("hardware", "the all-AIV barrier needs a cross-core flag beyond the hand-off's");
  if (t_.merge_blocks < 1 || (s_.fused_topk && t_.merge_blocks * t_.key_block > kMaxTopkCap))
    return Status::bad("tiling.merge_blocks", fmt::format("merge_blocks x key_block = {} candidates must be 1 block .. {} (one MrgSort queue)",
                                                          t_.merge_blocks * t_.key_block, kMaxTopkCap));
  if (t_.l1_blocks < 1) return Status::bad("tiling.l1_blocks", "l1_blocks must be >= 1");
  if (t_.splits < 1 || (s_.fused_topk && t_.splits > 1 && s_.topk > kMaxMergeQueue))
    return Status::bad("tiling.splits", fmt::format("splits must be >= 1, and 1 when topk {} exceeds one MrgSort queue ({})",
                                                    s_.topk, kMaxMergeQueue));
  if (t_.cores < 1 || t_.cores > hw.num_aic)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} on {}, found {}", hw.num_aic, hw.name, t_.cores));
  for (auto [op, dt] : {std::pair{VecOp::Relu, DType::Fp32}, {VecOp::Mul, DType::Fp32}, {VecOp::Add, DType::Fp32},
                        {VecOp::Dup, DType::Fp32}, {VecOp::Dup, DType::Int32}, {VecOp::Arange, DType::Int32}, {VecOp::Maxs, DType::Int32},
                        {VecOp::Sort32, DType::Fp32}, {VecOp::MrgSort, DType::Fp32}, {VecOp::Extract, DType::Fp32}})
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(dt)] > 0))
      return Status::bad("hardware", fmt::format("{} has no {} vector {}", hw.name, sim::dtype_name(dt), sim::vec_op_name(op)));
  const int64_t ub = ub_bytes(s_, t_, hw);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.key_block", fmt::format("q_block {} and key_block {} (merge_blocks {}, topk {}) need {} B of UB per AIV, "
                                                       "more than its {} B", t_.q_block, t_.key_block, t_.merge_blocks, s_.topk, ub,
                                                       hw.aiv.ub_bytes));
  return Status::good();
}

// ---- Inputs and references ----

std::vector<double> LightningIndexerKernel::make_input(size_t index, const InputSpec& spec) const {
  const int64_t T = s_.tokens(), HI = s_.heads, D = s_.head_dim;
  const uint64_t seed = spec.seed * 0x9E3779B97F4A7C15ull + (index % 2) + 11;  // q and q_scale share a stream, as k and k_scale do
  if (index == 4) {  // w: weights_proj output times HI^-0.5 DI^-0.5, in fp32
    Rng rng(seed);
    std::vector<double> w(static_cast<size_t>(T * HI));
    for (auto& x : w) x = static_cast<float>(rng.normal() * spec.scale / std::sqrt(static_cast<double>(HI * D)));
    return w;
  }
  const bool q = index == 0 || index == 2;
  const ref::Fp8Rows z = ref::random_fp8_rows(q ? T * HI : s_.total_keys(), D, spec.distribution,
                                              !q && spec.distribution == "ties", spec.scale, seed);
  return index < 2 ? z.values : z.scales;
}

Golden LightningIndexerKernel::reference(const std::vector<std::vector<double>>& inputs) const { return references(inputs, {})[0]; }

std::vector<Golden> LightningIndexerKernel::references(const std::vector<std::vector<double>>& in,
                                                       const std::vector<std::vector<double>>& device) const {
  ref::IndexerOperands op;
  op.tokens = s_.tokens(), op.heads = s_.heads, op.head_dim = s_.head_dim, op.cols = s_.max_keys();
  op.q = in[0].data(), op.k = in[1].data(), op.q_scale = in[2].data(), op.k_scale = in[3].data(), op.w = in[4].data();
  op.key_base = s_.key_base(), op.visible = s_.visible();
  Golden g;
  ref::indexer_scores(op, &g.exact, &g.same_precision);
  if (!s_.fused_topk) return {g};
  auto [idx, val] = topk_goldens(op.tokens, op.cols, s_.topk, g.exact, g.same_precision, device.empty() ? nullptr : &device[0]);
  return {idx, val};
}

// ---- Config ----

IndexerTiling default_indexer_tiling(const IndexerShape& s, const sim::HardwareSpec& hw) {
  IndexerTiling t;
  const int A = std::max(1, hw.aiv_per_aic);
  const int64_t most_queries = s.queries.empty() ? 1 : *std::max_element(s.queries.begin(), s.queries.end());
  t.q_block = std::min(A * ceil_div(64, s.heads * A), round_up(most_queries, A));
  while (t.q_block > 1 && round_up(t.q_block * s.heads, 16) * round_up(s.head_dim, 32) * sim::dtype_bytes(s.dtype) > hw.aic.l0a_bytes)
    --t.q_block;
  t.cores = hw.num_aic;
  const auto fits = [&](const IndexerTiling& x) { return LightningIndexerKernel::ub_bytes(s, x, hw) <= hw.aiv.ub_bytes; };
  for (int64_t kb = 512; kb >= 32; kb /= 2) {
    t.key_block = kb;
    // As many blocks per merge batch (and k_scale group) as topk (unfused: 2048 keys) allows and UB holds.
    for (t.merge_blocks = std::max<int64_t>(1, std::min(s.fused_topk ? s.topk : 2048, kMaxTopkCap) / kb); t.merge_blocks > 1 && !fits(t);)
      --t.merge_blocks;
    for (t.l1_blocks = 2; t.l1_blocks > 1 && aic_layout(s, t, hw).l1_bytes > hw.aic.l1_bytes;) --t.l1_blocks;
    const AicLayout l = aic_layout(s, t, hw);
    if (static_cast<int64_t>(l.l0c_buf) * 2 <= hw.aic.l0c_bytes && l.l1_bytes <= hw.aic.l1_bytes && fits(t)) break;
  }
  // Stage 2 per split: one merge of the list (k pairs) against a key block's ReLU / weight / head
  // sum (~3 HI key_block / rate) and its sort (~3 key_block pairs / rate).
  const double vrate = hw.aiv.vec_rate[static_cast<int>(VecOp::Add)][static_cast<int>(DType::Fp32)];
  const double srate = std::max(1e-9, hw.aiv.vec_rate[static_cast<int>(VecOp::MrgSort)][static_cast<int>(DType::Fp32)]);
  const double block = 3.0 * s.heads * t.key_block / std::max(1e-9, vrate) + 3.0 * t.key_block / srate;
  const double split = s.fused_topk ? 1.5 * s.topk / srate * t.q_block / A : 0.0;
  const Plan one = make_plan(s, t, A);
  int64_t blocks = 1;
  for (const QBlock& q : one.qblocks) blocks = std::max(blocks, q.blocks);
  t.splits = s.fused_topk && s.topk > kMaxMergeQueue
                 ? 1 : choose_splits(static_cast<int64_t>(one.qblocks.size()), blocks, hw.num_aic, split / block);
  while (t.splits > 1 && !fits(t)) --t.splits;  // stage 2 holds splits lists in UB
  t.cores = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(make_plan(s, t, A).units.size()), 1, hw.num_aic));
  return t;
}

namespace {
// An int, or a list of one int per sequence.
std::vector<int64_t> per_sequence(const YamlNode& n, size_t batch) {
  if (n.is_seq()) {
    std::vector<int64_t> v = n.as_int_list();
    if (v.size() != batch) n.fail(fmt::format("expected {} values (one per sequence of the batch), found {}", batch, v.size()));
    for (int64_t x : v)
      if (x < 0) n.fail("expected values >= 0");
    return v;
  }
  return std::vector<int64_t>(batch, n.as_positive_int());
}
}  // namespace

std::unique_ptr<Kernel> make_lightning_indexer(const YamlNode& w, const std::optional<YamlNode>& tiling,
                                               const sim::HardwareSpec& hw) {
  IndexerShape s;
  size_t batch = 1;
  if (auto x = w.get("batch")) batch = static_cast<size_t>(x->as_positive_int());
  const int64_t tokens = w.at("tokens").as_positive_int();
  if (tokens % static_cast<int64_t>(batch)) w.at("tokens").fail(fmt::format("{} tokens do not split evenly over {} sequences", tokens, batch));
  s.queries.assign(batch, tokens / static_cast<int64_t>(batch));
  s.keys = per_sequence(w.at("keys"), batch);
  s.topk = w.at("topk").as_positive_int();
  if (auto x = w.get("heads")) s.heads = x->as_positive_int();
  if (auto x = w.get("head_dim")) s.head_dim = x->as_positive_int();
  if (auto x = w.get("ratio")) s.ratio = x->as_positive_int();
  if (auto x = w.get("fused_topk")) s.fused_topk = x->as_bool();
  s.dtype = indexer_dtype_for(hw);
  if (auto x = w.get("dtype")) s.dtype = *sim::dtype_from_name(x->as_enum({"fp8", "bf16"}));
  for (int64_t k : s.keys) s.context.push_back(k * s.ratio);
  if (auto x = w.get("context")) s.context = per_sequence(*x, batch);
  for (size_t b = 0; b < batch; ++b) {
    if (s.context[b] / s.ratio != s.keys[b])
      w.at(w.has("context") ? "context" : "keys").fail(fmt::format("sequence {}: {} tokens at ratio {} give {} keys, not {}", b, s.context[b],
                                                                    s.ratio, s.context[b] / s.ratio, s.keys[b]));
    if (s.queries[b] > s.context[b])
      w.at("tokens").fail(fmt::format("sequence {} has {} queries but only {} tokens of context", b, s.queries[b], s.context[b]));
  }
  if (s.fused_topk && s.topk > s.max_keys())
    w.at("topk").fail(fmt::format("topk {} exceeds the {} keys of the longest sequence", s.topk, s.max_keys()));
  if (s.heads * s.head_dim > (int64_t(1) << 20) || s.total_keys() > (int64_t(1) << 30) || tokens > (int64_t(1) << 24))
    w.fail("heads x head_dim beyond 2^20, keys beyond 2^30 or tokens beyond 2^24 do not fit the instruction fields");
  IndexerTiling t = default_indexer_tiling(s, hw);
  if (tiling) {
    if (auto x = tiling->get("q_block")) t.q_block = x->as_positive_int();
    if (auto x = tiling->get("key_block")) t.key_block = x->as_positive_int();
    if (auto x = tiling->get("l1_blocks")) t.l1_blocks = x->as_positive_int();
    if (auto x = tiling->get("stages")) t.stages = static_cast<int>(x->as_positive_int());
    if (auto x = tiling->get("slots")) t.slots = static_cast<int>(x->as_positive_int());
    if (auto x = tiling->get("merge_blocks")) t.merge_blocks = x->as_positive_int();
    if (auto x = tiling->get("splits")) t.splits = static_cast<int>(x->as_positive_int());
    if (auto x = tiling->get("cores")) t.cores = static_cast<int>(x->as_positive_int());
  }
  return std::make_unique<LightningIndexerKernel>(std::move(s), t, !tiling.has_value());
}

}  // namespace npusim::kernels
