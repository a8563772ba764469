#include "kernels/grouped_gemm_swiglu.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "kernels/cube_vector.hpp"
#include "kernels/grouped_gemm.hpp"
#include "kernels/routing.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;

namespace {

// One item: rows [row0, row0 + mb) of expert `grp`, intermediate columns [col0, col0 + nb).
struct Item {
  size_t grp;
  int64_t row0, mb, col0, nb;
};

std::vector<Item> items_of(const GroupedGemmSwigluShape& s, const GemmTiling& t) {
  std::vector<Item> v;
  for_each_group_block(s.rows, s.act.inter, t, [&](size_t g, int64_t r0, int64_t mb, int64_t c0, int64_t nb) {
    v.push_back({g, r0, mb, c0, nb});
  });
  return v;
}

int64_t total_rows(const GroupedGemmSwigluShape& s) { return std::accumulate(s.rows.begin(), s.rows.end(), int64_t{0}); }

struct Gm {
  uint64_t a = 0;
  std::vector<uint64_t> b;
  uint64_t w = 0, out = 0, footprint = 0;
};

Gm place(const GroupedGemmSwigluShape& s) {
  const int64_t e = sim::dtype_bytes(s.gemm.in), total = total_rows(s);
  GmAllocator gm;
  Gm g;
  g.a = gm.alloc(total * s.gemm.k * e);
  for (size_t i = 0; i < s.rows.size(); ++i) g.b.push_back(gm.alloc(s.gemm.k * s.gemm.n * e));
  if (s.act.row_weights) g.w = gm.alloc(total * 4);
  g.out = gm.alloc(total * s.act.inter * sim::dtype_bytes(s.act.out));
  g.footprint = gm.footprint();
  return g;
}

// The SwiGLU of one AIV sub-tile: `rows` x n1 elements (sizes the UB buffer sets).
SwigluShape tile_shape(const GroupedGemmSwigluShape& s, int64_t n1) {
  SwigluShape t = s.act;
  t.inter = n1;
  return t;
}

}  // namespace

std::string GroupedGemmSwigluKernel::name() const {
  return fmt::format("gmm_swiglu_{}x{}x{}x{}_{}{}", s_.rows.size(), total_rows(s_), s_.act.inter, s_.gemm.k,
                     sim::dtype_name(s_.gemm.in), s_.act.clamp ? "_clamp" : "");
}

nlohmann::json GroupedGemmSwigluKernel::tiling_json() const {
  nlohmann::json j = GemmKernel(s_.gemm, t_.gemm, default_).tiling_json();
  j["rows_per_tile"] = t_.rows_per_tile;
  j["buffers"] = t_.buffers;
  j["slots"] = t_.slots;
  return j;
}

nlohmann::json GroupedGemmSwigluKernel::details() const {
  return {{"routing", {{"tokens_per_expert", s_.rows}, {"imbalance", imbalance(s_.rows)}}}};
}

double GroupedGemmSwigluKernel::flops() const {
  const double rows = static_cast<double>(total_rows(s_));
  return 2.0 * rows * s_.gemm.n * s_.gemm.k + rows * s_.act.inter * (s_.act.clamp ? 8 : 5);
}

double GroupedGemmSwigluKernel::compulsory_bytes() const {
  const int64_t used = std::count_if(s_.rows.begin(), s_.rows.end(), [](int64_t r) { return r > 0; });
  const double rows = static_cast<double>(total_rows(s_));
  return (rows * s_.gemm.k + static_cast<double>(used) * s_.gemm.k * s_.gemm.n) * sim::dtype_bytes(s_.gemm.in) +
         rows * s_.act.inter * sim::dtype_bytes(s_.act.out) + (s_.act.row_weights ? 4.0 * rows : 0.0);
}

