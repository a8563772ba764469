#include "kernels/grouped_gemm_finalize.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "common/numerics.hpp"
#include "kernels/cube_vector.hpp"
#include "kernels/grouped_gemm.hpp"
#include "kernels/routing.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;

namespace {

constexpr int kInitDone = CubeVectorSlots::kFlags, kAddsDone = CubeVectorSlots::kFlags + 1;  // all-AIV barriers (mode 0)
constexpr int64_t kPerInstr = 255 * 256 / 4;  // fp32 elements per vector instruction (255 repeats of 256 B)

struct Item {
  size_t grp;
  int64_t row0, mb, col0, nb;
};

struct Gm {
  uint64_t a = 0;
  std::vector<uint64_t> b;
  uint64_t w = 0, shared = 0, residual = 0, out = 0, acc = 0, ws = 0;
};

Gm place(const GroupedGemmFinalizeShape& s) {
  const int64_t e = sim::dtype_bytes(s.gemm.in), eo = sim::dtype_bytes(s.out), TK = s.tokens * s.topk, TD = s.tokens * s.gemm.n;
  GmAllocator gm;
  Gm g;
  g.a = gm.alloc(TK * s.gemm.k * e);
  for (int64_t i = 0; i < s.experts; ++i) g.b.push_back(gm.alloc(s.gemm.k * s.gemm.n * e));
  if (s.weighted) g.w = gm.alloc(TK * 4);
  if (s.shared) g.shared = gm.alloc(TD * eo);
  if (s.residual) g.residual = gm.alloc(TD * eo);
  g.out = gm.alloc(TD * eo);
  g.acc = gm.alloc(TD * 4);  // workspace: the fp32 accumulator rows
  g.ws = gm.footprint();
  return g;
}

// UB layout of one buffer set: phase 2's block rows and weights, or phases 1 and 3's chunk of
// residual, shared, accumulator, scratch and output (the phases reuse the same sets).
struct SetLayout {
  uint64_t rows, w;                   // block rows (fp32), weights
  uint64_t res, sh, acc, tmp, out;    // accumulator chunk
  uint64_t bytes;
};

SetLayout set_layout(const GroupedGemmFinalizeShape& s, const GroupedGemmFinalizeTiling& t) {
  const uint64_t eo = sim::dtype_bytes(s.out), C = static_cast<uint64_t>(t.cols_per_tile);
  SetLayout l{};
  l.rows = 0;
  l.w = static_cast<uint64_t>(t.rows_per_tile * t.gemm.n1 * 4);
  const uint64_t block = l.w + static_cast<uint64_t>(round_up(t.rows_per_tile * 4, 32));
  l.res = 0, l.sh = C * eo, l.acc = 2 * C * eo, l.tmp = l.acc + 4 * C, l.out = l.tmp + 4 * C;
  l.bytes = std::max(block, l.out + C * eo);
  return l;
}

}  // namespace

GroupedGemmFinalizeKernel::GroupedGemmFinalizeKernel(GroupedGemmFinalizeShape s, GroupedGemmFinalizeTiling t, bool is_default)
    : s_(std::move(s)), t_(t), default_(is_default) {
  rows_ = tokens_per_expert(s_.expert_of, s_.experts);
  perm_.resize(s_.expert_of.size());
  std::iota(perm_.begin(), perm_.end(), 0);
  std::stable_sort(perm_.begin(), perm_.end(), [&](int32_t a, int32_t b) { return s_.expert_of[a] < s_.expert_of[b]; });
}

std::string GroupedGemmFinalizeKernel::name() const {
  return fmt::format("gmm_finalize_{}x{}x{}x{}_{}", s_.experts, s_.tokens * s_.topk, s_.gemm.n, s_.gemm.k,
                     sim::dtype_name(s_.gemm.in));
}

