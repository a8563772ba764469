#include "kernels/permute.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "kernels/routing.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;

PermuteKernel::PermuteKernel(PermuteShape s, PermuteTiling t, bool is_default)
    : s_(std::move(s)), t_(t), default_(is_default) {
  perm_.resize(s_.expert_of.size());
  std::iota(perm_.begin(), perm_.end(), 0);
  std::stable_sort(perm_.begin(), perm_.end(), [&](int32_t a, int32_t b) { return s_.expert_of[a] < s_.expert_of[b]; });
}

int64_t PermuteKernel::ub_bytes_per_set(const PermuteShape& s, const PermuteTiling& t) {
  return t.cols_per_tile * sim::dtype_bytes(s.dtype) + (s.weights ? round_up(t.rows_per_tile * 4, 32) : 0);
}

PermuteTiling default_permute_tiling(const PermuteShape& s, const sim::HardwareSpec& hw) {
  // Whole rows when two slots fit UB, else the largest 32-byte-aligned chunk; every AIV.
  PermuteTiling t;
  const int64_t align = 32 / sim::dtype_bytes(s.dtype);
  t.cols_per_tile = round_up(s.hidden, align);
  while (t.cols_per_tile > align && t.buffers * PermuteKernel::ub_bytes_per_set(s, t) > hw.aiv.ub_bytes)
    t.cols_per_tile = round_up(t.cols_per_tile / 2, align);
  t.cores = static_cast<int>(std::clamp<int64_t>(ceil_div(s.tokens * s.topk, t.rows_per_tile), 1, hw.num_aiv));
  return t;
}

std::string PermuteKernel::name() const {
  return fmt::format("permute_{}x{}x{}_{}{}", s_.tokens, s_.topk, s_.hidden, sim::dtype_name(s_.dtype),
                     s_.weights ? "_weights" : "");
}

nlohmann::json PermuteKernel::tiling_json() const {
  return {{"rows_per_tile", t_.rows_per_tile}, {"cols_per_tile", t_.cols_per_tile}, {"buffers", t_.buffers},
          {"cores", t_.cores}};
}

double PermuteKernel::compulsory_bytes() const {
  const double rows = static_cast<double>(s_.tokens * s_.topk);
  return 2 * rows * s_.hidden * sim::dtype_bytes(s_.dtype) + (s_.weights ? 8 * rows : 0);
}

double PermuteKernel::peak_flops_per_cycle(const sim::HardwareSpec& hw) const { return hw.num_aiv; }

double PermuteKernel::estimated_instructions() const {
  const double rows = static_cast<double>(s_.tokens * s_.topk);
  return rows * (3.0 * ceil_div(s_.hidden, std::max<int64_t>(1, t_.cols_per_tile)) + (s_.weights ? 2 : 0)) + 8;
}

Status PermuteKernel::can_implement(const sim::HardwareSpec& hw) const {
  const int64_t e = sim::dtype_bytes(s_.dtype);
  if (t_.cols_per_tile <= 0 || (t_.cols_per_tile * e) % 32)
    return Status::bad("tiling.cols_per_tile", fmt::format("{} columns are not a whole number of 32-byte UB blocks", t_.cols_per_tile));
  if (t_.rows_per_tile < 1) return Status::bad("tiling.rows_per_tile", "rows_per_tile must be >= 1");
  if (t_.buffers < 1 || t_.buffers > hw.sync.event_ids)
    return Status::bad("tiling.buffers", fmt::format("buffers must be 1..{}, found {}", hw.sync.event_ids, t_.buffers));
  if (const int64_t ub = t_.buffers * ub_bytes_per_set(s_, t_); ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.cols_per_tile", fmt::format("{} slots need {} B of UB, more than its {} B", t_.buffers, ub, hw.aiv.ub_bytes));
  if (t_.cores < 1 || t_.cores > hw.num_aiv)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} AIVs on {}, found {}", hw.num_aiv, hw.name, t_.cores));
  return Status::good();
}

