#include "kernels/combine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "common/numerics.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;

namespace {
constexpr int64_t kMaxRepeat = 255, kRepeatBytes = 256;
}

CombineKernel::CombineKernel(CombineShape s, CombineTiling t, bool is_default)
    : s_(std::move(s)), t_(t), default_(is_default) {
  // The stable sort by expert that init-routing performs: perm[i] = flat entry at sorted row i.
  std::vector<int32_t> perm(s_.expert_of.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return s_.expert_of[a] < s_.expert_of[b]; });
  inv_.resize(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv_[perm[i]] = static_cast<int32_t>(i);
}

int64_t CombineKernel::ub_bytes_per_set(const CombineShape& s, int64_t cols) {
  const int64_t e = sim::dtype_bytes(s.dtype);
  // K gathered slices, residual and shared slices, the fp32 accumulator and scratch, the output,
  // and the token's K weights (32-byte aligned).
  return s.topk * cols * e + 2 * cols * e + 2 * cols * 4 + cols * e + round_up(s.topk * 4, 32);
}

std::string CombineKernel::name() const {
  return fmt::format("combine_{}x{}x{}_{}", s_.tokens, s_.topk, s_.hidden, sim::dtype_name(s_.dtype));
}

nlohmann::json CombineKernel::tiling_json() const {
  return {{"cols_per_tile", t_.cols_per_tile}, {"buffers", t_.buffers}, {"cores", t_.cores}};
}

nlohmann::json CombineKernel::details() const {
  int64_t experts = 0;
  for (int32_t e : s_.expert_of) experts = std::max<int64_t>(experts, e + 1);
  auto counts = tokens_per_expert(s_.expert_of, experts);
  return {{"routing", {{"tokens_per_expert", counts}, {"imbalance", imbalance(counts)}}}};
}

double CombineKernel::flops() const {
  return static_cast<double>(s_.tokens * s_.hidden) * (s_.topk * (s_.weighted ? 2 : 1) + s_.shared + s_.residual);
}

double CombineKernel::compulsory_bytes() const {
  const double e = sim::dtype_bytes(s_.dtype), rows = static_cast<double>(s_.tokens * s_.hidden);
  return rows * e * (s_.topk + 1 + s_.shared + s_.residual) + (s_.weighted ? 4.0 * s_.tokens * s_.topk : 0.0);
}

double CombineKernel::peak_flops_per_cycle(const sim::HardwareSpec& hw) const {
  return hw.aiv.vec_rate[static_cast<int>(VecOp::Add)][static_cast<int>(DType::Fp32)] * hw.num_aiv;
}

double CombineKernel::estimated_instructions() const {
  const double chunks = static_cast<double>(s_.tokens) * ceil_div(s_.hidden, t_.cols_per_tile);
  return chunks * (12 + 5.0 * s_.topk);
}

Status CombineKernel::can_implement(const sim::HardwareSpec& hw) const {
  for (VecOp op : {VecOp::Cast, VecOp::Add, VecOp::Muls})
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(op == VecOp::Cast ? s_.dtype : DType::Fp32)] > 0))
      return Status::bad("workload.dtype", fmt::format("{} has no vector {} for this dtype", hw.name, sim::vec_op_name(op)));
  const int64_t e = sim::dtype_bytes(s_.dtype);
  if ((t_.cols_per_tile * e) % 32 || t_.cols_per_tile <= 0)
    return Status::bad("tiling.cols_per_tile", fmt::format("{} columns are not a whole number of 32-byte UB blocks", t_.cols_per_tile));
  if (t_.buffers < 1 || t_.buffers > hw.sync.event_ids)
    return Status::bad("tiling.buffers", fmt::format("buffers must be 1..{}, found {}", hw.sync.event_ids, t_.buffers));
  const int64_t ub = t_.buffers * ub_bytes_per_set(s_, t_.cols_per_tile);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.cols_per_tile", fmt::format("{} buffers x {} columns need {} B of UB, more than its {} B",
                                                           t_.buffers, t_.cols_per_tile, ub, hw.aiv.ub_bytes));
  if (t_.cores < 1 || t_.cores > hw.num_aiv)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} AIVs on {}, found {}", hw.num_aiv, hw.name, t_.cores));
  return Status::good();
}