nlohmann::json GroupedGemmFinalizeKernel::tiling_json() const {
  nlohmann::json j = GemmKernel(s_.gemm, t_.gemm, default_).tiling_json();
  j["rows_per_tile"] = t_.rows_per_tile;
  j["cols_per_tile"] = t_.cols_per_tile;
  j["buffers"] = t_.buffers;
  j["slots"] = t_.slots;
  return j;
}

nlohmann::json GroupedGemmFinalizeKernel::details() const {
  return {{"routing", {{"tokens_per_expert", rows_}, {"imbalance", imbalance(rows_)}}}};
}

double GroupedGemmFinalizeKernel::flops() const {
  const double TK = static_cast<double>(s_.tokens * s_.topk), D = static_cast<double>(s_.gemm.n);
  return 2.0 * TK * D * s_.gemm.k + TK * D * (s_.weighted ? 2 : 1) + s_.tokens * D * (s_.shared + s_.residual);
}

double GroupedGemmFinalizeKernel::compulsory_bytes() const {
  const int64_t used = std::count_if(rows_.begin(), rows_.end(), [](int64_t r) { return r > 0; });
  const double TK = static_cast<double>(s_.tokens * s_.topk), TD = static_cast<double>(s_.tokens * s_.gemm.n);
  return (TK * s_.gemm.k + static_cast<double>(used) * s_.gemm.k * s_.gemm.n) * sim::dtype_bytes(s_.gemm.in) +
         TD * sim::dtype_bytes(s_.out) * (1 + s_.shared + s_.residual) + (s_.weighted ? 4.0 * TK : 0.0);
}

double GroupedGemmFinalizeKernel::estimated_instructions() const {
  const double gemm = GroupedGemmKernel(s_.gemm, rows_, t_.gemm, false).estimated_instructions();
  const double TK = static_cast<double>(s_.tokens * s_.topk), blocks_per_row = static_cast<double>(ceil_div(s_.gemm.n, t_.gemm.n1));
  const double chunks = static_cast<double>(s_.tokens * ceil_div(s_.gemm.n, t_.cols_per_tile));
  // Per expert row and block: the scalar index read, its atomic add (and its weight's fetch and
  // scale); per sub-tile ~10 flags and copies; per chunk of the init and cast phases ~12.
  return gemm + TK * blocks_per_row * (2 + (s_.weighted ? 4 : 0)) + TK * blocks_per_row / t_.rows_per_tile * 10 + chunks * 24;
}

int64_t grouped_gemm_finalize_ub_bytes(const GroupedGemmFinalizeShape& s, const GroupedGemmFinalizeTiling& t,
                                       const sim::HardwareSpec& hw) {
  const CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t.slots);
  const int64_t slots = cv.via_ub ? t.slots * cv.max_aiv_rows(t.gemm.m1) * t.gemm.n1 * 4 : 0;
  return slots + t.buffers * static_cast<int64_t>(set_layout(s, t).bytes);
}

Status GroupedGemmFinalizeKernel::can_implement(const sim::HardwareSpec& hw) const {
  GemmShape g = s_.gemm;
  g.m = std::max<int64_t>(1, s_.tokens * s_.topk);
  if (Status st = check_gemm_tiling(g, t_.gemm, hw); !st.ok) return st;
  const CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t_.slots);
  if (Status st = cv.check(hw); !st.ok) return st;
  for (auto [op, dt] : {std::pair{VecOp::Cast, s_.out}, {VecOp::Cast, DType::Fp32}, {VecOp::Add, DType::Fp32},
                        {VecOp::Muls, DType::Fp32}, {VecOp::Dup, DType::Fp32}})
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(dt)] > 0))
      return Status::bad("workload.dtype", fmt::format("{} has no vector {} on {}", hw.name, sim::vec_op_name(op), sim::dtype_name(dt)));
  const int64_t eo = sim::dtype_bytes(s_.out);
  if ((s_.gemm.n * eo) % 32 || t_.cols_per_tile <= 0 || (t_.cols_per_tile * eo) % 32)
    return Status::bad("tiling.cols_per_tile", fmt::format("hidden {} and cols_per_tile {} must be whole 32-byte UB blocks",
                                                           s_.gemm.n, t_.cols_per_tile));
  if (t_.rows_per_tile < 1 || t_.buffers < 1 || t_.buffers > hw.sync.event_ids)
    return Status::bad("tiling.buffers", fmt::format("rows_per_tile must be >= 1 and buffers 1..{}", hw.sync.event_ids));
  const int64_t ub = grouped_gemm_finalize_ub_bytes(s_, t_, hw);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.rows_per_tile", fmt::format("{} buffers of {} rows x {} columns (and {} columns of the accumulator) "
                                                           "need {} B of UB, more than its {} B", t_.buffers, t_.rows_per_tile,
                                                           t_.gemm.n1, t_.cols_per_tile, ub, hw.aiv.ub_bytes));
  return Status::good();
}

