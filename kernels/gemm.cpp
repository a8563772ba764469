#include "kernels/gemm.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>

#include "common/numerics.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::kernels {

using sim::CoreKind;
using sim::DType;
using sim::Path;
using sim::Pipe;

namespace {

int elt_bytes(DType d) { return sim::dtype_bytes(d); }
// K granularity of one cube fractal row: 32 bytes of input.
int64_t k_align(DType d) { return 32 / elt_bytes(d); }

TensorLayout parse_layout(const YamlNode& n, bool allow_nz) {
  std::vector<std::string> choices{"row_major", "col_major"};
  if (allow_nz) choices.push_back("nz");
  std::string v = n.as_enum(choices);
  return v == "row_major" ? TensorLayout::RowMajor : v == "col_major" ? TensorLayout::ColMajor : TensorLayout::Nz;
}

const char* layout_name(TensorLayout l) {
  return l == TensorLayout::RowMajor ? "row_major" : l == TensorLayout::ColMajor ? "col_major" : "nz";
}

std::array<int64_t, 3> parse_triple(const YamlNode& n) {
  auto v = n.as_int_list();
  if (v.size() != 3) n.fail(fmt::format("expected [M, N, K] (3 integers), found {} values", v.size()));
  for (auto x : v)
    if (x <= 0) n.fail(fmt::format("tile sizes must be > 0, found {}", x));
  return {v[0], v[1], v[2]};
}

}  // namespace

std::pair<int64_t, int64_t> swizzle_block(int64_t idx, int64_t m_blocks, int64_t n_blocks, int offset,
                                          int direction) {
  // Group `offset` block rows (direction 0) or columns (1) and walk them serpentine, so cores
  // working at the same time share A rows and B columns in L2.
  int64_t outer = direction == 0 ? m_blocks : n_blocks;
  int64_t inner = direction == 0 ? n_blocks : m_blocks;
  int64_t group = idx / (offset * inner);
  int64_t in_group = idx % (offset * inner);
  int64_t rows = std::min<int64_t>(offset, outer - group * offset);
  int64_t o = group * offset + in_group % rows;
  int64_t i = in_group / rows;
  if (group % 2 == 1) i = inner - i - 1;
  return direction == 0 ? std::pair{o, i} : std::pair{i, o};
}

GemmTiling default_gemm_tiling(const GemmShape& s, const sim::HardwareSpec& hw) {
  GemmTiling t;
  const int64_t k1 = 512 / elt_bytes(s.in), k0 = 128 / elt_bytes(s.in);  // 256 / 64 for fp16
  bool tall = s.m > s.n;
  t.m1 = tall ? 256 : 128;
  t.n1 = tall ? 128 : 256;
  t.m1 = std::min(t.m1, round_up(s.m, 16));
  t.n1 = std::min(t.n1, round_up(s.n, 16));
  t.k1 = std::min(k1, round_up(s.k, k_align(s.in)));
  t.m0 = t.m1;
  t.n0 = t.n1;
  t.k0 = std::min(k0, t.k1);
  while (t.k1 % t.k0) t.k0 -= k_align(s.in);
  t.swizzle_offset = 3;
  t.swizzle_direction = s.n > s.m ? 1 : 0;
  t.stages = 2;
  t.cores = static_cast<int>(std::min<int64_t>(hw.num_aic, ceil_div(s.m, t.m1) * ceil_div(s.n, t.n1)));
  return t;
}

std::string GemmKernel::name() const {
  return fmt::format("gemm_{}x{}x{}_{}", s_.m, s_.n, s_.k, sim::dtype_name(s_.in));
}

nlohmann::json GemmKernel::tiling_json() const {
  return {{"l1", {t_.m1, t_.n1, t_.k1}},
          {"l0", {t_.m0, t_.n0, t_.k0}},
          {"swizzle", {{"offset", t_.swizzle_offset}, {"direction", t_.swizzle_direction}}},
          {"stages", t_.stages},
          {"cores", t_.cores},
          {"layout", {{"a", layout_name(s_.a)}, {"b", layout_name(s_.b)}}}};
}