double GroupedGemmSwigluKernel::estimated_instructions() const {
  double total = GroupedGemmKernel(s_.gemm, s_.rows, t_.gemm, false).estimated_instructions();
  const double items = static_cast<double>(items_of(s_, t_.gemm).size());
  // Per item: the cross-core handshakes; per AIV sub-tile: copies, flags and ~12 vector ops.
  const double tiles = static_cast<double>(ceil_div(total_rows(s_), t_.rows_per_tile)) + 2 * items;
  return total + 6 * items + tiles * (14 + (s_.act.row_weights ? 2.0 * t_.rows_per_tile : 0.0));
}

int64_t grouped_gemm_swiglu_ub_bytes(const GroupedGemmSwigluShape& s, const GroupedGemmSwigluTiling& t,
                                     const sim::HardwareSpec& hw) {
  const CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t.slots);
  const int64_t n1 = t.gemm.n1;
  const int64_t slots = cv.via_ub ? t.slots * 2 * cv.max_aiv_rows(t.gemm.m1) * n1 * sim::dtype_bytes(s.act.in) : 0;
  return slots + t.buffers * SwigluKernel::ub_bytes_per_set(tile_shape(s, n1), t.rows_per_tile);
}

Status GroupedGemmSwigluKernel::can_implement(const sim::HardwareSpec& hw) const {
  GemmShape g = s_.gemm;
  g.m = std::max<int64_t>(1, total_rows(s_));
  if (Status st = check_gemm_tiling(g, t_.gemm, hw); !st.ok) return st;
  SwigluTiling vt{t_.rows_per_tile, t_.buffers, 1};
  if (Status st = SwigluKernel(tile_shape(s_, t_.gemm.n1), vt, false).can_implement(hw); !st.ok) return st;
  const int64_t I = s_.act.inter;
  if ((I * sim::dtype_bytes(s_.act.in)) % 32 || (I * sim::dtype_bytes(s_.act.out)) % 32)
    return Status::bad("workload.inter", fmt::format("inter = {} leaves item rows that are not whole 32-byte UB blocks", I));
  const CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t_.slots);
  if (Status st = cv.check(hw); !st.ok) return st;
  const int64_t ub = grouped_gemm_swiglu_ub_bytes(s_, t_, hw);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.rows_per_tile",
                       fmt::format("{}{} buffers x {} rows of {} columns need {} B of UB, more than its {} B",
                                   cv.via_ub ? fmt::format("{} slots of the L0C->UB half-block and ", t_.slots) : "",
                                   t_.buffers, t_.rows_per_tile, t_.gemm.n1, ub, hw.aiv.ub_bytes));
  return Status::good();
}

std::vector<TensorInfo> GroupedGemmSwigluKernel::tensors() const {
  const Gm g = place(s_);
  const int64_t total = total_rows(s_);
  std::vector<TensorInfo> out{{"a", s_.gemm.in, total, s_.gemm.k, s_.gemm.a, g.a, false}};
  for (size_t i = 0; i < s_.rows.size(); ++i)
    out.push_back({fmt::format("b{}", i), s_.gemm.in, s_.gemm.k, s_.gemm.n, s_.gemm.b, g.b[i], false});
  if (s_.act.row_weights) out.push_back({"weights", DType::Fp32, 1, total, TensorLayout::RowMajor, g.w, false});
  out.push_back({"out", s_.act.out, total, s_.act.inter, TensorLayout::RowMajor, g.out, true});
  return out;
}