std::vector<TensorInfo> CombineKernel::tensors() const {
  const int64_t T = s_.tokens, K = s_.topk, D = s_.hidden, e = sim::dtype_bytes(s_.dtype);
  GmAllocator gm;
  std::vector<TensorInfo> out;
  out.push_back({"y", s_.dtype, T * K, D, TensorLayout::RowMajor, gm.alloc(T * K * D * e), false});
  if (s_.weighted) out.push_back({"weights", DType::Fp32, 1, T * K, TensorLayout::RowMajor, gm.alloc(T * K * 4), false});
  if (s_.shared) out.push_back({"shared", s_.dtype, T, D, TensorLayout::RowMajor, gm.alloc(T * D * e), false});
  if (s_.residual) out.push_back({"residual", s_.dtype, T, D, TensorLayout::RowMajor, gm.alloc(T * D * e), false});
  out.push_back({"out", s_.dtype, T, D, TensorLayout::RowMajor, gm.alloc(T * D * e), true});
  return out;
}

sim::Program CombineKernel::lower(const sim::HardwareSpec&, bool functional) const {
  const auto ts = tensors();
  auto addr = [&](const char* n) {
    for (const auto& t : ts)
      if (t.name == n) return t.addr;
    return uint64_t{0};
  };
  const int64_t T = s_.tokens, K = s_.topk, D = s_.hidden, e = sim::dtype_bytes(s_.dtype), C = t_.cols_per_tile;
  sim::Program prog;
  prog.name = name();
  prog.gm_footprint_bytes = ts.back().addr + static_cast<uint64_t>(T * D * e);
  const int64_t chunks = ceil_div(D, C), items = T * chunks;  // (token, column chunk) work items
  const int cores = static_cast<int>(std::min<int64_t>(t_.cores, std::max<int64_t>(1, items)));
  const int nb = t_.buffers;
  const uint64_t set = static_cast<uint64_t>(ub_bytes_per_set(s_, C));
  struct Ub {
    uint64_t y, res, sh, acc, tmp, out, w;
  };
  auto ub = [&](int q) {
    const uint64_t b = q * set, c = static_cast<uint64_t>(C);
    const uint64_t y = b, res = y + K * c * e, sh = res + c * e, acc = sh + c * e, tmp = acc + 4 * c, out = tmp + 4 * c;
    return Ub{y, res, sh, acc, tmp, out, out + c * e};
  };
  const int64_t per_instr = kMaxRepeat * kRepeatBytes / 4;
  for (int c = 0; c < cores; ++c) {
    const int64_t first = items * c / cores, last = items * (c + 1) / cores;
    sim::CoreProgram cp{sim::CoreKind::Aiv, c, {}, {}};
    sim::CoreBuilder b(cp, functional);
    auto vec = [&](VecOp op, DType dt, uint64_t dst, DType dst_t, uint64_t src, uint64_t src2, int64_t n,
                   double scalar = 0, bool scalar_from_src2 = false) {
      for (int64_t done = 0; done < n; done += per_instr) {
        sim::Operands o;
        o.src = {src + done * sim::dtype_bytes(dt), 0, 0, 0, TileLayout::Flat, dt};
        o.src2 = {scalar_from_src2 ? src2 : src2 + done * sim::dtype_bytes(dt), 0, 0, 0, TileLayout::Flat, dt};
        o.dst = {dst + done * sim::dtype_bytes(dst_t), 0, 0, 0, TileLayout::Flat, dst_t};
        o.scalar = scalar, o.scalar_from_src2 = scalar_from_src2;
        b.vec(op, dt, uint32_t(std::min(per_instr, n - done)), o);
      }
    };
    auto load = [&](uint64_t gm, uint64_t dst, int64_t bytes, DType dt) {
      sim::Operands o;
      o.rows = 1, o.cols = uint32_t(bytes / sim::dtype_bytes(dt));
      o.src = {gm, 0, 0, 0, TileLayout::Flat, dt};
      o.dst = {dst, 0, 0, 0, TileLayout::Flat, dt};
      b.copy(Path::GmToUb, uint32_t(bytes), sim::GmRegion{gm, 1, uint32_t(bytes), uint64_t(bytes)}, o);
    };
    for (int q = 0; q < nb; ++q) {
      b.set_flag(Pipe::V, Pipe::Mte2, q);
      b.set_flag(Pipe::Mte3, Pipe::V, q);
    }
    for (int64_t it = first; it < last; ++it) {
      const int q = static_cast<int>((it - first) % nb);
      const Ub u = ub(q);
      const int64_t t = it / chunks, c0 = (it % chunks) * C, n = std::min(C, D - c0);
      b.wait_flag(Pipe::V, Pipe::Mte2, q);
      for (int64_t j = 0; j < K; ++j) {
        b.scalar(1);  // read inv[t K + j] to address the gather
        const int64_t row = inv_[static_cast<size_t>(t * K + j)];
        load(addr("y") + (row * D + c0) * e, u.y + j * C * e, n * e, s_.dtype);
      }
      if (s_.residual) load(addr("residual") + (t * D + c0) * e, u.res, n * e, s_.dtype);
      if (s_.shared) load(addr("shared") + (t * D + c0) * e, u.sh, n * e, s_.dtype);
      if (s_.weighted) load(addr("weights") + t * K * 4, u.w, K * 4, DType::Fp32);
      b.set_flag(Pipe::Mte2, Pipe::V, q);
      b.wait_flag(Pipe::Mte2, Pipe::V, q);
      b.wait_flag(Pipe::Mte3, Pipe::V, q);
      // acc = residual + shared + sum_j w_j y_j, in fp32, in that order.
      bool started = false;
      auto accumulate = [&](uint64_t src_lowp, bool weight, int64_t j) {
        vec(VecOp::Cast, s_.dtype, started ? u.tmp : u.acc, DType::Fp32, src_lowp, src_lowp, n);
        const uint64_t v = started ? u.tmp : u.acc;
        if (weight) {
          b.scalar(1);  // load w[t, j]
          vec(VecOp::Muls, DType::Fp32, v, DType::Fp32, v, u.w + j * 4, n, 0, true);
        }
        if (started) vec(VecOp::Add, DType::Fp32, u.acc, DType::Fp32, u.acc, u.tmp, n);
        started = true;
      };
      if (s_.residual) accumulate(u.res, false, 0);
      if (s_.shared) accumulate(u.sh, false, 0);
      for (int64_t j = 0; j < K; ++j) accumulate(u.y + j * C * e, s_.weighted, j);
      vec(VecOp::Cast, DType::Fp32, u.out, s_.dtype, u.acc, u.acc, n);
      b.set_flag(Pipe::V, Pipe::Mte2, q);
      b.set_flag(Pipe::V, Pipe::Mte3, q);
      b.wait_flag(Pipe::V, Pipe::Mte3, q);
      sim::Operands o;
      o.rows = 1, o.cols = uint32_t(n);
      o.src = {u.out, 0, 0, 0, TileLayout::Flat, s_.dtype};
      o.dst = {addr("out") + (t * D + c0) * e, 0, 0, 0, TileLayout::Flat, s_.dtype};
      b.copy(Path::UbToGm, uint32_t(n * e), sim::GmRegion{o.dst.offset, 1, uint32_t(n * e), uint64_t(n * e)}, o);
      b.set_flag(Pipe::Mte3, Pipe::V, q);
    }
    for (int q = 0; q < nb; ++q) {
      b.wait_flag(Pipe::V, Pipe::Mte2, q);
      b.wait_flag(Pipe::Mte3, Pipe::V, q);
    }
    prog.cores.push_back(std::move(cp));
  }
  return prog;
}