double GemmKernel::compulsory_bytes() const {
  return static_cast<double>(s_.m * s_.k + s_.k * s_.n) * elt_bytes(s_.in) +
         static_cast<double>(s_.m * s_.n) * elt_bytes(s_.out);
}

double GemmKernel::estimated_instructions() const {
  const double blocks = double(ceil_div(s_.m, t_.m1)) * ceil_div(s_.n, t_.n1);
  const double k1_steps = double(ceil_div(s_.k, t_.k1));
  const double l0_steps = double(ceil_div(t_.k1, t_.k0)) * ceil_div(t_.m1, t_.m0) * ceil_div(t_.n1, t_.n0);
  // Per L1 step: 4 on MTE2, 2 on MTE1; per L0 step: 4 on MTE1, 3 on M; per block: 5 for the
  // output; per core: the flag prologue and epilogue.
  const double cores = std::min<double>(t_.cores, blocks);
  return blocks * (k1_steps * (6 + 7 * l0_steps) + 5) + cores * 2 * (t_.stages + 4);
}

Status GemmKernel::can_implement(const sim::HardwareSpec& hw) const { return check_gemm_tiling(s_, t_, hw); }

Status check_gemm_tiling(const GemmShape& s_, const GemmTiling& t_, const sim::HardwareSpec& hw) {
  const int64_t e = elt_bytes(s_.in), ka = k_align(s_.in);
  if (!hw.aic.cube_k0[static_cast<int>(s_.in)])
    return Status::bad("workload.dtype", fmt::format("{} has no {} cube", hw.name, sim::dtype_name(s_.in)));
  if (t_.m1 % 16 || t_.n1 % 16 || t_.k1 % ka)
    return Status::bad("tiling.l1", fmt::format("L1 tile [{}, {}, {}] must have M and N multiples of 16 and K a multiple of {} (32-byte fractal rows of {})",
                                                t_.m1, t_.n1, t_.k1, ka, sim::dtype_name(s_.in)));
  if (t_.m0 % 16 || t_.n0 % 16 || t_.k0 % ka)
    return Status::bad("tiling.l0", fmt::format("L0 tile [{}, {}, {}] must have M and N multiples of 16 and K a multiple of {}",
                                                t_.m0, t_.n0, t_.k0, ka));
  if (t_.m1 % t_.m0 || t_.n1 % t_.n0 || t_.k1 % t_.k0)
    return Status::bad("tiling.l0", fmt::format("L0 tile [{}, {}, {}] must divide the L1 tile [{}, {}, {}]", t_.m0, t_.n0,
                                                t_.k0, t_.m1, t_.n1, t_.k1));
  if (t_.stages < 1 || t_.stages > hw.sync.event_ids)
    return Status::bad("tiling.stages", fmt::format("stages must be 1..{} (one event id each), found {}", hw.sync.event_ids, t_.stages));
  int64_t l1 = t_.stages * (t_.m1 * t_.k1 + t_.k1 * t_.n1) * e;
  if (l1 > hw.aic.l1_bytes)
    return Status::bad("tiling.l1", fmt::format("{} stages x (A {}x{} + B {}x{}) x {} B = {} B exceed L1 ({} B)", t_.stages, t_.m1,
                                                t_.k1, t_.k1, t_.n1, e, l1, hw.aic.l1_bytes));
  int64_t l0a = 2 * t_.m0 * t_.k0 * e, l0b = 2 * t_.k0 * t_.n0 * e;
  if (l0a > hw.aic.l0a_bytes)
    return Status::bad("tiling.l0", fmt::format("double-buffered A tile 2 x {}x{} x {} B = {} B exceeds L0A ({} B)", t_.m0,
                                                t_.k0, e, l0a, hw.aic.l0a_bytes));
  if (l0b > hw.aic.l0b_bytes)
    return Status::bad("tiling.l0", fmt::format("double-buffered B tile 2 x {}x{} x {} B = {} B exceeds L0B ({} B)", t_.k0,
                                                t_.n0, e, l0b, hw.aic.l0b_bytes));
  int64_t l0c = t_.m1 * t_.n1 * 4;
  if (l0c > hw.aic.l0c_bytes)
    return Status::bad("tiling.l1", fmt::format("the fp32 accumulator of the L1 tile {}x{} x 4 B = {} B exceeds L0C ({} B)",
                                                t_.m1, t_.n1, l0c, hw.aic.l0c_bytes));
  if (t_.cores < 1 || t_.cores > hw.num_aic)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} on {}, found {}", hw.num_aic, hw.name, t_.cores));
  if (t_.swizzle_offset < 1 || (t_.swizzle_direction != 0 && t_.swizzle_direction != 1))
    return Status::bad("tiling.swizzle", fmt::format("swizzle offset must be >= 1 and direction 0 or 1, found {{offset: {}, direction: {}}}",
                                                     t_.swizzle_offset, t_.swizzle_direction));
  const Path out_path = Path::L0CToGmNz2Nd;
  if (!hw.path(out_path).available || !hw.path(Path::GmToL1Nd2Nz).available)
    return Status::bad("hardware", "the preset lacks the GM<->L1/L0C paths a GEMM needs");
  return Status::good();
}