sim::Program GroupedGemmSwigluKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  const Gm g = place(s_);
  const int nbuf = t_.buffers;
  const int64_t I = s_.act.inter, n1 = t_.gemm.n1, m1 = t_.gemm.m1, rpt = t_.rows_per_tile;
  const int64_t eh = sim::dtype_bytes(s_.act.in), eo = sim::dtype_bytes(s_.act.out);
  const std::vector<Item> items = items_of(s_, t_.gemm);
  const int64_t nitems = static_cast<int64_t>(items.size());
  const int cores = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t_.gemm.cores, nitems)));
  // A slot holds an item's [gate | up] block: in GM m1 x 2 n1 row-major per AIC; in UB each AIV's
  // rows, g then u, each h_max x n1. The AIV buffer sets follow the UB slots.
  CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t_.slots);
  const int A = cv.aiv_per_aic;
  const int64_t h_max = cv.max_aiv_rows(m1);
  cv.ws = g.footprint, cv.ws_slot_bytes = static_cast<uint64_t>(m1 * 2 * n1 * eh);
  cv.ub_slot_bytes = cv.via_ub ? static_cast<uint64_t>(2 * h_max * n1 * eh) : 0;
  const SwigluShape ts = tile_shape(s_, n1);
  const uint64_t set_bytes = static_cast<uint64_t>(SwigluKernel::ub_bytes_per_set(ts, rpt)), sets = cv.slots * cv.ub_slot_bytes;
  const int64_t gate_col = s_.act.gate_first ? 0 : I, up_col = s_.act.gate_first ? I : 0;

  GemmBlocks blocks;
  blocks.name = name();
  blocks.a = g.a, blocks.a_rows = total_rows(s_);
  blocks.footprint = cv.via_ub ? g.footprint : cv.ws + cores * cv.slots * cv.ws_slot_bytes;
  blocks.scalar_cycles_per_core = static_cast<uint32_t>(hw.scalar_group_cycles * static_cast<double>(s_.rows.size()));
  blocks.item_blocks = 2;
  for (const Item& it : items) {
    blocks.list.push_back({it.row0, it.mb, gate_col + it.col0, it.nb, g.b[it.grp]});
    blocks.list.push_back({it.row0, it.mb, up_col + it.col0, it.nb, g.b[it.grp]});
  }
  cv.install(blocks);
  blocks.write_c = [&](sim::CoreBuilder& b, int core, int64_t n, const GemmBlock& blk, const sim::TileRef& c_tile) {
    const bool up = (blk.col0 >= I) == s_.act.gate_first;
    cv.write_block(b, core, n, c_tile, blk.mb, blk.nb, s_.act.in, up ? n1 : 0, 2 * n1,
                   up ? static_cast<uint64_t>(h_max * n1 * eh) : 0);
  };
  sim::Program prog = lower_gemm_blocks(s_.gemm, t_.gemm, blocks, hw, functional);
  cv.drain(prog, cores, nitems, functional);

  // The AIVs: AIV c A + k takes share k of the rows of every item of AIC c.
  const Pipe slot_reader = cv.via_ub ? Pipe::V : Pipe::Mte2;
  for (int c = 0; c < cores; ++c)
    for (int k = 0; k < A; ++k) {
      sim::CoreProgram cp{sim::CoreKind::Aiv, c * A + k, {}, {}};
      sim::CoreBuilder b(cp, functional);
      for (int q = 0; q < nbuf; ++q) {
        b.set_flag(Pipe::V, Pipe::Mte2, q);
        b.set_flag(Pipe::Mte3, Pipe::V, q);
      }
      int64_t tile = 0;
      for (int64_t idx = c, n = 0; idx < nitems; idx += cores, ++n) {
        const Item& it = items[static_cast<size_t>(idx)];
        const auto [r_begin, r_end] = cv.aiv_rows(it.mb, k);
        b.cross_wait(slot_reader, CubeVectorSlots::kReady);
        if (r_end <= r_begin) {
          b.cross_set(slot_reader, 2, CubeVectorSlots::free_flag(k));
          continue;
        }
        for (int64_t r = r_begin; r < r_end; r += rpt, ++tile) {
          const int64_t rows = std::min(rpt, r_end - r);
          const bool last = r + rows >= r_end;
          const int q = static_cast<int>(tile % nbuf);
          SwigluUb u = swiglu_ub(ts, sets + q * set_bytes, rpt * n1);
          b.wait_flag(Pipe::V, Pipe::Mte2, q);
          if (cv.via_ub) {
            const uint64_t slot = cv.ub_slot(n) + static_cast<uint64_t>((r - r_begin) * it.nb * eh);
            u.g = slot, u.u = slot + h_max * n1 * eh;
          } else {
            for (auto [half, dst] : {std::pair{int64_t{0}, u.g}, {n1, u.u}}) {
              const uint64_t src = cv.ws_slot(c, n) + static_cast<uint64_t>((r * 2 * n1 + half) * eh);
              sim::Operands o;
              o.rows = uint32_t(rows), o.cols = uint32_t(it.nb);
              o.src = {src, uint32_t(2 * n1), 0, 0, TileLayout::Nd, s_.act.in};
              o.dst = {dst, uint32_t(it.nb), 0, 0, TileLayout::Nd, s_.act.in};
              b.copy(Path::GmToUb, uint32_t(rows * it.nb * eh),
                     sim::GmRegion{src, uint32_t(rows), uint32_t(it.nb * eh), uint64_t(2 * n1 * eh)}, o);
            }
          }
          if (s_.act.row_weights) {
            const uint64_t src = g.w + static_cast<uint64_t>((it.row0 + r) * 4);
            sim::Operands o;
            o.rows = 1, o.cols = uint32_t(rows);
            o.src = {src, 0, 0, 0, TileLayout::Flat, DType::Fp32};
            o.dst = {u.w, 0, 0, 0, TileLayout::Flat, DType::Fp32};
            b.copy(Path::GmToUb, uint32_t(rows * 4), sim::GmRegion{src, 1, uint32_t(rows * 4), uint64_t(rows * 4)}, o);
          }
          b.set_flag(Pipe::Mte2, Pipe::V, q);
          if (last && !cv.via_ub) b.cross_set(Pipe::Mte2, 2, CubeVectorSlots::free_flag(k));  // the workspace slot is read
          b.wait_flag(Pipe::Mte2, Pipe::V, q);
          b.wait_flag(Pipe::Mte3, Pipe::V, q);
          emit_swiglu_vector(b, s_.act, u, rows, it.nb);
          if (last && cv.via_ub) b.cross_set(Pipe::V, 2, CubeVectorSlots::free_flag(k));  // the UB slot is consumed
          b.set_flag(Pipe::V, Pipe::Mte2, q);
          b.set_flag(Pipe::V, Pipe::Mte3, q);
          b.wait_flag(Pipe::V, Pipe::Mte3, q);
          const uint64_t dst = g.out + static_cast<uint64_t>(((it.row0 + r) * I + it.col0) * eo);
          sim::Operands o;
          o.rows = uint32_t(rows), o.cols = uint32_t(it.nb);
          o.src = {u.out, uint32_t(it.nb), 0, 0, TileLayout::Nd, s_.act.out};
          o.dst = {dst, uint32_t(I), 0, 0, TileLayout::Nd, s_.act.out};
          b.copy(Path::UbToGm, uint32_t(rows * it.nb * eo),
                 sim::GmRegion{dst, uint32_t(rows), uint32_t(it.nb * eo), uint64_t(I * eo)}, o);
          b.set_flag(Pipe::Mte3, Pipe::V, q);
        }
      }
      for (int q = 0; q < nbuf; ++q) {
        b.wait_flag(Pipe::V, Pipe::Mte2, q);
        b.wait_flag(Pipe::Mte3, Pipe::V, q);
      }
      prog.cores.push_back(std::move(cp));
    }
  return prog;
}