Golden CombineKernel::reference(const std::vector<std::vector<double>>& in) const {
  const int64_t T = s_.tokens, K = s_.topk, D = s_.hidden;
  size_t idx = 0;
  const std::vector<double>& y = in[idx++];
  const std::vector<double>* w = s_.weighted ? &in[idx++] : nullptr;
  const std::vector<double>* sh = s_.shared ? &in[idx++] : nullptr;
  const std::vector<double>* res = s_.residual ? &in[idx++] : nullptr;
  Golden g;
  g.exact.assign(static_cast<size_t>(T * D), 0.0);
  g.same_precision.resize(g.exact.size());
  const num::Format out = sim::number_format(s_.dtype);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      double exact = 0;
      float acc = 0;
      bool started = false;
      auto add = [&](double v, double wt) {
        exact += v * wt;
        float term = static_cast<float>(v);
        if (wt != 1.0) term = term * static_cast<float>(wt);
        acc = started ? acc + term : term;
        started = true;
      };
      if (res) add((*res)[t * D + d], 1.0);
      if (sh) add((*sh)[t * D + d], 1.0);
      for (int64_t j = 0; j < K; ++j) add(y[inv_[t * K + j] * D + d], w ? (*w)[t * K + j] : 1.0);
      g.exact[t * D + d] = exact;
      g.same_precision[t * D + d] = num::round_to(out, acc);
    }
  return g;
}