namespace {
// GM placement shared by lower() and tensors(): A, then B, then C, each 512-byte aligned.
struct GemmGm {
  uint64_t a, b, c, footprint;
};
GemmGm place(const GemmShape& s) {
  const int64_t e = sim::dtype_bytes(s.in);
  GmAllocator gm;
  GemmGm g{};
  g.a = gm.alloc(s.m * s.k * e);
  g.b = gm.alloc((s.b == TensorLayout::Nz ? round_up(s.k, 16) * round_up(s.n, 16) : s.k * s.n) * e);
  g.c = gm.alloc(s.m * s.n * sim::dtype_bytes(s.out));
  g.footprint = gm.footprint();
  return g;
}
}  // namespace

std::vector<TensorInfo> GemmKernel::tensors() const {
  GemmGm g = place(s_);
  return {{"a", s_.in, s_.m, s_.k, s_.a, g.a, false},
          {"b", s_.in, s_.k, s_.n, s_.b, g.b, false},
          {"c", s_.out, s_.m, s_.n, TensorLayout::RowMajor, g.c, true}};
}

sim::Program lower_gemm_blocks(const GemmShape& s_, const GemmTiling& t_, const GemmBlocks& blocks,
                               const sim::HardwareSpec& hw, bool functional) {
  using sim::TileLayout;
  using sim::TileRef;
  const int64_t M = blocks.a_rows, N = s_.n, K = s_.k;
  const int64_t e = elt_bytes(s_.in), eo = elt_bytes(s_.out), ka = k_align(s_.in);
  const int64_t kp = round_up(K, 16);
  const sim::DType acc = s_.in == DType::Int8 ? DType::Int32 : DType::Fp32;

  sim::Program prog;
  prog.name = blocks.name;
  prog.gm_footprint_bytes = blocks.footprint;
  const int64_t per_item = blocks.item_blocks, nitems = static_cast<int64_t>(blocks.list.size()) / per_item;
  const int cores = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t_.cores, nitems)));
  const int l0c_bufs = 2 * t_.m1 * t_.n1 * 4 <= hw.aic.l0c_bytes ? 2 : 1;
  // On-chip placement: L1 stage s holds A (m1 x k1) then B (k1 x n1); L0A/L0B/L0C are split in
  // halves (or kept whole) for ping-pong.
  const uint64_t l1_stage = static_cast<uint64_t>(t_.m1 * t_.k1 + t_.k1 * t_.n1) * e;
  const uint64_t l0a_half = static_cast<uint64_t>(t_.m0 * t_.k0) * e, l0b_half = static_cast<uint64_t>(t_.k0 * t_.n0) * e;
  const uint64_t l0c_buf = static_cast<uint64_t>(t_.m1 * t_.n1) * 4;
  auto r16 = [](int64_t x) { return static_cast<uint32_t>(round_up(x, 16)); };

  for (int c = 0; c < cores; ++c) {
    sim::CoreProgram cp{CoreKind::Aic, c, {}, {}};
    sim::CoreBuilder b(cp, functional);
    // Per-group bookkeeping on the scalar unit (block ranges of every group, empty ones too).
    if (blocks.scalar_cycles_per_core > 0) b.scalar(blocks.scalar_cycles_per_core);
    for (int s = 0; s < t_.stages; ++s) b.set_flag(Pipe::Mte1, Pipe::Mte2, s);
    for (int p = 0; p < 2; ++p) b.set_flag(Pipe::M, Pipe::Mte1, p);
    for (int q = 0; q < l0c_bufs; ++q) b.set_flag(Pipe::Fixpipe, Pipe::M, q);
    int64_t kiter = 0, l0iter = 0, biter = 0, n = 0;
    for (int64_t item = c; item < nitems; item += cores, ++n) {
      if (blocks.before_item) blocks.before_item(b, c, n);
      for (int64_t bi = item * per_item; bi < (item + 1) * per_item; ++bi, ++biter) {
        const GemmBlock& blk = blocks.list[static_cast<size_t>(bi)];
        const int64_t mb = blk.mb, nb = blk.nb;
        const int cbuf = static_cast<int>(biter % l0c_bufs);
        const TileRef c_tile{cbuf * l0c_buf, r16(mb), 0, 0, TileLayout::Nz, acc};
        bool first_mmad = true;
        for (int64_t kk = 0; kk < K; kk += t_.k1, ++kiter) {
          const int64_t kb = std::min(t_.k1, K - kk);
          const int s = static_cast<int>(kiter % t_.stages);
          const TileRef l1_a{s * l1_stage, r16(mb), 0, 0, TileLayout::Nz, s_.in};
          const TileRef l1_b{s * l1_stage + static_cast<uint64_t>(t_.m1 * t_.k1) * e,
                             r16(kb),
                             0,
                             0,
                             TileLayout::Nz,
                             s_.in};
          b.wait_flag(Pipe::Mte1, Pipe::Mte2, s);
          // A tile (mb x kb), converted ND -> NZ on the way into L1.
          sim::Operands oa;
          oa.rows = uint32_t(mb), oa.cols = uint32_t(kb), oa.dst = l1_a;
          sim::GmRegion ra;
          if (s_.a == TensorLayout::RowMajor) {
            ra = {blocks.a + (blk.row0 * K + kk) * e, uint32_t(mb), uint32_t(kb * e),
                  uint64_t(K * e)};
            oa.src = {ra.addr, uint32_t(K), 0, 0, TileLayout::Nd, s_.in};
          } else {
            ra = {blocks.a + (kk * M + blk.row0) * e, uint32_t(kb), uint32_t(mb * e),
                  uint64_t(M * e)};
            oa.src = {ra.addr, uint32_t(M), 0, 0, TileLayout::NdT, s_.in};
          }
          b.copy(Path::GmToL1Nd2Nz, uint32_t(mb * kb * e), ra, oa);
          // B tile (kb x nb).
          sim::Operands ob;
          ob.rows = uint32_t(kb), ob.cols = uint32_t(nb), ob.dst = l1_b;
          if (s_.b == TensorLayout::Nz) {
            // zN: each 16-column strip holds K x 16 elements contiguously.
            int64_t strips = ceil_div(nb, 16), rowb = round_up(kb, 16) * 16 * e;
            sim::GmRegion rb{blk.b + ((blk.col0 / 16) * kp * 16 + kk * 16) * e, uint32_t(strips),
                             uint32_t(rowb), uint64_t(kp * 16 * e)};
            ob.src = {blk.b, uint32_t(kp), uint32_t(kk), uint32_t(blk.col0), TileLayout::Nz, s_.in};
            b.copy(Path::GmToL1, uint32_t(strips * rowb), rb, ob);
          } else {
            sim::GmRegion rb;
            if (s_.b == TensorLayout::RowMajor) {
              rb = {blk.b + (kk * N + blk.col0) * e, uint32_t(kb), uint32_t(nb * e),
                    uint64_t(N * e)};
              ob.src = {rb.addr, uint32_t(N), 0, 0, TileLayout::Nd, s_.in};
            } else {
              rb = {blk.b + (blk.col0 * K + kk) * e, uint32_t(nb), uint32_t(kb * e),
                    uint64_t(K * e)};
              ob.src = {rb.addr, uint32_t(K), 0, 0, TileLayout::NdT, s_.in};
            }
            b.copy(Path::GmToL1Nd2Nz, uint32_t(kb * nb * e), rb, ob);
          }
          b.set_flag(Pipe::Mte2, Pipe::Mte1, s);
          b.wait_flag(Pipe::Mte2, Pipe::Mte1, s);
          for (int64_t ks = 0; ks < kb; ks += t_.k0) {
            const int64_t kq = std::min(t_.k0, kb - ks), kqp = round_up(kq, ka);
            for (int64_t ms = 0; ms < mb; ms += t_.m0) {
              const int64_t ma = std::min(t_.m0, mb - ms);
              for (int64_t ns = 0; ns < nb; ns += t_.n0, ++l0iter) {
                const int64_t na = std::min(t_.n0, nb - ns);
                const int p = static_cast<int>(l0iter % 2);
                const TileRef l0a{p * l0a_half, r16(ma), 0, 0, TileLayout::Nz, s_.in};
                const TileRef l0b{p * l0b_half, r16(kq), 0, 0, TileLayout::Nz, s_.in};
                b.wait_flag(Pipe::M, Pipe::Mte1, p);
                sim::Operands la, lb, mm;
                la.src = l1_a, la.src.row0 = uint32_t(ms), la.src.col0 = uint32_t(ks), la.dst = l0a;
                la.rows = uint32_t(ma), la.cols = uint32_t(kq);
                b.copy(Path::L1ToL0A, uint32_t(round_up(ma, 16) * kqp * e), {}, la);
                lb.src = l1_b, lb.src.row0 = uint32_t(ks), lb.src.col0 = uint32_t(ns), lb.dst = l0b;
                lb.rows = uint32_t(kq), lb.cols = uint32_t(na);
                b.copy(Path::L1ToL0B, uint32_t(kqp * round_up(na, 16) * e), {}, lb);
                b.set_flag(Pipe::Mte1, Pipe::M, p);
                b.wait_flag(Pipe::Mte1, Pipe::M, p);
                if (first_mmad) {
                  b.wait_flag(Pipe::Fixpipe, Pipe::M, cbuf);  // L0C buffer drained by FIXPIPE
                  first_mmad = false;
                }
                mm.src = l0a, mm.src2 = l0b, mm.dst = c_tile;
                mm.dst.row0 = uint32_t(ms), mm.dst.col0 = uint32_t(ns);
                mm.accumulate = kk > 0 || ks > 0;
                b.mmad(uint32_t(ma), uint32_t(na), uint32_t(kq), s_.in, mm);
                b.set_flag(Pipe::M, Pipe::Mte1, p);
              }
            }
          }
          b.set_flag(Pipe::Mte1, Pipe::Mte2, s);  // L1 stage consumed
        }
        b.set_flag(Pipe::M, Pipe::Fixpipe, cbuf);
        b.wait_flag(Pipe::M, Pipe::Fixpipe, cbuf);
        if (blocks.write_c) {
          blocks.write_c(b, c, n, blk, c_tile);
        } else {
          sim::Operands oc;
          oc.rows = uint32_t(mb), oc.cols = uint32_t(nb), oc.src = c_tile;
          oc.dst = {blk.c, uint32_t(blk.ldc), 0, 0, TileLayout::Nd, s_.out};
          b.copy(Path::L0CToGmNz2Nd, uint32_t(mb * nb * eo),
                 sim::GmRegion{blk.c, uint32_t(mb), uint32_t(nb * eo), uint64_t(blk.ldc * eo)}, oc);
        }
        b.set_flag(Pipe::Fixpipe, Pipe::M, cbuf);
      }
      if (blocks.after_item) blocks.after_item(b, c, n);
    }
    // Consume the flags primed at the start so every event is balanced.
    for (int s = 0; s < t_.stages; ++s) b.wait_flag(Pipe::Mte1, Pipe::Mte2, s);
    for (int p = 0; p < 2; ++p) b.wait_flag(Pipe::M, Pipe::Mte1, p);
    for (int q = 0; q < l0c_bufs; ++q) b.wait_flag(Pipe::Fixpipe, Pipe::M, q);
    prog.cores.push_back(std::move(cp));
  }
  return prog;
}