std::vector<TensorInfo> PermuteKernel::tensors() const {
  const int64_t T = s_.tokens, F = s_.tokens * s_.topk, D = s_.hidden, e = sim::dtype_bytes(s_.dtype);
  GmAllocator gm;
  std::vector<TensorInfo> out;
  out.push_back({"x", s_.dtype, T, D, TensorLayout::RowMajor, gm.alloc(T * D * e), false});
  if (s_.weights) out.push_back({"weights", DType::Fp32, 1, F, TensorLayout::RowMajor, gm.alloc(F * 4), false});
  out.push_back({"rows", s_.dtype, F, D, TensorLayout::RowMajor, gm.alloc(F * D * e), true});
  if (s_.weights) out.push_back({"row_weights", DType::Fp32, 1, F, TensorLayout::RowMajor, gm.alloc(F * 4), true});
  return out;
}

sim::Program PermuteKernel::lower(const sim::HardwareSpec&, bool functional) const {
  const auto ts = tensors();
  const int64_t F = s_.tokens * s_.topk, D = s_.hidden, K = s_.topk, e = sim::dtype_bytes(s_.dtype);
  const int64_t C = t_.cols_per_tile, R = t_.rows_per_tile, chunks = ceil_div(D, C);
  const uint64_t x = ts[0].addr, w = s_.weights ? ts[1].addr : 0, rows = ts[s_.weights ? 2 : 1].addr;
  const uint64_t rw = s_.weights ? ts[3].addr : 0;
  sim::Program prog;
  prog.name = name();
  prog.gm_footprint_bytes = ts.back().addr + static_cast<uint64_t>(ts.back().rows * ts.back().cols) * sim::dtype_bytes(ts.back().dtype);
  const int64_t tiles = ceil_div(F, R);
  const int cores = static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(t_.cores, tiles), 1, t_.cores));
  const uint64_t set = static_cast<uint64_t>(ub_bytes_per_set(s_, t_));
  auto copy = [](sim::CoreBuilder& b, Path p, uint64_t src, uint64_t dst, int64_t n, DType dt) {
    sim::Operands o;
    o.rows = 1, o.cols = uint32_t(n);
    o.src = {src, 0, 0, 0, TileLayout::Flat, dt};
    o.dst = {dst, 0, 0, 0, TileLayout::Flat, dt};
    const uint32_t bytes = uint32_t(n * sim::dtype_bytes(dt));
    const uint64_t gm = p == Path::GmToUb ? src : dst;
    b.copy(p, bytes, sim::GmRegion{gm, 1, bytes, bytes}, o);
  };
  for (int c = 0; c < cores; ++c) {
    const int64_t t0 = tiles * c / cores, t1 = tiles * (c + 1) / cores;
    sim::CoreProgram cp{sim::CoreKind::Aiv, c, {}, {}};
    sim::CoreBuilder b(cp, functional);
    const int nb = t_.buffers;
    for (int q = 0; q < nb; ++q) b.set_flag(Pipe::Mte3, Pipe::Mte2, q);
    int q = 0;
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t r0 = tile * R, r1 = std::min(F, r0 + R);
      // Each row's chunks cycle through the slots; the weights of the tile's rows share the last slot's tail.
      for (int64_t i = r0; i < r1; ++i) {
        b.scalar(1);  // read the expanded row index: which token this sorted row comes from
        const int64_t src = perm_[static_cast<size_t>(i)] / K;
        for (int64_t ch = 0; ch < chunks; ++ch) {
          const int64_t c0 = ch * C, n = std::min(C, D - c0);
          const uint64_t buf = static_cast<uint64_t>(q) * set;
          b.wait_flag(Pipe::Mte3, Pipe::Mte2, q);
          copy(b, Path::GmToUb, x + (src * D + c0) * e, buf, n, s_.dtype);
          b.set_flag(Pipe::Mte2, Pipe::Mte3, q);
          b.wait_flag(Pipe::Mte2, Pipe::Mte3, q);
          copy(b, Path::UbToGm, buf, rows + (i * D + c0) * e, n, s_.dtype);
          b.set_flag(Pipe::Mte3, Pipe::Mte2, q);
          q = (q + 1) % nb;
        }
      }
      if (s_.weights) {
        // The tile's weights gather into the slot after the last row's: wait for it to drain first.
        b.wait_flag(Pipe::Mte3, Pipe::Mte2, q);
        const uint64_t wb = static_cast<uint64_t>(q) * set + static_cast<uint64_t>(C * e);
        for (int64_t i = r0; i < r1; ++i) copy(b, Path::GmToUb, w + perm_[static_cast<size_t>(i)] * 4, wb + (i - r0) * 4, 1, DType::Fp32);
        b.set_flag(Pipe::Mte2, Pipe::Mte3, q);
        b.wait_flag(Pipe::Mte2, Pipe::Mte3, q);
        copy(b, Path::UbToGm, wb, rw + r0 * 4, r1 - r0, DType::Fp32);
        b.set_flag(Pipe::Mte3, Pipe::Mte2, q);
        q = (q + 1) % nb;
      }
    }
    for (int k = 0; k < nb; ++k) b.wait_flag(Pipe::Mte3, Pipe::Mte2, k);
    prog.cores.push_back(std::move(cp));
  }
  return prog;
}