CombineTiling default_combine_tiling(const CombineShape& s, const sim::HardwareSpec& hw) {
  // Whole rows when their buffers fit UB twice, else the largest 32-byte-aligned chunk.
  CombineTiling t;
  const int64_t align = 32 / sim::dtype_bytes(s.dtype);
  t.cols_per_tile = round_up(s.hidden, align);
  while (t.cols_per_tile > align && 2 * CombineKernel::ub_bytes_per_set(s, t.cols_per_tile) > hw.aiv.ub_bytes)
    t.cols_per_tile = round_up(t.cols_per_tile / 2, align);
  t.cores = static_cast<int>(std::clamp<int64_t>(s.tokens * ceil_div(s.hidden, t.cols_per_tile), 1, hw.num_aiv));
  return t;
}

CombineTiling parse_combine_tiling(const YamlNode& tiling, CombineTiling t) {
  if (auto c = tiling.get("cols_per_tile")) t.cols_per_tile = c->as_positive_int();
  if (auto bu = tiling.get("buffers")) t.buffers = static_cast<int>(bu->as_positive_int());
  if (auto c = tiling.get("cores")) t.cores = static_cast<int>(c->as_positive_int());
  return t;
}

std::unique_ptr<Kernel> make_combine(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  CombineShape s;
  s.hidden = w.at("hidden").as_positive_int();
  if (s.hidden > (int64_t(1) << 24)) w.at("hidden").fail("hidden beyond 2^24 does not fit the instruction fields");
  s.dtype = *sim::dtype_from_name(w.at("dtype").as_enum({"fp16", "bf16", "fp32"}));
  if (auto x = w.get("weighted")) s.weighted = x->as_bool();
  if (auto x = w.get("shared")) s.shared = x->as_bool();
  if (auto x = w.get("residual")) s.residual = x->as_bool();
  RoutingSpec r = parse_routing(w.at("routing"));
  s.tokens = r.tokens, s.topk = r.topk;
  s.expert_of = draw_routing(r);
  CombineTiling t = default_combine_tiling(s, hw);
  if (tiling) t = parse_combine_tiling(*tiling, t);
  return std::make_unique<CombineKernel>(std::move(s), t, !tiling.has_value());
}

std::unique_ptr<Kernel> CombineKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec&) const {
  return std::make_unique<CombineKernel>(s_, parse_combine_tiling(tiling, t_), false);
}

}  // namespace npusim::kernels