sim::Program GemmKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  const GemmGm g = place(s_);
  GemmBlocks blocks;
  blocks.name = name();
  blocks.a = g.a, blocks.a_rows = s_.m, blocks.footprint = g.footprint;
  const int64_t mblocks = ceil_div(s_.m, t_.m1), nblocks = ceil_div(s_.n, t_.n1), eo = elt_bytes(s_.out);
  for (int64_t i = 0; i < mblocks * nblocks; ++i) {
    auto [mi, ni] = swizzle_block(i, mblocks, nblocks, t_.swizzle_offset, t_.swizzle_direction);
    const int64_t row0 = mi * t_.m1, col0 = ni * t_.n1;
    blocks.list.push_back({row0, std::min(t_.m1, s_.m - row0), col0, std::min(t_.n1, s_.n - col0), g.b,
                           g.c + static_cast<uint64_t>((row0 * s_.n + col0) * eo), s_.n});
  }
  return lower_gemm_blocks(s_, t_, blocks, hw, functional);
}

Golden GemmKernel::reference(const std::vector<std::vector<double>>& in) const {
  const int64_t M = s_.m, N = s_.n, K = s_.k;
  Golden g;
  g.exact.assign(static_cast<size_t>(M * N), 0.0);
  ref::gemm(M, N, K, in[0].data(), in[1].data(), g.exact.data());
  if (s_.in == DType::Int8) {
    g.same_precision = g.exact;  // integer accumulation is exact
    return g;
  }
  // The device's rounding points: fp32 products and accumulation, one rounding to the output type.
  std::vector<float> a(in[0].begin(), in[0].end()), b(in[1].begin(), in[1].end()), c(static_cast<size_t>(M * N));
  ref::gemm(M, N, K, a.data(), b.data(), c.data());
  g.same_precision.resize(c.size());
  const num::Format out = sim::number_format(s_.out);
  for (size_t i = 0; i < c.size(); ++i) g.same_precision[i] = num::round_to(out, c[i]);
  return g;
}

