// The tiling spaces of the AIV templates (elementwise, swiglu, combine, permute, gating,
// init_routing, topk). Each offers its tile size on the ladder within the shape's extent, buffer
// sets (one event id each), and core counts, with can_implement's UB accounting as constraints and
// core counts beyond the tiling's work units pruned (the lowering would clamp them).
#include <algorithm>
#include <cmath>

#include "kernels/combine.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gating.hpp"
#include "kernels/init_routing.hpp"
#include "kernels/init_routing_impl.hpp"
#include "kernels/permute.hpp"
#include "kernels/space_util.hpp"
#include "kernels/swiglu.hpp"
#include "kernels/topk.hpp"

namespace npusim::kernels {

namespace {

std::vector<int64_t> buffer_counts(const sim::HardwareSpec& hw, int64_t current) {
  return space::with(space::ladder(1, std::min(4, hw.sync.event_ids)), current);
}

// Cores of a space whose tilings split into at most `max_work` units, and the constraint that
// keeps a core count only while the units of the tiling (from the point) cover it.
int add_cores(SearchSpace& sp, int64_t hw_cores, int64_t max_work, int64_t current) {
  return sp.add("cores", space::with(space::core_counts(hw_cores, max_work), current));
}
void require_work(SearchSpace& sp, int cores, std::vector<int> reads,
                  std::function<int64_t(const int64_t*)> work) {
  const std::vector<int64_t> domain = sp.params[static_cast<size_t>(cores)].values;
  reads.push_back(cores);
  sp.require("cores beyond the work", std::move(reads),
             [=](const int64_t* p) { return space::within_reach(domain, p[cores], work(p)); });
}

// The AIV pipeline roofline of the estimates: each core runs its tiles through MTE2 (loads), V and
// MTE3 (stores), overlapped with two or more buffer sets (plus one fill and drain), serial with
// one; every byte crosses HBM once.
struct AivRoofline {
  sim::PathSpec in, out;
  double gap = 0, issue = 0, startup = 0, hbm_rate = 1;
  explicit AivRoofline(const sim::HardwareSpec& hw)
      : in(hw.path(sim::Path::GmToUb)),
        out(hw.path(sim::Path::UbToGm)),
        gap(hw.mte_issue_gap_cycles),
        issue(hw.aiv.vector_issue_cycles),
        startup(hw.aiv.vector_startup_cycles),
        hbm_rate(std::max(1e-9, hw.hbm_bytes_per_cycle() * hw.hbm.efficiency)) {}
  // `bytes` in `copies` transfers on one MTE pipe (their start-ups pipelined).
  static double copies(const sim::PathSpec& path, double bytes, double n, double gap) {
    const double each = bytes / std::max(1.0, n);
    return path.startup_cycles + n * std::max(gap, each / std::max(1e-9, path.rate_at(each)));
  }
  double load(double bytes, double n = 1) const { return copies(in, bytes, n, gap); }
  double store(double bytes, double n = 1) const { return copies(out, bytes, n, gap); }
  // `ops` vector instruction streams over `elems` elements of `elem_bytes` at `rate` elements per
  // cycle.
  double vec(double ops, double elems, double elem_bytes, double rate) const {
    const double instrs = std::ceil(elems * elem_bytes / (255.0 * 256));
    return ops * (elems / std::max(1e-9, rate) + instrs * issue) + startup;
  }
  double run(double tiles, int buffers, double load_c, double vec_c, double store_c) const {
    if (buffers < 2) return tiles * (load_c + vec_c + store_c);
    return tiles * std::max({load_c, vec_c, store_c}) + load_c + store_c;
  }
  double hbm(double bytes) const { return bytes / hbm_rate; }
};

double fp32_rate(const sim::HardwareSpec& hw, sim::VecOp op) {
  return hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(sim::DType::Fp32)];
}

}  // namespace