Golden GroupedGemmSwigluKernel::reference(const std::vector<std::vector<double>>& in) const {
  // H as the grouped GEMM computes it, then SwiGLU on each of H's references.
  const size_t E = s_.rows.size();
  std::vector<std::vector<double>> gemm_in(in.begin(), in.begin() + 1 + static_cast<std::ptrdiff_t>(E));
  const Golden h = GroupedGemmKernel(s_.gemm, s_.rows, t_.gemm, false).reference(gemm_in);
  SwigluShape as = s_.act;
  as.rows = total_rows(s_);
  const SwigluKernel act(as, SwigluTiling{}, false);
  std::vector<std::vector<double>> x{h.exact};
  if (s_.act.row_weights) x.push_back(in[1 + E]);
  Golden g;
  g.exact = act.reference(x).exact;
  x[0] = h.same_precision;
  g.same_precision = act.reference(x).same_precision;
  return g;
}

GroupedGemmSwigluTiling default_grouped_gemm_swiglu_tiling(const GroupedGemmSwigluShape& s, const sim::HardwareSpec& hw) {
  // The grouped GEMM's default over W13's columns, n1 capped at the intermediate size; the most
  // sub-tile rows (up to 16) whose buffers fit UB beside the slots.
  GroupedGemmSwigluTiling t;
  t.gemm = default_grouped_gemm_tiling(s.gemm, s.rows, hw);
  t.gemm.n1 = t.gemm.n0 = std::min(t.gemm.n1, round_up(s.act.inter, 16));
  t.gemm.cores = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(items_of(s, t.gemm).size()), 1, hw.num_aic));
  t.rows_per_tile = 16;
  while (t.rows_per_tile > 1 && grouped_gemm_swiglu_ub_bytes(s, t, hw) > hw.aiv.ub_bytes) t.rows_per_tile /= 2;
  return t;
}

