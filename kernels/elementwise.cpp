#include "kernels/elementwise.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "common/errors.hpp"
#include "common/numerics.hpp"
#include "kernels/reference/reference.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;

namespace {
constexpr int64_t kMaxRepeat = 255;   // repeats one vector instruction can take
constexpr int64_t kRepeatBytes = 256;  // one repeat covers 256 B of the widest operand
}  // namespace

ElementwiseTiling default_elementwise_tiling(const ElementwiseShape& s, const sim::HardwareSpec& hw) {
  ElementwiseTiling t;
  t.buffers = 2;
  t.cores = hw.num_aiv;
  const int64_t per_elem = (sim::vec_op_sources(s.op) ? sim::vec_op_sources(s.op) : 0) * sim::dtype_bytes(s.in) +
                           sim::dtype_bytes(s.out);
  int64_t tile = std::min<int64_t>(32768 / std::max(sim::dtype_bytes(s.in), sim::dtype_bytes(s.out)),
                                   hw.aiv.ub_bytes / (t.buffers * per_elem));
  tile = tile / 128 * 128;
  const int64_t per_core = ceil_div(s.elems, t.cores);
  t.tile_elems = std::max<int64_t>(128, std::min(tile, round_up(per_core, 128)));
  return t;
}

std::string ElementwiseKernel::name() const {
  std::string dims;
  for (size_t i = 0; i < s_.dims.size(); ++i) {
    if (i) dims += 'x';
    dims += std::to_string(s_.dims[i]);
  }
  return fmt::format("{}_{}_{}", sim::vec_op_name(s_.op), dims, sim::dtype_name(s_.in));
}

nlohmann::json ElementwiseKernel::tiling_json() const {
  return {{"tile_elems", t_.tile_elems}, {"buffers", t_.buffers}, {"cores", t_.cores}};
}

double ElementwiseKernel::compulsory_bytes() const {
  return static_cast<double>(s_.elems) * (inputs() * sim::dtype_bytes(s_.in) + sim::dtype_bytes(s_.out));
}

Status ElementwiseKernel::can_implement(const sim::HardwareSpec& hw) const {
  const int in_b = sim::dtype_bytes(s_.in), out_b = sim::dtype_bytes(s_.out);
  if (!(hw.aiv.vec_rate[static_cast<int>(s_.op)][static_cast<int>(s_.in)] > 0))
    return Status::bad("workload.dtype", fmt::format("{} has no vector {} for {}", hw.name, sim::vec_op_name(s_.op),
                                                     sim::dtype_name(s_.in)));
  if ((t_.tile_elems * in_b) % 32 || (t_.tile_elems * out_b) % 32)
    return Status::bad("tiling.tile_elems", fmt::format("a tile of {} elements is not a multiple of the 32-byte UB block", t_.tile_elems));
  if (t_.buffers < 1 || t_.buffers > hw.sync.event_ids)
    return Status::bad("tiling.buffers", fmt::format("buffers must be 1..{}, found {}", hw.sync.event_ids, t_.buffers));
  int64_t ub = static_cast<int64_t>(t_.buffers) * t_.tile_elems * (inputs() * in_b + out_b);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.tile_elems", fmt::format("{} buffers x {} elements x ({} inputs x {} B + {} B out) = {} B exceed UB ({} B)",
                                                        t_.buffers, t_.tile_elems, inputs(), in_b, out_b, ub, hw.aiv.ub_bytes));
  if (t_.cores < 1 || t_.cores > hw.num_aiv)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} AIVs on {}, found {}", hw.num_aiv, hw.name, t_.cores));
  return Status::good();
}

std::vector<TensorInfo> ElementwiseKernel::tensors() const {
  GmAllocator gm;
  std::vector<TensorInfo> out;
  for (int i = 0; i < inputs(); ++i)
    out.push_back({i == 0 ? "x" : "y", s_.in, 1, s_.elems, TensorLayout::RowMajor,
                   gm.alloc(s_.elems * sim::dtype_bytes(s_.in)), false});
  out.push_back({"out", s_.out, 1, s_.elems, TensorLayout::RowMajor, gm.alloc(s_.elems * sim::dtype_bytes(s_.out)), true});
  return out;
}