SearchSpace ElementwiseKernel::search_space(const sim::HardwareSpec& hw) const {
  // Tiles of whole 256-byte repeats (as the default), from 1024 elements up to one buffer filling
  // UB or the whole tensor.
  const int64_t in_b = sim::dtype_bytes(s_.in), out_b = sim::dtype_bytes(s_.out),
                per_elem = inputs() * in_b + out_b;
  const int64_t cap = std::max<int64_t>(
      128, std::min(round_up(s_.elems, 128), hw.aiv.ub_bytes / per_elem / 128 * 128));
  SearchSpace sp;
  const int kTile =
      sp.add("tile_elems",
             space::with(space::ladder(std::min<int64_t>(cap, 1024), cap, 128), t_.tile_elems));
  const int kBuffers = sp.add("buffers", buffer_counts(hw, t_.buffers));
  const int kCores =
      add_cores(sp, hw.num_aiv, ceil_div(s_.elems, sp.params[kTile].values.front()), t_.cores);
  const int64_t ub = hw.aiv.ub_bytes, elems = s_.elems;
  sp.require("UB capacity", {kTile, kBuffers},
             [=](const int64_t* p) { return p[kBuffers] * p[kTile] * per_elem <= ub; });
  require_work(sp, kCores, {kTile}, [=](const int64_t* p) { return ceil_div(elems, p[kTile]); });
  sp.tiling = space::tiling_by_name(sp);
  const AivRoofline roof(hw);
  const double rate = hw.aiv.vec_rate[static_cast<int>(s_.op)][static_cast<int>(s_.in)];
  const double total = double(elems) * per_elem, srcs = inputs(), widest = std::max(in_b, out_b);
  sp.estimate = [=](const int64_t* p) {
    const double tile = double(p[kTile]), tiles = std::ceil(double(elems) / tile);
    const double mine = std::ceil(tiles / std::min<double>(double(p[kCores]), tiles));
    const double cycles =
        roof.run(mine, static_cast<int>(p[kBuffers]), roof.load(tile * srcs * in_b, srcs),
                 roof.vec(1, tile, widest, rate), roof.store(tile * out_b));
    return std::max(cycles, roof.hbm(total));
  };
  return sp;
}

SearchSpace SwigluKernel::search_space(const sim::HardwareSpec& hw) const {
  SearchSpace sp;
  const int kRows =
      sp.add("rows_per_tile",
             space::with(space::ladder(1, std::min<int64_t>(s_.rows, 64)), t_.rows_per_tile));
  const int kBuffers = sp.add("buffers", buffer_counts(hw, t_.buffers));
  const int kCores = add_cores(sp, hw.num_aiv, s_.rows, t_.cores);
  const SwigluShape s = s_;
  const int64_t ub = hw.aiv.ub_bytes, rows = s_.rows;
  sp.require("UB capacity", {kRows, kBuffers}, [=](const int64_t* p) {
    return p[kBuffers] * SwigluKernel::ub_bytes_per_set(s, p[kRows]) <= ub;
  });
  require_work(sp, kCores, {kRows}, [=](const int64_t* p) { return ceil_div(rows, p[kRows]); });
  sp.tiling = space::tiling_by_name(sp);
  // Per tile: the g and u halves in, casts, clamp, the silu chain, the product, the row weights and
  // the cast out over fp32 elements, the rows out.
  const AivRoofline roof(hw);
  const double I = double(s_.inter), in_b = sim::dtype_bytes(s_.in),
               out_b = sim::dtype_bytes(s_.out);
  const double ops = 9 + (s_.clamp ? 3 : 0), rate = fp32_rate(hw, sim::VecOp::Mul),
               total = compulsory_bytes();
  sp.estimate = [=](const int64_t* p) {
    const double r = double(p[kRows]), tiles = std::ceil(double(rows) / r);
    const double mine = std::ceil(tiles / std::min<double>(double(p[kCores]), tiles));
    const double cycles =
        roof.run(mine, static_cast<int>(p[kBuffers]), roof.load(2 * r * I * in_b, 2),
                 roof.vec(ops, r * I, 4, rate), roof.store(r * I * out_b));
    return std::max(cycles, roof.hbm(total));
  };
  return sp;
}

