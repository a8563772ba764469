// Lowering of the flash attention kernel, AIV side: V1 (online softmax), V2 (the O update), the
// item epilogue and the split merge (flash_attention_lowering.hpp has the shared pieces).
#include "kernels/flash_attention_lowering.hpp"

namespace npusim::kernels::fa_lower {

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

}  // namespace npusim::kernels::fa_lower
