#include "kernels/swiglu.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "common/numerics.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;

namespace {
constexpr int64_t kMaxRepeat = 255, kRepeatBytes = 256;
constexpr int kVectorOpsPerRow = 9;  // casts, silu chain, mul, weight, cast out (clamp adds 3)
}  // namespace

int64_t SwigluKernel::ub_bytes_per_set(const SwigluShape& s, int64_t rows) {
  const int64_t in = sim::dtype_bytes(s.in), out = sim::dtype_bytes(s.out), n = rows * s.inter;
  // g and u in the input type, g32 / u32 / t in fp32, the output, the weights (32-byte aligned).
  return 2 * n * in + 3 * n * 4 + n * out + round_up(rows * 4, 32);
}

SwigluUb swiglu_ub(const SwigluShape& s, uint64_t base, int64_t elems) {
  const uint64_t n = static_cast<uint64_t>(elems), in_b = sim::dtype_bytes(s.in), out_b = sim::dtype_bytes(s.out);
  const uint64_t g32 = base + 2 * n * in_b, out = g32 + 12 * n;
  return {base, base + n * in_b, g32, g32 + 4 * n, g32 + 8 * n, out, out + n * out_b};
}

void emit_swiglu_vector(sim::CoreBuilder& b, const SwigluShape& s, const SwigluUb& u, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  const int64_t per_instr = kMaxRepeat * kRepeatBytes / 4;  // fp32 elements per vector instruction
  // One vector instruction stream over n elements starting at UB offsets (flat views).
  auto vec = [&](VecOp op, DType dt, uint64_t dst, DType dst_t, uint64_t src, uint64_t src2, int64_t count, double scalar = 0) {
    for (int64_t done = 0; done < count; done += per_instr) {
      const int64_t cnt = std::min(per_instr, count - done);
      sim::Operands o;
      o.src = {src + done * sim::dtype_bytes(dt), 0, 0, 0, TileLayout::Flat, dt};
      o.src2 = {src2 + done * sim::dtype_bytes(dt), 0, 0, 0, TileLayout::Flat, dt};
      o.dst = {dst + done * sim::dtype_bytes(dst_t), 0, 0, 0, TileLayout::Flat, dst_t};
      o.scalar = scalar;
      b.vec(op, dt, uint32_t(cnt), o);
    }
  };
  uint64_t g = u.g, up = u.u;
  if (s.in != DType::Fp32) {
    vec(VecOp::Cast, s.in, u.g32, DType::Fp32, u.g, u.g, n);
    vec(VecOp::Cast, s.in, u.u32, DType::Fp32, u.u, u.u, n);
    g = u.g32, up = u.u32;
  }
  if (s.clamp) {
    vec(VecOp::Mins, DType::Fp32, g, DType::Fp32, g, g, n, *s.clamp);
    vec(VecOp::Maxs, DType::Fp32, up, DType::Fp32, up, up, n, -*s.clamp);
    vec(VecOp::Mins, DType::Fp32, up, DType::Fp32, up, up, n, *s.clamp);
  }
  // silu(g) = g / (1 + exp(-g)), then times u.
  vec(VecOp::Muls, DType::Fp32, u.t, DType::Fp32, g, g, n, -1.0);
  vec(VecOp::Exp, DType::Fp32, u.t, DType::Fp32, u.t, u.t, n);
  vec(VecOp::Adds, DType::Fp32, u.t, DType::Fp32, u.t, u.t, n, 1.0);
  vec(VecOp::Div, DType::Fp32, u.t, DType::Fp32, g, u.t, n);
  vec(VecOp::Mul, DType::Fp32, u.t, DType::Fp32, u.t, up, n);
  if (s.row_weights) {
    for (int64_t r = 0; r < rows; ++r) {
      b.scalar(1);  // the scalar unit loads the row's weight from UB
      for (int64_t done = 0; done < cols; done += per_instr) {
        const int64_t cnt = std::min(per_instr, cols - done);
        sim::Operands o;
        o.src = {u.t + (r * cols + done) * 4, 0, 0, 0, TileLayout::Flat, DType::Fp32};
        o.dst = o.src;
        o.src2 = {u.w + r * 4, 0, 0, 0, TileLayout::Flat, DType::Fp32};
        o.scalar_from_src2 = true;
        b.vec(VecOp::Muls, DType::Fp32, uint32_t(cnt), o);
      }
    }
  }
  if (s.out == DType::Fp32) vec(VecOp::Muls, DType::Fp32, u.out, DType::Fp32, u.t, u.t, n, 1.0);  // move
  else vec(VecOp::Cast, DType::Fp32, u.out, s.out, u.t, u.t, n);
}