GemmShape parse_gemm_shape(const YamlNode& w, const sim::HardwareSpec& hw, bool with_m) {
  GemmShape s;
  if (with_m) s.m = w.at("m").as_positive_int();
  s.n = w.at("n").as_positive_int();
  s.k = w.at("k").as_positive_int();
  auto dt = [&](const YamlNode& n, std::vector<std::string> choices) {
    return *sim::dtype_from_name(n.as_enum(choices));
  };
  s.in = dt(w.at("dtype"), {"fp16", "bf16", "fp32", "int8", "fp8"});
  if (!hw.aic.cube_k0[static_cast<int>(s.in)])
    w.at("dtype").fail(fmt::format("{} has no {} cube (supported: see `npusim hw show {}`)", hw.name,
                                   sim::dtype_name(s.in), hw.name));
  s.out = s.in == DType::Int8 ? DType::Int32 : s.in;
  if (auto o = w.get("out_dtype")) {
    s.out = dt(*o, {"fp16", "bf16", "fp32", "int8", "int32"});
    // What FIXPIPE can carry out of the accumulator: fp32 accumulators leave as fp16, bf16 or
    // fp32; int32 accumulators (int8 inputs) as int32, or dequantised to fp16 / bf16.
    const bool int_acc = s.in == DType::Int8;
    const bool ok = int_acc ? (s.out == DType::Int32 || s.out == DType::Fp16 || s.out == DType::Bf16)
                            : (s.out == DType::Fp16 || s.out == DType::Bf16 || s.out == DType::Fp32);
    if (!ok)
      o->fail(fmt::format("the FIXPIPE path out of an {} accumulator cannot carry {}; it carries {}",
                          int_acc ? "int32" : "fp32", sim::dtype_name(s.out),
                          int_acc ? "int32, fp16 or bf16" : "fp16, bf16 or fp32"));
  }
  if (auto lay = w.get("layout")) {
    if (auto a = lay->get("a")) s.a = parse_layout(*a, false);
    if (auto bl = lay->get("b")) s.b = parse_layout(*bl, true);
  }
  // Every index the lowering computes must fit the 32-bit fields of an instruction.
  constexpr int64_t kMaxDim = int64_t(1) << 30;
  for (auto [key, v] : {std::pair{"m", s.m}, {"n", s.n}, {"k", s.k}})
    if (v > kMaxDim)
      w.at(key).fail(fmt::format("{} = {} is beyond 2^30, the largest dimension the 32-bit fields of an instruction "
                                 "(tile origins, leading dimensions) can index", key, v));
  if (s.m * s.k > (int64_t(1) << 40) || s.k * s.n > (int64_t(1) << 40) || s.m * s.n > (int64_t(1) << 40))
    w.fail("an operand beyond 2^40 elements is beyond what the 64-bit GM addressing of a tensor is checked for");
  return s;
}