SearchSpace CombineKernel::search_space(const sim::HardwareSpec& hw) const {
  // Column chunks of whole 32-byte blocks, from a few hundred columns to the whole row.
  const int64_t align = 32 / sim::dtype_bytes(s_.dtype), row = round_up(s_.hidden, align);
  SearchSpace sp;
  const int kCols =
      sp.add("cols_per_tile",
             space::with(space::ladder(std::min<int64_t>(row, 256), row, align), t_.cols_per_tile));
  const int kBuffers = sp.add("buffers", buffer_counts(hw, t_.buffers));
  const int64_t tokens = s_.tokens, hidden = s_.hidden;
  const int kCores = add_cores(
      sp, hw.num_aiv, tokens * ceil_div(hidden, sp.params[kCols].values.front()), t_.cores);
  const CombineShape s = s_;
  const int64_t ub = hw.aiv.ub_bytes;
  sp.require("UB capacity", {kCols, kBuffers}, [=](const int64_t* p) {
    return p[kBuffers] * CombineKernel::ub_bytes_per_set(s, p[kCols]) <= ub;
  });
  require_work(sp, kCores, {kCols},
               [=](const int64_t* p) { return tokens * ceil_div(hidden, p[kCols]); });
  sp.tiling = space::tiling_by_name(sp);
  // Per (token, column chunk): the K gathered slices (and residual, shared, weights) in, a cast,
  // scale and add per term in fp32, the cast out, the chunk out.
  const AivRoofline roof(hw);
  const double e = sim::dtype_bytes(s_.dtype), terms = double(s_.topk + s_.shared + s_.residual);
  const double loads = terms + (s_.weighted ? 1 : 0), rate = fp32_rate(hw, sim::VecOp::Add),
               total = compulsory_bytes();
  sp.estimate = [=](const int64_t* p) {
    const double chunks = double(ceil_div(hidden, p[kCols])), n = double(hidden) / chunks,
                 items = double(tokens) * chunks;
    const double mine = std::ceil(items / std::min<double>(double(p[kCores]), items));
    const double cycles =
        roof.run(mine, static_cast<int>(p[kBuffers]), roof.load(terms * n * e, loads),
                 roof.vec(3 * terms + 1, n, 4, rate), roof.store(n * e));
    return std::max(cycles, roof.hbm(total));
  };
  return sp;
}

SearchSpace PermuteKernel::search_space(const sim::HardwareSpec& hw) const {
  // Rows per slot up to 32; column chunks from a quarter row to the whole row.
  const int64_t rows = s_.tokens * s_.topk, align = 32 / sim::dtype_bytes(s_.dtype),
                row = round_up(s_.hidden, align);
  SearchSpace sp;
  const int kRows =
      sp.add("rows_per_tile",
             space::with(space::ladder(1, std::clamp<int64_t>(rows, 1, 32)), t_.rows_per_tile));
  const int kCols = sp.add(
      "cols_per_tile",
      space::with(space::ladder(round_up(ceil_div(row, 4), align), row, align), t_.cols_per_tile));
  const int kBuffers = sp.add("buffers", buffer_counts(hw, t_.buffers));
  const int kCores = add_cores(sp, hw.num_aiv, rows, t_.cores);
  const PermuteShape s = s_;
  const PermuteTiling base = t_;
  const int64_t ub = hw.aiv.ub_bytes;
  sp.require("UB capacity", {kRows, kCols, kBuffers}, [=](const int64_t* p) {
    PermuteTiling t = base;
    t.rows_per_tile = p[kRows], t.cols_per_tile = p[kCols];
    return p[kBuffers] * PermuteKernel::ub_bytes_per_set(s, t) <= ub;
  });
  require_work(sp, kCores, {kRows}, [=](const int64_t* p) { return ceil_div(rows, p[kRows]); });
  sp.tiling = space::tiling_by_name(sp);
  // Per sorted row and column chunk: one copy in and one out through a slot (MTE2 and MTE3 overlap
  // with two or more slots); per tile the weights' 4-byte gathers and one store.
  const AivRoofline roof(hw);
  const double e = sim::dtype_bytes(s_.dtype), D = double(s_.hidden), total = compulsory_bytes();
  const bool weights = s_.weights;
  sp.estimate = [=](const int64_t* p) {
    const double R = double(p[kRows]), tiles = std::ceil(double(rows) / R);
    const double mine = std::ceil(tiles / std::min<double>(double(p[kCores]), tiles));
    const double chunks = std::ceil(D / double(p[kCols])), n = D / chunks;
    double tile =
        roof.run(R * chunks, static_cast<int>(p[kBuffers]), roof.load(n * e), 0, roof.store(n * e));
    if (weights) tile += roof.load(4 * R, R) + roof.store(4 * R);
    return std::max(mine * tile, roof.hbm(total));
  };
  return sp;
}

SearchSpace GatingKernel::search_space(const sim::HardwareSpec& hw) const {
  SearchSpace sp;
  const int kRows = sp.add(
      "rows_per_tile",
      space::with(space::ladder(1, std::clamp<int64_t>(s_.tokens, 1, 128)), t_.rows_per_tile));
  const int kBuffers = sp.add("buffers", buffer_counts(hw, t_.buffers));
  const int kCores = add_cores(sp, hw.num_aiv, s_.tokens, t_.cores);
  const GatingShape s = s_;
  const int64_t ub = hw.aiv.ub_bytes, tokens = s_.tokens;
  sp.require("UB capacity", {kRows, kBuffers}, [=](const int64_t* p) {
    return GatingKernel::ub_bytes(s, p[kRows], static_cast<int>(p[kBuffers])) <= ub;
  });
  require_work(sp, kCores, {kRows}, [=](const int64_t* p) { return ceil_div(tokens, p[kRows]); });
  sp.tiling = space::tiling_by_name(sp);
  return sp;
}

