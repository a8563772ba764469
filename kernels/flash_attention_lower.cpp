// Lowering of the flash attention kernel (flash_attention.hpp): the AIC stream (K / V loads, C1,
// C2 and the FIXPIPE hand-offs); the AIV streams and the split merge are in flash_attention_aiv.cpp.
#include "kernels/flash_attention_lowering.hpp"

namespace npusim::kernels {
namespace fa_lower {

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

}  // namespace fa_lower

sim::Program FlashAttentionKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  return fa_lower::Lowering(s_, t_, hw, functional, name()).run();
}

}  // namespace npusim::kernels