GemmTiling parse_gemm_tiling(const std::optional<YamlNode>& tiling, GemmTiling t, int64_t blocks_m, int64_t n,
                             const sim::HardwareSpec& hw, DType in) {
  if (!tiling) return t;
  if (auto l1 = tiling->get("l1")) {
    auto v = parse_triple(*l1);
    t.m1 = v[0], t.n1 = v[1], t.k1 = v[2];
    // An L1 tile without an L0 tile gets the largest L0 tile the default rule allows inside it.
    t.m0 = t.m1, t.n0 = t.n1, t.k0 = std::min<int64_t>(t.k1, 128 / elt_bytes(in));
    while (t.k0 > 0 && t.k1 % t.k0) t.k0 -= k_align(in);
    if (t.k0 <= 0) t.k0 = t.k1;
  }
  if (auto l0 = tiling->get("l0")) {
    auto v = parse_triple(*l0);
    t.m0 = v[0], t.n0 = v[1], t.k0 = v[2];
  }
  if (auto sw = tiling->get("swizzle")) {
    if (auto o = sw->get("offset")) t.swizzle_offset = static_cast<int>(o->as_positive_int());
    if (auto d = sw->get("direction")) t.swizzle_direction = static_cast<int>(d->as_int());
  }
  if (auto st = tiling->get("stages")) t.stages = static_cast<int>(st->as_positive_int());
  if (auto c = tiling->get("cores")) t.cores = static_cast<int>(c->as_positive_int());
  else t.cores = static_cast<int>(std::min<int64_t>(hw.num_aic, std::max<int64_t>(1, ceil_div(blocks_m, t.m1) * ceil_div(n, t.n1))));
  return t;
}

SearchSpace GemmKernel::search_space(const sim::HardwareSpec& hw) const { return gemm_search_space(s_, {s_.m}, hw); }

std::unique_ptr<Kernel> GemmKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const {
  GemmTiling t = parse_gemm_tiling(tiling, t_, s_.m, s_.n, hw, s_.in);
  return std::make_unique<GemmKernel>(s_, t, false);
}

std::unique_ptr<Kernel> make_gemm(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  GemmShape s = parse_gemm_shape(w, hw, /*with_m=*/true);
  GemmTiling t = parse_gemm_tiling(tiling, default_gemm_tiling(s, hw), s.m, s.n, hw, s.in);
  return std::make_unique<GemmKernel>(s, t, !tiling.has_value());
}

}  // namespace npusim::kernels