std::vector<TensorInfo> GroupedGemmFinalizeKernel::tensors() const {
  const Gm g = place(s_);
  const int64_t TK = s_.tokens * s_.topk, T = s_.tokens, D = s_.gemm.n;
  std::vector<TensorInfo> out{{"a", s_.gemm.in, TK, s_.gemm.k, s_.gemm.a, g.a, false}};
  for (int64_t i = 0; i < s_.experts; ++i)
    out.push_back({fmt::format("b{}", i), s_.gemm.in, s_.gemm.k, D, s_.gemm.b, g.b[static_cast<size_t>(i)], false});
  if (s_.weighted) out.push_back({"weights", DType::Fp32, 1, TK, TensorLayout::RowMajor, g.w, false});
  if (s_.shared) out.push_back({"shared", s_.out, T, D, TensorLayout::RowMajor, g.shared, false});
  if (s_.residual) out.push_back({"residual", s_.out, T, D, TensorLayout::RowMajor, g.residual, false});
  out.push_back({"out", s_.out, T, D, TensorLayout::RowMajor, g.out, true});
  return out;
}

sim::Program GroupedGemmFinalizeKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  const Gm g = place(s_);
  const int64_t T = s_.tokens, K = s_.topk, D = s_.gemm.n, n1 = t_.gemm.n1, m1 = t_.gemm.m1, rpt = t_.rows_per_tile;
  const int64_t C = t_.cols_per_tile, eo = sim::dtype_bytes(s_.out);
  const int nbuf = t_.buffers;
  std::vector<Item> items;
  for_each_group_block(rows_, D, t_.gemm, [&](size_t grp, int64_t r0, int64_t mb, int64_t c0, int64_t nb) {
    items.push_back({grp, r0, mb, c0, nb});
  });
  const int64_t nitems = static_cast<int64_t>(items.size());
  const int cores = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t_.gemm.cores, nitems)));
  // A slot holds an fp32 block: m1 x n1 in GM per AIC, or each AIV's rows (packed nb wide) in UB.
  CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t_.slots);
  const int A = cv.aiv_per_aic;
  cv.ws = g.ws, cv.ws_slot_bytes = static_cast<uint64_t>(m1 * n1 * 4);
  cv.ub_slot_bytes = cv.via_ub ? static_cast<uint64_t>(cv.max_aiv_rows(m1) * n1 * 4) : 0;
  const SetLayout L = set_layout(s_, t_);
  const uint64_t sets = cv.slots * cv.ub_slot_bytes;

  GemmBlocks blocks;
  blocks.name = name();
  blocks.a = g.a, blocks.a_rows = T * K;
  blocks.footprint = cv.via_ub ? g.ws : g.ws + cores * cv.slots * cv.ws_slot_bytes;
  blocks.scalar_cycles_per_core = static_cast<uint32_t>(hw.scalar_group_cycles * static_cast<double>(rows_.size()));
  for (const Item& it : items) blocks.list.push_back({it.row0, it.mb, it.col0, it.nb, g.b[it.grp]});
  cv.install(blocks);
  blocks.write_c = [&](sim::CoreBuilder& b, int core, int64_t n, const GemmBlock& blk, const sim::TileRef& c_tile) {
    cv.write_block(b, core, n, c_tile, blk.mb, blk.nb, DType::Fp32, 0, n1, 0);
  };
  GemmShape gs = s_.gemm;
  gs.out = DType::Fp32;
  sim::Program prog = lower_gemm_blocks(gs, t_.gemm, blocks, hw, functional);
  cv.drain(prog, cores, nitems, functional);

  const int aivs = cores * A;
  const int64_t chunks = ceil_div(D, C), acc_items = T * chunks;  // (token, column chunk)
  for (int c = 0; c < cores; ++c)
    for (int k = 0; k < A; ++k) {
      const int v = c * A + k;
      sim::CoreProgram cp{sim::CoreKind::Aiv, v, {}, {}};
      sim::CoreBuilder b(cp, functional);
      auto vec = [&](VecOp op, DType dt, uint64_t dst, DType dst_t, uint64_t src, uint64_t src2, int64_t count,
                     double scalar = 0, bool scalar_from_src2 = false) {
        for (int64_t done = 0; done < count; done += kPerInstr) {
          sim::Operands o;
          o.src = {src + done * sim::dtype_bytes(dt), 0, 0, 0, TileLayout::Flat, dt};
          o.src2 = {scalar_from_src2 ? src2 : src2 + done * sim::dtype_bytes(dt), 0, 0, 0, TileLayout::Flat, dt};
          o.dst = {dst + done * sim::dtype_bytes(dst_t), 0, 0, 0, TileLayout::Flat, dst_t};
          o.scalar = scalar, o.scalar_from_src2 = scalar_from_src2;
          b.vec(op, dt, uint32_t(std::min(kPerInstr, count - done)), o);
        }
      };
      auto flat_copy = [&](Path path, uint64_t src, uint64_t dst, int64_t count, DType dt, bool accumulate = false) {
        sim::Operands o;
        o.rows = 1, o.cols = uint32_t(count), o.accumulate = accumulate;
        o.src = {src, 0, 0, 0, TileLayout::Flat, dt};
        o.dst = {dst, 0, 0, 0, TileLayout::Flat, dt};
        const uint64_t gm = path == Path::GmToUb ? src : dst, bytes = static_cast<uint64_t>(count * sim::dtype_bytes(dt));
        b.copy(path, uint32_t(bytes), sim::GmRegion{gm, 1, uint32_t(bytes), bytes}, o);
      };
      int64_t tile = 0;  // buffer-set counter, continued across the phases
      auto begin_tile = [&]() {
        const int q = static_cast<int>(tile++ % nbuf);
        b.wait_flag(Pipe::V, Pipe::Mte2, q);
        return std::pair{q, sets + q * L.bytes};
      };
      auto loaded = [&](int q) {
        b.set_flag(Pipe::Mte2, Pipe::V, q);
        b.wait_flag(Pipe::Mte2, Pipe::V, q);
        b.wait_flag(Pipe::Mte3, Pipe::V, q);
      };
      auto computed = [&](int q) {
        b.set_flag(Pipe::V, Pipe::Mte2, q);
        b.set_flag(Pipe::V, Pipe::Mte3, q);
        b.wait_flag(Pipe::V, Pipe::Mte3, q);
      };
      for (int q = 0; q < nbuf; ++q) {
        b.set_flag(Pipe::V, Pipe::Mte2, q);
        b.set_flag(Pipe::Mte3, Pipe::V, q);
      }
      const int64_t first = acc_items * v / aivs, last = acc_items * (v + 1) / aivs;
      // Phase 1: accumulator rows = residual + shared (or zero).
      for (int64_t i = first; i < last; ++i) {
        const int64_t t = i / chunks, c0 = (i % chunks) * C, n = std::min(C, D - c0), off = t * D + c0;
        auto [q, base] = begin_tile();
        if (s_.residual) flat_copy(Path::GmToUb, g.residual + off * eo, base + L.res, n, s_.out);
        if (s_.shared) flat_copy(Path::GmToUb, g.shared + off * eo, base + L.sh, n, s_.out);
        loaded(q);
        if (s_.residual) vec(VecOp::Cast, s_.out, base + L.acc, DType::Fp32, base + L.res, base + L.res, n);
        if (s_.shared) {
          const uint64_t dst = s_.residual ? base + L.tmp : base + L.acc;
          vec(VecOp::Cast, s_.out, dst, DType::Fp32, base + L.sh, base + L.sh, n);
          if (s_.residual) vec(VecOp::Add, DType::Fp32, base + L.acc, DType::Fp32, base + L.acc, base + L.tmp, n);
        }
        if (!s_.residual && !s_.shared) vec(VecOp::Dup, DType::Fp32, base + L.acc, DType::Fp32, base + L.acc, base + L.acc, n, 0.0);
        computed(q);
        flat_copy(Path::UbToGm, base + L.acc, g.acc + off * 4, n, DType::Fp32);
        b.set_flag(Pipe::Mte3, Pipe::V, q);
      }
      b.cross_set(Pipe::Mte3, 0, kInitDone);
      b.cross_wait(Pipe::Mte3, kInitDone);
      // Phase 2: this AIV's rows of every block of its AIC, scaled and added into their tokens' rows.
      const Pipe reader = cv.via_ub ? Pipe::Mte3 : Pipe::Mte2;  // the last pipe to touch a slot
      for (int64_t idx = c, n = 0; idx < nitems; idx += cores, ++n) {
        const Item& it = items[static_cast<size_t>(idx)];
        const auto [r_begin, r_end] = cv.aiv_rows(it.mb, k);
        // On the UB path the vector unit reads the slot first and MTE3 follows it through the flags.
        b.cross_wait(cv.via_ub ? Pipe::V : Pipe::Mte2, CubeVectorSlots::kReady);
        if (r_end <= r_begin) {
          b.cross_set(reader, 2, CubeVectorSlots::free_flag(k));
          continue;
        }
        for (int64_t r = r_begin; r < r_end; r += rpt) {
          const int64_t rows = std::min(rpt, r_end - r);
          const bool last_tile = r + rows >= r_end;
          auto [q, base] = begin_tile();
          uint64_t data = base + L.rows;
          if (cv.via_ub) {
            data = cv.ub_slot(n) + static_cast<uint64_t>((r - r_begin) * it.nb * 4);
          } else {
            const uint64_t src = cv.ws_slot(c, n) + static_cast<uint64_t>(r * n1 * 4);
            sim::Operands o;
            o.rows = uint32_t(rows), o.cols = uint32_t(it.nb);
            o.src = {src, uint32_t(n1), 0, 0, TileLayout::Nd, DType::Fp32};
            o.dst = {data, uint32_t(it.nb), 0, 0, TileLayout::Nd, DType::Fp32};
            b.copy(Path::GmToUb, uint32_t(rows * it.nb * 4),
                   sim::GmRegion{src, uint32_t(rows), uint32_t(it.nb * 4), uint64_t(n1 * 4)}, o);
          }
          if (s_.weighted)
            for (int64_t j = 0; j < rows; ++j) {
              b.scalar(1);  // the row's flat index addresses its weight
              const int64_t f = perm_[static_cast<size_t>(it.row0 + r + j)];
              flat_copy(Path::GmToUb, g.w + f * 4, base + L.w + j * 4, 1, DType::Fp32);
            }
          if (last_tile && !cv.via_ub) b.cross_set(Pipe::Mte2, 2, CubeVectorSlots::free_flag(k));  // the workspace slot is read
          loaded(q);
          if (s_.weighted)
            for (int64_t j = 0; j < rows; ++j) {
              b.scalar(1);  // the weight into a scalar register
              vec(VecOp::Muls, DType::Fp32, data + j * it.nb * 4, DType::Fp32, data + j * it.nb * 4, base + L.w + j * 4,
                  it.nb, 0, true);
            }
          computed(q);
          for (int64_t j = 0; j < rows; ++j) {
            b.scalar(1);  // the row's token addresses the atomic add
            const int64_t t = perm_[static_cast<size_t>(it.row0 + r + j)] / K;
            flat_copy(Path::UbToGm, data + j * it.nb * 4, g.acc + (t * D + it.col0) * 4, it.nb, DType::Fp32, true);
          }
          if (last_tile && cv.via_ub) b.cross_set(Pipe::Mte3, 2, CubeVectorSlots::free_flag(k));  // the UB slot is consumed
          b.set_flag(Pipe::Mte3, Pipe::V, q);
        }
      }
      b.cross_set(Pipe::Mte3, 0, kAddsDone);
      b.cross_wait(Pipe::Mte2, kAddsDone);
      // Phase 3: the accumulator rows cast to the output type.
      for (int64_t i = first; i < last; ++i) {
        const int64_t t = i / chunks, c0 = (i % chunks) * C, n = std::min(C, D - c0), off = t * D + c0;
        auto [q, base] = begin_tile();
        flat_copy(Path::GmToUb, g.acc + off * 4, base + L.acc, n, DType::Fp32);
        loaded(q);
        vec(VecOp::Cast, DType::Fp32, base + L.out, s_.out, base + L.acc, base + L.acc, n);
        computed(q);
        flat_copy(Path::UbToGm, base + L.out, g.out + off * eo, n, s_.out);
        b.set_flag(Pipe::Mte3, Pipe::V, q);
      }
      for (int q = 0; q < nbuf; ++q) {
        b.wait_flag(Pipe::V, Pipe::Mte2, q);
        b.wait_flag(Pipe::Mte3, Pipe::V, q);
      }
      prog.cores.push_back(std::move(cp));
    }
  return prog;
}

