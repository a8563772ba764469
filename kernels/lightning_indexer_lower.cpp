// The lightning indexer's AIC and AIV programs, from the plan of lightning_indexer_impl.hpp.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/lightning_indexer_impl.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/topk.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::TileRef;
using sim::VecOp;
using namespace indexer_impl;

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

}  // namespace npusim::kernels