GroupedGemmSwigluTiling parse_grouped_gemm_swiglu_tiling(const YamlNode& tiling, GroupedGemmSwigluTiling t,
                                                          const GroupedGemmSwigluShape& s, const sim::HardwareSpec& hw) {
  // The GEMM keys over the intermediate columns: n1 counts gate (and up) columns of an item.
  t.gemm = parse_gemm_tiling(tiling, t.gemm, std::max<int64_t>(1, s.act.rows), s.act.inter, hw, s.gemm.in);
  if (auto r = tiling.get("rows_per_tile")) t.rows_per_tile = r->as_positive_int();
  if (auto b = tiling.get("buffers")) t.buffers = static_cast<int>(b->as_positive_int());
  if (auto sl = tiling.get("slots")) t.slots = static_cast<int>(sl->as_positive_int());
  return t;
}

std::unique_ptr<Kernel> make_grouped_gemm_swiglu(const YamlNode& w, const std::optional<YamlNode>& tiling,
                                                 const sim::HardwareSpec& hw) {
  GroupedGemmSwigluShape s;
  s.act.inter = w.at("inter").as_positive_int();
  s.gemm.k = w.at("k").as_positive_int();
  if (s.act.inter > (int64_t(1) << 24) || s.gemm.k > (int64_t(1) << 24))
    w.fail("inter or k beyond 2^24 do not fit the instruction fields");
  s.gemm.n = 2 * s.act.inter;
  s.gemm.in = *sim::dtype_from_name(w.at("dtype").as_enum({"fp16", "bf16"}));
  if (!hw.aic.cube_k0[static_cast<int>(s.gemm.in)])
    w.at("dtype").fail(fmt::format("{} has no {} cube", hw.name, sim::dtype_name(s.gemm.in)));
  s.gemm.out = s.act.in = s.act.out = s.gemm.in;
  if (auto c = w.get("clamp")) s.act.clamp = c->as_positive_double();
  if (auto h = w.get("halves")) s.act.gate_first = h->as_enum({"gate_first", "up_first"}) == "gate_first";
  if (auto rw = w.get("row_weights")) s.act.row_weights = rw->as_bool();
  s.rows = parse_group_rows(w);
  s.act.rows = total_rows(s);
  GroupedGemmSwigluTiling t = default_grouped_gemm_swiglu_tiling(s, hw);
  if (tiling) t = parse_grouped_gemm_swiglu_tiling(*tiling, t, s, hw);
  return std::make_unique<GroupedGemmSwigluKernel>(std::move(s), t, !tiling.has_value());
}

std::unique_ptr<Kernel> GroupedGemmSwigluKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const {
  return std::make_unique<GroupedGemmSwigluKernel>(s_, parse_grouped_gemm_swiglu_tiling(tiling, t_, s_, hw), false);
}

}  // namespace npusim::kernels