Golden GroupedGemmFinalizeKernel::reference(const std::vector<std::vector<double>>& in) const {
  const int64_t T = s_.tokens, K = s_.topk, D = s_.gemm.n;
  const size_t E = static_cast<size_t>(s_.experts);
  std::vector<std::vector<double>> gemm_in(in.begin(), in.begin() + 1 + static_cast<std::ptrdiff_t>(E));
  GemmShape gs = s_.gemm;
  gs.out = DType::Fp32;
  const Golden y = GroupedGemmKernel(gs, rows_, t_.gemm, false).reference(gemm_in);
  size_t idx = 1 + E;
  const std::vector<double>* w = s_.weighted ? &in[idx++] : nullptr;
  const std::vector<double>* sh = s_.shared ? &in[idx++] : nullptr;
  const std::vector<double>* res = s_.residual ? &in[idx++] : nullptr;
  std::vector<int32_t> inv(perm_.size());
  for (size_t i = 0; i < perm_.size(); ++i) inv[static_cast<size_t>(perm_[i])] = static_cast<int32_t>(i);
  Golden g;
  g.exact.resize(static_cast<size_t>(T * D));
  g.same_precision.resize(g.exact.size());
  const num::Format out = sim::number_format(s_.out);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      // The kernel's rounding points: fp32 Y, fp32 scaling, fp32 accumulation, one cast at the end.
      double exact = 0;
      float acc = 0;
      if (res) exact += (*res)[t * D + d], acc += static_cast<float>((*res)[t * D + d]);
      if (sh) exact += (*sh)[t * D + d], acc += static_cast<float>((*sh)[t * D + d]);
      for (int64_t j = 0; j < K; ++j) {
        const size_t row = static_cast<size_t>(inv[static_cast<size_t>(t * K + j)] * D + d);
        const double wt = w ? (*w)[static_cast<size_t>(t * K + j)] : 1.0;
        exact += wt * y.exact[row];
        float term = static_cast<float>(y.same_precision[row]);
        if (w) term *= static_cast<float>(wt);
        acc += term;
      }
      g.exact[static_cast<size_t>(t * D + d)] = exact;
      g.same_precision[static_cast<size_t>(t * D + d)] = num::round_to(out, acc);
    }
  return g;
}