std::string SwigluKernel::name() const {
  return fmt::format("swiglu_{}x{}_{}{}", s_.rows, s_.inter, sim::dtype_name(s_.in), s_.clamp ? "_clamp" : "");
}

nlohmann::json SwigluKernel::tiling_json() const {
  return {{"rows_per_tile", t_.rows_per_tile}, {"buffers", t_.buffers}, {"cores", t_.cores}};
}

double SwigluKernel::compulsory_bytes() const {
  return static_cast<double>(s_.rows * s_.inter) * (2 * sim::dtype_bytes(s_.in) + sim::dtype_bytes(s_.out)) +
         (s_.row_weights ? 4.0 * s_.rows : 0.0);
}

double SwigluKernel::peak_flops_per_cycle(const sim::HardwareSpec& hw) const {
  return hw.aiv.vec_rate[static_cast<int>(VecOp::Mul)][static_cast<int>(DType::Fp32)] * hw.num_aiv;
}

double SwigluKernel::estimated_instructions() const {
  const double tiles = static_cast<double>(ceil_div(s_.rows, t_.rows_per_tile));
  const double per_op = static_cast<double>(ceil_div(t_.rows_per_tile * s_.inter * 4, kMaxRepeat * kRepeatBytes));
  return tiles * (12 + per_op * (kVectorOpsPerRow + (s_.clamp ? 3 : 0)) + (s_.row_weights ? 2.0 * t_.rows_per_tile : 0.0));
}

Status SwigluKernel::can_implement(const sim::HardwareSpec& hw) const {
  for (VecOp op : {VecOp::Muls, VecOp::Exp, VecOp::Adds, VecOp::Div, VecOp::Mul, VecOp::Maxs, VecOp::Mins})
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(DType::Fp32)] > 0))
      return Status::bad("hardware", fmt::format("{} has no fp32 vector {}", hw.name, sim::vec_op_name(op)));
  for (DType d : {s_.in, DType::Fp32})
    if (d != DType::Fp32 && !(hw.aiv.vec_rate[static_cast<int>(VecOp::Cast)][static_cast<int>(d)] > 0))
      return Status::bad("workload.dtype", fmt::format("{} cannot cast {} to fp32", hw.name, sim::dtype_name(d)));
  if ((s_.inter * sim::dtype_bytes(s_.in)) % 32 || (s_.inter * sim::dtype_bytes(s_.out)) % 32)
    return Status::bad("workload.inter", fmt::format("a row of {} elements is not a whole number of 32-byte UB blocks", s_.inter));
  if (t_.buffers < 1 || t_.buffers > hw.sync.event_ids)
    return Status::bad("tiling.buffers", fmt::format("buffers must be 1..{}, found {}", hw.sync.event_ids, t_.buffers));
  const int64_t ub = t_.buffers * ub_bytes_per_set(s_, t_.rows_per_tile);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.rows_per_tile", fmt::format("{} buffers x {} rows need {} B of UB, more than its {} B", t_.buffers,
                                                           t_.rows_per_tile, ub, hw.aiv.ub_bytes));
  if (t_.cores < 1 || t_.cores > hw.num_aiv)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} AIVs on {}, found {}", hw.num_aiv, hw.name, t_.cores));
  return Status::good();
}

std::vector<TensorInfo> SwigluKernel::tensors() const {
  GmAllocator gm;
  std::vector<TensorInfo> out;
  out.push_back({"gate_up", s_.in, s_.rows, 2 * s_.inter, TensorLayout::RowMajor,
                 gm.alloc(s_.rows * 2 * s_.inter * sim::dtype_bytes(s_.in)), false});
  if (s_.row_weights) out.push_back({"weights", DType::Fp32, 1, s_.rows, TensorLayout::RowMajor, gm.alloc(s_.rows * 4), false});
  out.push_back({"out", s_.out, s_.rows, s_.inter, TensorLayout::RowMajor, gm.alloc(s_.rows * s_.inter * sim::dtype_bytes(s_.out)), true});
  return out;
}