sim::Program ElementwiseKernel::lower(const sim::HardwareSpec&, bool functional) const {
  using sim::TileLayout;
  const int in_b = sim::dtype_bytes(s_.in), out_b = sim::dtype_bytes(s_.out);
  const auto tensor = tensors();
  GmAllocator gm;
  for (const auto& t : tensor) gm.alloc(t.cols * sim::dtype_bytes(t.dtype));
  sim::Program prog;
  prog.name = name();
  prog.gm_footprint_bytes = gm.footprint();

  // Whole tiles are dealt out evenly; the last core's last tile may be partial.
  const int64_t tiles = ceil_div(s_.elems, t_.tile_elems);
  const int cores = static_cast<int>(std::min<int64_t>(t_.cores, tiles));
  const int64_t per_instr = kMaxRepeat * kRepeatBytes / std::max(in_b, out_b);
  const int nb = t_.buffers;
  // UB: buffer set q holds each input tile, then the output tile.
  const uint64_t set_bytes = static_cast<uint64_t>(t_.tile_elems) * (inputs() * in_b + out_b);
  auto ub_in = [&](int q, int i) { return q * set_bytes + static_cast<uint64_t>(i) * t_.tile_elems * in_b; };
  auto ub_out = [&](int q) { return q * set_bytes + static_cast<uint64_t>(inputs()) * t_.tile_elems * in_b; };
  const uint64_t out_base = tensor.back().addr;
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
      const int64_t off = t * t_.tile_elems, n = std::min(t_.tile_elems, s_.elems - off);
      b.wait_flag(Pipe::V, Pipe::Mte2, q);
      for (int i = 0; i < inputs(); ++i) {
        sim::Operands o;
        o.rows = 1, o.cols = uint32_t(n);
        o.src = {tensor[i].addr + off * in_b, 0, 0, 0, TileLayout::Flat, s_.in};
        o.dst = {ub_in(q, i), 0, 0, 0, TileLayout::Flat, s_.in};
        b.copy(Path::GmToUb, uint32_t(n * in_b),
               sim::GmRegion{o.src.offset, 1, uint32_t(n * in_b), uint64_t(n * in_b)}, o);
      }
      b.set_flag(Pipe::Mte2, Pipe::V, q);
      b.wait_flag(Pipe::Mte2, Pipe::V, q);
      b.wait_flag(Pipe::Mte3, Pipe::V, q);
      for (int64_t done = 0; done < n; done += per_instr) {
        sim::Operands o;
        o.src = {ub_in(q, 0) + done * in_b, 0, 0, 0, TileLayout::Flat, s_.in};
        o.src2 = {ub_in(q, inputs() > 1 ? 1 : 0) + done * in_b, 0, 0, 0, TileLayout::Flat, s_.in};
        o.dst = {ub_out(q) + done * out_b, 0, 0, 0, TileLayout::Flat, s_.out};
        b.vec(s_.op, s_.in, uint32_t(std::min(per_instr, n - done)), o);
      }
      b.set_flag(Pipe::V, Pipe::Mte2, q);
      b.set_flag(Pipe::V, Pipe::Mte3, q);
      b.wait_flag(Pipe::V, Pipe::Mte3, q);
      sim::Operands o;
      o.rows = 1, o.cols = uint32_t(n);
      o.src = {ub_out(q), 0, 0, 0, TileLayout::Flat, s_.out};
      o.dst = {out_base + off * out_b, 0, 0, 0, TileLayout::Flat, s_.out};
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

Golden ElementwiseKernel::reference(const std::vector<std::vector<double>>& in) const {
  const size_t n = static_cast<size_t>(s_.elems);
  Golden g;
  g.exact.resize(n);
  switch (s_.op) {
    case sim::VecOp::Add: ref::binary(ref::Binary::Add, in[0].data(), in[1].data(), n, g.exact.data()); break;
    case sim::VecOp::Mul: ref::binary(ref::Binary::Mul, in[0].data(), in[1].data(), n, g.exact.data()); break;
    case sim::VecOp::Exp: ref::unary(ref::Unary::Exp, in[0].data(), n, g.exact.data()); break;
    case sim::VecOp::Relu: ref::unary(ref::Unary::Relu, in[0].data(), n, g.exact.data()); break;
    case sim::VecOp::Cast: g.exact = in[0]; break;
    default: throw InternalError("no reference for this elementwise op");
  }
  // The vector unit rounds each result once, to the output type.
  const num::Format out = sim::number_format(s_.out);
  g.same_precision.resize(n);
  for (size_t i = 0; i < n; ++i) g.same_precision[i] = num::round_to(out, g.exact[i]);
  return g;
}

ElementwiseTiling parse_elementwise_tiling(const YamlNode& tiling, ElementwiseTiling t) {
  if (auto te = tiling.get("tile_elems")) t.tile_elems = te->as_positive_int();
  if (auto bu = tiling.get("buffers")) t.buffers = static_cast<int>(bu->as_positive_int());
  if (auto c = tiling.get("cores")) t.cores = static_cast<int>(c->as_positive_int());
  return t;
}

std::unique_ptr<Kernel> make_elementwise(const YamlNode& w, const std::optional<YamlNode>& tiling,
                                         const sim::HardwareSpec& hw) {
  ElementwiseShape s;
  s.op = *sim::vec_op_from_name(w.at("op").as_string());
  YamlNode shape = w.at("shape");
  s.dims = shape.as_int_list();
  if (s.dims.empty()) shape.fail("expected a non-empty list of dimensions");
  s.elems = 1;
  for (auto d : s.dims) {
    if (d <= 0) shape.fail(fmt::format("dimensions must be > 0, found {}", d));
    if (s.elems > (int64_t(1) << 40) / d) shape.fail("more than 2^40 elements are not supported");
    s.elems *= d;
  }
  const std::vector<std::string> types{"fp16", "bf16", "fp32", "int32"};
  s.in = *sim::dtype_from_name(w.at("dtype").as_enum(types));
  s.out = s.in;
  if (auto o = w.get("out_dtype")) {
    s.out = *sim::dtype_from_name(o->as_enum(types));
    if (s.op != sim::VecOp::Cast && s.out != s.in) o->fail("out_dtype differs from dtype only for op: cast");
  } else if (s.op == sim::VecOp::Cast) {
    w.fail("op cast needs out_dtype");
  }
  if (s.op == sim::VecOp::Cast && s.out == s.in) w.at("out_dtype").fail("a cast must change the dtype");
  ElementwiseTiling t = default_elementwise_tiling(s, hw);
  if (tiling) t = parse_elementwise_tiling(*tiling, t);
  return std::make_unique<ElementwiseKernel>(std::move(s), t, !tiling.has_value());
}

std::unique_ptr<Kernel> ElementwiseKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec&) const {
  return std::make_unique<ElementwiseKernel>(s_, parse_elementwise_tiling(tiling, t_), false);
}

}  // namespace npusim::kernels