GroupedGemmFinalizeTiling default_grouped_gemm_finalize_tiling(const GroupedGemmFinalizeShape& s,
                                                               const sim::HardwareSpec& hw) {
  // The grouped GEMM's default over the expert rows; accumulator chunks of up to 2048 columns; the
  // most sub-tile rows (up to 16) whose buffers fit UB beside the slots.
  GroupedGemmFinalizeTiling t;
  const auto rows = tokens_per_expert(s.expert_of, s.experts);
  t.gemm = default_grouped_gemm_tiling(s.gemm, rows, hw);
  t.cols_per_tile = std::min<int64_t>(round_up(s.gemm.n, 16), 2048);
  while (t.rows_per_tile > 1 && grouped_gemm_finalize_ub_bytes(s, t, hw) > hw.aiv.ub_bytes) t.rows_per_tile /= 2;
  return t;
}

GroupedGemmFinalizeTiling parse_grouped_gemm_finalize_tiling(const YamlNode& tiling, GroupedGemmFinalizeTiling t,
                                                              const GroupedGemmFinalizeShape& s, const sim::HardwareSpec& hw) {
  t.gemm = parse_gemm_tiling(tiling, t.gemm, s.tokens * s.topk, s.gemm.n, hw, s.gemm.in);
  if (auto x = tiling.get("rows_per_tile")) t.rows_per_tile = x->as_positive_int();
  if (auto x = tiling.get("cols_per_tile")) t.cols_per_tile = x->as_positive_int();
  if (auto x = tiling.get("buffers")) t.buffers = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("slots")) t.slots = static_cast<int>(x->as_positive_int());
  return t;
}