sim::Program SwigluKernel::lower(const sim::HardwareSpec&, bool functional) const {
  const auto tensor = tensors();
  const uint64_t gu = tensor[0].addr, w_addr = s_.row_weights ? tensor[1].addr : 0, out_addr = tensor.back().addr;
  const int64_t in_b = sim::dtype_bytes(s_.in), out_b = sim::dtype_bytes(s_.out), I = s_.inter;
  sim::Program prog;
  prog.name = name();
  prog.gm_footprint_bytes = tensor.back().addr + static_cast<uint64_t>(s_.rows * I * out_b);
  const int64_t tiles = ceil_div(s_.rows, t_.rows_per_tile);
  const int cores = static_cast<int>(std::min<int64_t>(t_.cores, tiles));
  const int nb = t_.buffers;
  const uint64_t set = static_cast<uint64_t>(ub_bytes_per_set(s_, t_.rows_per_tile));
  const int64_t rpt = t_.rows_per_tile;
  auto ub = [&](int q) { return swiglu_ub(s_, q * set, rpt * I); };
  const uint64_t g_off = s_.gate_first ? 0 : static_cast<uint64_t>(I * in_b);
  const uint64_t u_off = s_.gate_first ? static_cast<uint64_t>(I * in_b) : 0;

  for (int c = 0; c < cores; ++c) {
    const int64_t first = tiles * c / cores, last = tiles * (c + 1) / cores;
    sim::CoreProgram cp{sim::CoreKind::Aiv, c, {}, {}};
    sim::CoreBuilder b(cp, functional);
    for (int q = 0; q < nb; ++q) {
      b.set_flag(Pipe::V, Pipe::Mte2, q);
      b.set_flag(Pipe::Mte3, Pipe::V, q);
    }
    for (int64_t t = first; t < last; ++t) {
      const int q = static_cast<int>((t - first) % nb);
      const SwigluUb u = ub(q);
      const int64_t row0 = t * rpt, rows = std::min(rpt, s_.rows - row0), n = rows * I;
      b.wait_flag(Pipe::V, Pipe::Mte2, q);
      // The g and u halves: `rows` strided rows each.
      for (auto [half, dst] : {std::pair{g_off, u.g}, {u_off, u.u}}) {
        sim::Operands o;
        o.rows = uint32_t(rows), o.cols = uint32_t(I);
        o.src = {gu + row0 * 2 * I * in_b + half, uint32_t(2 * I), 0, 0, TileLayout::Nd, s_.in};
        o.dst = {dst, uint32_t(I), 0, 0, TileLayout::Nd, s_.in};
        b.copy(Path::GmToUb, uint32_t(n * in_b), sim::GmRegion{o.src.offset, uint32_t(rows), uint32_t(I * in_b), uint64_t(2 * I * in_b)}, o);
      }
      if (s_.row_weights) {
        sim::Operands o;
        o.rows = 1, o.cols = uint32_t(rows);
        o.src = {w_addr + row0 * 4, 0, 0, 0, TileLayout::Flat, DType::Fp32};
        o.dst = {u.w, 0, 0, 0, TileLayout::Flat, DType::Fp32};
        b.copy(Path::GmToUb, uint32_t(rows * 4), sim::GmRegion{o.src.offset, 1, uint32_t(rows * 4), uint64_t(rows * 4)}, o);
      }
      b.set_flag(Pipe::Mte2, Pipe::V, q);
      b.wait_flag(Pipe::Mte2, Pipe::V, q);
      b.wait_flag(Pipe::Mte3, Pipe::V, q);
      emit_swiglu_vector(b, s_, u, rows, I);
      b.set_flag(Pipe::V, Pipe::Mte2, q);
      b.set_flag(Pipe::V, Pipe::Mte3, q);
      b.wait_flag(Pipe::V, Pipe::Mte3, q);
      sim::Operands o;
      o.rows = 1, o.cols = uint32_t(n);
      o.src = {u.out, 0, 0, 0, TileLayout::Flat, s_.out};
      o.dst = {out_addr + row0 * I * out_b, 0, 0, 0, TileLayout::Flat, s_.out};
      b.copy(Path::UbToGm, uint32_t(n * out_b), sim::GmRegion{o.dst.offset, 1, uint32_t(n * out_b), uint64_t(n * out_b)}, o);
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

Golden SwigluKernel::reference(const std::vector<std::vector<double>>& in) const {
  const int64_t R = s_.rows, I = s_.inter;
  Golden g;
  g.exact.resize(static_cast<size_t>(R * I));
  ref::swiglu(R, I, in[0].data(), g.exact.data(), s_.clamp,
              s_.gate_first ? ref::HalfOrder::GateFirst : ref::HalfOrder::UpFirst);
  if (s_.row_weights)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < I; ++i) g.exact[r * I + i] *= in[1][r];
  // The kernel's rounding points: every vector step in fp32, one cast to the output type.
  const num::Format out = sim::number_format(s_.out);
  g.same_precision.resize(g.exact.size());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = 0; i < I; ++i) {
      const double* row = in[0].data() + r * 2 * I;
      float gv = static_cast<float>(s_.gate_first ? row[i] : row[I + i]);
      float uv = static_cast<float>(s_.gate_first ? row[I + i] : row[i]);
      if (s_.clamp) {
        const float L = static_cast<float>(*s_.clamp);
        gv = std::min(gv, L);
        uv = std::min(std::max(uv, -L), L);
      }
      float t = static_cast<float>(std::exp(static_cast<double>(-gv)));
      t = gv / (t + 1.0f);
      t = t * uv;
      if (s_.row_weights) t = t * static_cast<float>(in[1][r]);
      g.same_precision[r * I + i] = num::round_to(out, t);
    }
  return g;
}

SwigluTiling default_swiglu_tiling(const SwigluShape& s, const sim::HardwareSpec& hw) {
  // The most rows (up to 8) whose two buffer sets fit UB, on every AIV that gets a tile.
  SwigluTiling t;
  t.rows_per_tile = 1;
  while (t.rows_per_tile < 8 && 2 * SwigluKernel::ub_bytes_per_set(s, t.rows_per_tile * 2) <= hw.aiv.ub_bytes) t.rows_per_tile *= 2;
  t.cores = static_cast<int>(std::clamp<int64_t>(ceil_div(s.rows, t.rows_per_tile), 1, hw.num_aiv));
  return t;
}

SwigluTiling parse_swiglu_tiling(const YamlNode& tiling, SwigluTiling t) {
  if (auto r = tiling.get("rows_per_tile")) t.rows_per_tile = r->as_positive_int();
  if (auto bu = tiling.get("buffers")) t.buffers = static_cast<int>(bu->as_positive_int());
  if (auto c = tiling.get("cores")) t.cores = static_cast<int>(c->as_positive_int());
  return t;
}

std::unique_ptr<Kernel> make_swiglu(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  SwigluShape s;
  s.rows = w.at("rows").as_positive_int();
  s.inter = w.at("inter").as_positive_int();
  if (s.rows > (int64_t(1) << 30) || s.inter > (int64_t(1) << 24))
    w.fail("rows beyond 2^30 or inter beyond 2^24 do not fit the instruction fields");
  const std::vector<std::string> types{"fp16", "bf16", "fp32"};
  s.in = *sim::dtype_from_name(w.at("dtype").as_enum(types));
  s.out = s.in;
  if (auto o = w.get("out_dtype")) s.out = *sim::dtype_from_name(o->as_enum(types));
  if (auto c = w.get("clamp")) s.clamp = c->as_positive_double();
  if (auto h = w.get("halves")) s.gate_first = h->as_enum({"gate_first", "up_first"}) == "gate_first";
  if (auto rw = w.get("row_weights")) s.row_weights = rw->as_bool();
  SwigluTiling t = default_swiglu_tiling(s, hw);
  if (tiling) t = parse_swiglu_tiling(*tiling, t);
  return std::make_unique<SwigluKernel>(s, t, !tiling.has_value());
}

std::unique_ptr<Kernel> SwigluKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec&) const {
  return std::make_unique<SwigluKernel>(s_, parse_swiglu_tiling(tiling, t_), false);
}

}  // namespace npusim::kernels