std::vector<Golden> PermuteKernel::references(const std::vector<std::vector<double>>& in,
                                              const std::vector<std::vector<double>>&) const {
  const int64_t F = s_.tokens * s_.topk, D = s_.hidden, K = s_.topk;
  std::vector<Golden> g(s_.weights ? 2 : 1);
  g[0].exact.resize(static_cast<size_t>(F * D));
  for (int64_t i = 0; i < F; ++i) {
    const int64_t t = perm_[static_cast<size_t>(i)] / K;
    std::copy_n(in[0].begin() + t * D, D, g[0].exact.begin() + i * D);
  }
  g[0].same_precision = g[0].exact;
  if (s_.weights) {
    g[1].exact.resize(static_cast<size_t>(F));
    for (int64_t i = 0; i < F; ++i) g[1].exact[i] = in[1][static_cast<size_t>(perm_[static_cast<size_t>(i)])];
    g[1].same_precision = g[1].exact;
  }
  return g;
}

PermuteTiling parse_permute_tiling(const YamlNode& tiling, PermuteTiling t) {
  if (auto x = tiling.get("rows_per_tile")) t.rows_per_tile = x->as_positive_int();
  if (auto x = tiling.get("cols_per_tile")) t.cols_per_tile = x->as_positive_int();
  if (auto x = tiling.get("buffers")) t.buffers = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("cores")) t.cores = static_cast<int>(x->as_positive_int());
  return t;
}

std::unique_ptr<Kernel> make_permute(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  PermuteShape s;
  s.hidden = w.at("hidden").as_positive_int();
  if (s.hidden > (int64_t(1) << 24)) w.at("hidden").fail("hidden beyond 2^24 does not fit the instruction fields");
  s.dtype = *sim::dtype_from_name(w.at("dtype").as_enum({"fp16", "bf16", "fp32"}));
  if (auto x = w.get("weights")) s.weights = x->as_bool();
  RoutingSpec r = parse_routing(w.at("routing"));
  s.tokens = r.tokens, s.topk = r.topk;
  s.expert_of = draw_routing(r);
  PermuteTiling t = default_permute_tiling(s, hw);
  if (tiling) t = parse_permute_tiling(*tiling, t);
  return std::make_unique<PermuteKernel>(std::move(s), t, !tiling.has_value());
}

std::unique_ptr<Kernel> PermuteKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec&) const {
  return std::make_unique<PermuteKernel>(s_, parse_permute_tiling(tiling, t_), false);
}

Golden PermuteKernel::reference(const std::vector<std::vector<double>>& in) const { return references(in, {})[0]; }

}  // namespace npusim::kernels