std::unique_ptr<Kernel> make_grouped_gemm_finalize(const YamlNode& w, const std::optional<YamlNode>& tiling,
                                                   const sim::HardwareSpec& hw) {
  GroupedGemmFinalizeShape s;
  s.gemm.n = w.at("n").as_positive_int();
  s.gemm.k = w.at("k").as_positive_int();
  if (s.gemm.n > (int64_t(1) << 24) || s.gemm.k > (int64_t(1) << 24)) w.fail("n or k beyond 2^24 do not fit the instruction fields");
  s.gemm.in = *sim::dtype_from_name(w.at("dtype").as_enum({"fp16", "bf16"}));
  if (!hw.aic.cube_k0[static_cast<int>(s.gemm.in)])
    w.at("dtype").fail(fmt::format("{} has no {} cube", hw.name, sim::dtype_name(s.gemm.in)));
  s.out = s.gemm.in;
  s.gemm.out = DType::Fp32;
  if (auto x = w.get("weighted")) s.weighted = x->as_bool();
  if (auto x = w.get("shared")) s.shared = x->as_bool();
  if (auto x = w.get("residual")) s.residual = x->as_bool();
  RoutingSpec r = parse_routing(w.at("routing"));
  s.tokens = r.tokens, s.topk = r.topk, s.experts = r.experts;
  s.expert_of = draw_routing(r);
  GroupedGemmFinalizeTiling t = default_grouped_gemm_finalize_tiling(s, hw);
  if (tiling) t = parse_grouped_gemm_finalize_tiling(*tiling, t, s, hw);
  return std::make_unique<GroupedGemmFinalizeKernel>(std::move(s), t, !tiling.has_value());
}

std::unique_ptr<Kernel> GroupedGemmFinalizeKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const {
  return std::make_unique<GroupedGemmFinalizeKernel>(s_, parse_grouped_gemm_finalize_tiling(tiling, t_, s_, hw), false);
}

}  // namespace npusim::kernels