SearchSpace InitRoutingKernel::search_space(const sim::HardwareSpec& hw) const {
  using init_routing_impl::kMaxChunk;
  // Sort chunks (multiples of 32) from 256 entries to all of them or the sort32 limit; the row
  // gather's rows per copy 1..8 (powers of two) and column chunks from half a row (layout-only
  // runs: none).
  const int64_t N = s_.tokens * s_.topk, align = 32 / sim::dtype_bytes(s_.dtype),
                row = round_up(s_.hidden, align);
  const int64_t cap = std::clamp<int64_t>(round_up(N, 32), 32, kMaxChunk);
  SearchSpace sp;
  const int kChunk =
      sp.add("chunk", space::with(space::ladder(std::min<int64_t>(cap, 256), cap, 32), t_.chunk));
  int kRows = -1, kCols = -1;
  if (s_.hidden > 0) {
    kRows = sp.add("rows_per_tile", space::with({1, 2, 4, 8}, t_.rows_per_tile));
    kCols = sp.add("cols_per_tile",
                   space::with(space::ladder(round_up(ceil_div(row, 2), align), row, align),
                               t_.cols_per_tile));
  }
  const int kBuffers = sp.add("buffers", buffer_counts(hw, t_.buffers));
  const int kCores =
      add_cores(sp, hw.num_aiv, ceil_div(N, sp.params[kChunk].values.front()), t_.cores);
  if (s_.routing.mode == ref::CapacityMode::Probability) {
    // Each expert's weights are sorted in one chunk.
    const int64_t most = *std::max_element(layout_.routed.begin(), layout_.routed.end());
    sp.require("chunk below an expert's entries", {kChunk},
               [=](const int64_t* p) { return p[kChunk] >= most; });
  }
  const InitRoutingShape s = s_;
  const InitRoutingTiling base = t_;
  const int64_t ub = hw.aiv.ub_bytes;
  std::vector<int> reads{kChunk, kBuffers};
  if (kRows >= 0) reads.insert(reads.begin() + 1, {kRows, kCols});
  sp.require("UB capacity", reads, [=](const int64_t* p) {
    InitRoutingTiling t = base;
    t.chunk = p[kChunk], t.buffers = static_cast<int>(p[kBuffers]);
    if (kRows >= 0) t.rows_per_tile = p[kRows], t.cols_per_tile = p[kCols];
    return InitRoutingKernel::ub_bytes(s, t) <= ub;
  });
  require_work(sp, kCores, {kChunk}, [=](const int64_t* p) { return ceil_div(N, p[kChunk]); });
  sp.tiling = space::tiling_by_name(sp);
  return sp;
}

SearchSpace TopkKernel::search_space(const sim::HardwareSpec& hw) const {
  // Chunks (multiples of 32, one MrgSort queue at most) from 128 columns to the row; splits of
  // the row into ranges of at least 32 columns, up to 64.
  const int64_t cap = std::min<int64_t>(kMaxTopkCap, round_up(s_.cols, 32));
  SearchSpace sp;
  const int kChunk =
      sp.add("chunk", space::with(space::ladder(std::min<int64_t>(cap, 128), cap, 32), t_.chunk));
  const int kSplits = sp.add(
      "splits",
      space::with(space::ladder(1, std::clamp<int64_t>(ceil_div(s_.cols, 32), 1, 64)), t_.splits));
  const int64_t rows = s_.rows, k = s_.k;
  const int kCores = add_cores(sp, hw.num_aiv, rows * sp.params[kSplits].values.back(), t_.cores);
  if (k > kMaxMergeQueue)
    sp.require("splits with a list beyond one MrgSort queue", {kSplits},
               [=](const int64_t* p) { return p[kSplits] == 1; });
  const TopkShape s = s_;
  const TopkTiling base = t_;
  const int64_t ub = hw.aiv.ub_bytes;
  sp.require("UB capacity", {kChunk, kSplits}, [=](const int64_t* p) {
    TopkTiling t = base;
    t.chunk = p[kChunk], t.splits = static_cast<int>(p[kSplits]);
    return TopkKernel::ub_bytes(s, t) <= ub;
  });
  require_work(sp, kCores, {kSplits}, [=](const int64_t* p) { return rows * p[kSplits]; });
  sp.tiling = space::tiling_by_name(sp);
  return sp;
}

}  // namespace npusim::kernels
