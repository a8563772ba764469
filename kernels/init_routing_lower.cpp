// The init-routing lowering: one AIV program per core (init_routing.hpp describes the passes).
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>

#include "common/numerics.hpp"
#include "kernels/init_routing_impl.hpp"
#include "kernels/rng.hpp"
#include "kernels/routing.hpp"
#include "kernels/tensor_io.hpp"

namespace npusim::kernels {

using ref::CapacityMode;
using ref::PadMode;
using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;
using namespace init_routing_impl;

namespace {

// GM addresses: the tensors, then the workspaces (count table; probability mode: weights in
// expert order, each chunk's sort positions, destinations in expert order).
struct GmLayout {
  uint64_t x, ids, weights, ex, row_idx, tokens, before;
  uint64_t table, ws_weights, ws_pos, ws_dest, footprint;
};

// Emits one AIV's program. A "pass" is one use of the sort buffers: loads on MTE2, vector work,
// stores on MTE3, with flags that let the next pass reuse every buffer. Row gathers go through
// their own slots, MTE2 -> UB -> MTE3.
class CoreEmitter {
 public:
  CoreEmitter(sim::CoreBuilder& b, const UbLayout& u, const InitRoutingShape& s,
              const InitRoutingTiling& t, uint64_t x, uint64_t ex)
      : b_(b), u_(u), s_(s), t_(t), x_(x), ex_(ex) {}

  void begin(bool zero_tile) {
    b_.set_flag(Pipe::V, Pipe::Mte2, 0);
    b_.set_flag(Pipe::Mte3, Pipe::V, 0);
    for (int q = 0; q < t_.buffers; ++q) b_.set_flag(Pipe::Mte3, Pipe::Mte2, q);
    if (!zero_tile) return;
    // The zero tile is written once, up front, while the vector unit has nothing else to do.
    const int64_t elems = static_cast<int64_t>(u_.tile) / sim::dtype_bytes(s_.dtype);
    const int64_t per = kMaxVecBytes / sim::dtype_bytes(s_.dtype);
    for (int64_t done = 0; done < elems; done += per)
      vec(VecOp::Dup, s_.dtype, u_.zero + done * sim::dtype_bytes(s_.dtype), 0, 0,
          std::min(per, elems - done));
    b_.set_flag(Pipe::V, Pipe::Mte3, kPadEvent);
  }

  void end() {
    b_.wait_flag(Pipe::V, Pipe::Mte2, 0);
    b_.wait_flag(Pipe::Mte3, Pipe::V, 0);
    for (int q = 0; q < t_.buffers; ++q) b_.wait_flag(Pipe::Mte3, Pipe::Mte2, q);
  }

  // All AIVs meet: every store this core issued is visible to the loads any core issues after.
  void barrier(int id) {
    b_.cross_set(Pipe::Mte3, 0, id);
    b_.cross_wait(Pipe::Mte2, id);
  }

  template <class Loads, class Vector, class Stores>
  void pass(Loads loads, Vector vector, Stores stores) {
    b_.wait_flag(Pipe::V, Pipe::Mte2, 0);
    loads();
    b_.set_flag(Pipe::Mte2, Pipe::V, 0);
    b_.wait_flag(Pipe::Mte2, Pipe::V, 0);
    b_.wait_flag(Pipe::Mte3, Pipe::V, 0);
    vector();
    b_.set_flag(Pipe::V, Pipe::Mte2, 0);
    b_.set_flag(Pipe::V, Pipe::Mte3, 0);
    b_.wait_flag(Pipe::V, Pipe::Mte3, 0);
    stores();
    b_.set_flag(Pipe::Mte3, Pipe::V, 0);
  }

  void load(uint64_t gm, uint64_t ub, int64_t n, DType dt) { copy(Path::GmToUb, gm, ub, n, dt); }
  void store(uint64_t ub, uint64_t gm, int64_t n, DType dt) { copy(Path::UbToGm, ub, gm, n, dt); }

  // A vector instruction over flat operands; `dst_dt` differs from `dt` for casts and extracts.
  void vec(VecOp op, DType dt, uint64_t dst, uint64_t src, uint64_t src2, int64_t n,
           double scalar = 0, uint32_t cols = 0, DType src2_dt = DType::Int32,
           std::optional<DType> dst_dt = {}) {
    sim::Operands o;
    o.src = flat(src, dt), o.src2 = flat(src2, src2_dt), o.dst = flat(dst, dst_dt.value_or(dt));
    o.scalar = scalar, o.cols = cols;
    b_.vec(op, dt, static_cast<uint32_t>(n), o);
  }

  // Sorts the n keys at u.keys (fp32) with their indices at u.idx descending, stably (sort32 blocks
  // of 32, then merge rounds of four runs), and extracts the indices in sorted order to u.sorted.
  // Keys past n up to the next 32 are set to -inf so they sort last.
  void sort(int64_t n) {
    const int64_t n32 = round_up(n, 32);
    if (n32 > n) vec(VecOp::Dup, DType::Fp32, u_.keys + 4 * n, 0, 0, n32 - n, -INFINITY);
    vec(VecOp::Sort32, DType::Fp32, u_.p0, u_.keys, u_.idx, n32);
    uint64_t cur = u_.p0, other = u_.p1;
    for (int64_t run = 128; run / 4 < n32; run *= 4) {
      sim::Operands o;
      o.src = flat(cur, DType::Fp32), o.dst = flat(other, DType::Fp32);
      o.cols = static_cast<uint32_t>(run);
      b_.vec(VecOp::MrgSort, DType::Fp32, static_cast<uint32_t>(n32), o);
      std::swap(cur, other);
    }
    vec(VecOp::Extract, DType::Fp32, u_.sorted, cur, 0, n, 1.0, 0, DType::Int32, DType::Int32);
  }

  // Copies x rows into consecutive expanded_x rows from `dest0`: the i-th from token row src[i].
  void gather_rows(int64_t dest0, const std::vector<int64_t>& src) {
    const int64_t H = s_.hidden, e = sim::dtype_bytes(s_.dtype), R = t_.rows_per_tile,
                  C = t_.cols_per_tile;
    for (int64_t c0 = 0; c0 < H; c0 += C) {
      const int64_t n = std::min(C, H - c0);
      for (int64_t r0 = 0; r0 < static_cast<int64_t>(src.size()); r0 += R) {
        const int64_t rows = std::min<int64_t>(R, static_cast<int64_t>(src.size()) - r0);
        const int q = slot_;
        slot_ = (slot_ + 1) % t_.buffers;
        const uint64_t stage = u_.stage + q * u_.tile;
        b_.wait_flag(Pipe::Mte3, Pipe::Mte2, q);
        for (int64_t i = 0; i < rows; ++i) {
          b_.scalar(1);  // the row's source token, read from the sorted indices
          load(x_ + (src[r0 + i] * H + c0) * e, stage + i * C * e, n, s_.dtype);
        }
        b_.set_flag(Pipe::Mte2, Pipe::Mte3, q);
        b_.wait_flag(Pipe::Mte2, Pipe::Mte3, q);
        store_tile(stage, dest0 + r0, rows, c0, n);
        b_.set_flag(Pipe::Mte3, Pipe::Mte2, q);
      }
    }
  }

  // Zero rows [row0, row0 + rows) of expanded_x from the zero tile.
  void zero_rows(int64_t row0, int64_t rows) {
    if (!zero_waited_) b_.wait_flag(Pipe::V, Pipe::Mte3, kPadEvent);
    zero_waited_ = true;
    for (int64_t c0 = 0; c0 < s_.hidden; c0 += t_.cols_per_tile)
      for (int64_t r0 = 0; r0 < rows; r0 += t_.rows_per_tile)
        store_tile(u_.zero, row0 + r0, std::min(t_.rows_per_tile, rows - r0), c0,
                   std::min(t_.cols_per_tile, s_.hidden - c0));
  }

 private:
  void copy(Path p, uint64_t src, uint64_t dst, int64_t n, DType dt) {
    sim::Operands o;
    o.rows = 1, o.cols = static_cast<uint32_t>(n);
    o.src = flat(src, dt), o.dst = flat(dst, dt);
    const uint32_t bytes = static_cast<uint32_t>(n * sim::dtype_bytes(dt));
    b_.copy(p, bytes, sim::GmRegion{p == Path::GmToUb ? src : dst, 1, bytes, bytes}, o);
  }

  // A UB tile (rows x n of a cols_per_tile-wide slot) to expanded_x rows row0.., columns c0...
  void store_tile(uint64_t ub, int64_t row0, int64_t rows, int64_t c0, int64_t n) {
    const int64_t H = s_.hidden, e = sim::dtype_bytes(s_.dtype);
    sim::Operands o;
    o.rows = static_cast<uint32_t>(rows), o.cols = static_cast<uint32_t>(n);
    o.src = {ub, static_cast<uint32_t>(t_.cols_per_tile), 0, 0, TileLayout::Nd, s_.dtype};
    o.dst = {ex_ + (row0 * H + c0) * e, static_cast<uint32_t>(H), 0, 0, TileLayout::Nd, s_.dtype};
    b_.copy(Path::UbToGm, static_cast<uint32_t>(rows * n * e),
            sim::GmRegion{o.dst.offset, static_cast<uint32_t>(rows), static_cast<uint32_t>(n * e),
                          static_cast<uint64_t>(H * e)},
            o);
  }

  sim::CoreBuilder& b_;
  const UbLayout& u_;
  const InitRoutingShape& s_;
  const InitRoutingTiling& t_;
  uint64_t x_, ex_;
  int slot_ = 0;
  bool zero_waited_ = false;
};

}  // namespace

sim::Program InitRoutingKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  const auto ts = tensors();
  const int64_t N = entries(s_), E = s_.routing.experts, K = s_.topk, S = t_.chunk,
                C = s_.routing.capacity;
  const RoutingLayout& L = layout_;
  GmLayout g{};
  {
    size_t i = 0;
    g.x = ts[i++].addr, g.ids = ts[i++].addr;
    if (by_probability(s_)) g.weights = ts[i++].addr;
    g.ex = ts[i++].addr, g.row_idx = ts[i++].addr, g.tokens = ts[i++].addr;
    if (drops(s_)) g.before = ts[i++].addr;
  }
  const int64_t chunks = ceil_div(N, S);
  GmAllocator ws;
  ws.alloc(ts.back().addr + static_cast<uint64_t>(4 * E));  // the tensors; the workspaces follow
  g.table = ws.alloc(chunks * E * 4);
  if (by_probability(s_))
    g.ws_weights = ws.alloc(N * 4), g.ws_pos = ws.alloc(N * 4), g.ws_dest = ws.alloc(N * 4);
  g.footprint = ws.footprint();

  // What the scalar unit reads back from the count table: per chunk and expert, its entries and
  // the entries of earlier chunks.
  std::vector<int64_t> count(static_cast<size_t>(chunks * E), 0), before(count.size(), 0);
  for (int64_t f = 0; f < N; ++f) ++count[(f / S) * E + s_.expert_of[f]];
  for (int64_t q = 1; q < chunks; ++q)
    for (int64_t e = 0; e < E; ++e)
      before[q * E + e] = before[(q - 1) * E + e] + count[(q - 1) * E + e];
  const uint32_t walk = static_cast<uint32_t>(hw.scalar_group_cycles * static_cast<double>(E));

  const UbLayout u = ub_layout(s_, t_);
  const int cores = static_cast<int>(std::min<int64_t>(t_.cores, chunks));
  sim::Program prog;
  prog.name = name();
  prog.gm_footprint_bytes = g.footprint;
  for (int c = 0; c < cores; ++c) {
    sim::CoreProgram cp{sim::CoreKind::Aiv, c, {}, {}};
    sim::CoreBuilder b(cp, functional);
    CoreEmitter em(b, u, s_, t_, g.x, g.ex);
    const int64_t q0 = chunks * c / cores, q1 = chunks * (c + 1) / cores;
    bool pads = false;
    for (int64_t e = c; e < E; e += cores) pads = pads || L.rows_of[e] > L.kept[e];
    em.begin(pads);

    // 1. Per-chunk histograms into the count table.
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t f0 = q * S, n = std::min(S, N - f0);
      em.pass([&] { em.load(g.ids + 4 * f0, u.keys, n, DType::Int32); },
              [&] {
                em.vec(VecOp::Histogram, DType::Int32, u.hist, u.keys, 0, n, 0,
                       static_cast<uint32_t>(E));
              },
              [&] { em.store(u.hist, g.table + 4 * q * E, E, DType::Int32); });
    }
    em.barrier(0);

    // 2. Core 0 sums the table into the per-expert counts.
    if (c == 0) {
      for (int64_t r0 = 0; r0 < chunks; r0 += u.block_rows) {
        const int64_t rows = std::min(u.block_rows, chunks - r0);
        const bool last = r0 + rows == chunks;
        em.pass(
            [&] { em.load(g.table + 4 * r0 * E, u.block, rows * E, DType::Int32); },
            [&] {
              if (r0 == 0) em.vec(VecOp::Dup, DType::Int32, u.acc, 0, 0, E, 0.0);
              for (int64_t r = 0; r < rows; ++r)
                em.vec(VecOp::Add, DType::Int32, u.acc, u.acc, u.block + 4 * r * E, E);
              if (!last) return;
              if (drops(s_))
                em.vec(VecOp::Mins, DType::Int32, u.kept, u.acc, 0, E, static_cast<double>(C));
              if (s_.cumsum)
                em.vec(VecOp::Cumsum, DType::Int32, u.sums, drops(s_) ? u.kept : u.acc, 0, E);
            },
            [&] {
              if (!last) return;
              em.store(s_.cumsum ? u.sums : drops(s_) ? u.kept : u.acc, g.tokens, E, DType::Int32);
              if (drops(s_)) em.store(u.acc, g.before, E, DType::Int32);
            });
      }
    }

    // 3. Per chunk: the stable sort by expert. The keys are -expert (descending sorts experts
    // ascending); the indices are the flat entries.
    auto sort_chunk = [&](int64_t f0, int64_t n) {
      em.vec(VecOp::Cast, DType::Int32, u.keys, u.keys, 0, n, 0, 0, DType::Int32, DType::Fp32);
      em.vec(VecOp::Muls, DType::Fp32, u.keys, u.keys, 0, n, -1.0);
      em.vec(VecOp::Arange, DType::Int32, u.idx, 0, 0, round_up(n, 32), static_cast<double>(f0));
      em.sort(n);
      // Each sorted entry's position in the chunk's flat order: the scatter offsets.
      em.vec(VecOp::Adds, DType::Int32, u.offs, u.sorted, 0, n, -static_cast<double>(f0));
    };
    // Calls fn(e, local position, entries) for each expert with entries in chunk q.
    auto segments = [&](int64_t q, auto fn) {
      for (int64_t e = 0, pos = 0; e < E; ++e)
        if (const int64_t cnt = count[q * E + e]) {
          fn(e, pos, cnt);
          pos += cnt;
        }
    };
    if (!by_probability(s_)) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t f0 = q * S, n = std::min(S, N - f0);
        b.scalar(walk);  // the chunk's segment starts and row offsets from the count table
        em.pass([&] { em.load(g.ids + 4 * f0, u.keys, n, DType::Int32); },
                [&] {
                  sort_chunk(f0, n);
                  segments(q, [&](int64_t e, int64_t pos, int64_t cnt) {
                    const int64_t g0 = before[q * E + e],
                                  keep = std::clamp<int64_t>(L.kept[e] - g0, 0, cnt);
                    if (keep)
                      em.vec(VecOp::Arange, DType::Int32, u.dest + 4 * pos, 0, 0, keep,
                             static_cast<double>(L.offset[e] + g0));
                    if (cnt > keep)
                      em.vec(VecOp::Dup, DType::Int32, u.dest + 4 * (pos + keep), 0, 0, cnt - keep,
                             -1.0);
                  });
                  em.vec(VecOp::Scatter, DType::Int32, u.flat, u.dest, u.offs, n, 0,
                         static_cast<uint32_t>(n));
                },
                [&] { em.store(u.flat, g.row_idx + 4 * f0, n, DType::Int32); });
        segments(q, [&](int64_t e, int64_t, int64_t cnt) {
          const int64_t g0 = before[q * E + e], keep = std::clamp<int64_t>(L.kept[e] - g0, 0, cnt);
          std::vector<int64_t> src(static_cast<size_t>(keep));
          for (int64_t r = 0; r < keep; ++r) src[r] = L.order[L.start[e] + g0 + r] / K;
          if (keep) em.gather_rows(L.offset[e] + g0, src);
        });
      }
    } else {
      // 3p. Per chunk: the weights in expert order, per segment into the by-expert workspace; the
      // chunk's scatter offsets for step 5p.
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t f0 = q * S, n = std::min(S, N - f0);
        b.scalar(walk);
        em.pass(
            [&] {
              em.load(g.ids + 4 * f0, u.keys, n, DType::Int32);
              em.load(g.weights + 4 * f0, u.wts, n, DType::Fp32);
            },
            [&] {
              sort_chunk(f0, n);
              em.vec(VecOp::Gather, DType::Fp32, u.dest, u.wts, u.offs, n, 0,
                     static_cast<uint32_t>(n));
            },
            [&] {
              segments(q, [&](int64_t e, int64_t pos, int64_t cnt) {
                em.store(u.dest + 4 * pos, g.ws_weights + 4 * (L.start[e] + before[q * E + e]), cnt,
                         DType::Fp32);
              });
              em.store(u.offs, g.ws_pos + 4 * f0, n, DType::Int32);
            });
      }
      em.barrier(1);
      // 4p. Per expert: sort its weights (in flat order, so ties keep it); the rank gives the
      // destination, scattered back to the expert's flat order (indices 0..n-1).
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = L.routed[e], kept = L.kept[e];
        if (!n || L.start[e] < N * c / cores || L.start[e] >= N * (c + 1) / cores) continue;
        b.scalar(static_cast<uint32_t>(hw.scalar_group_cycles));
        em.pass([&] { em.load(g.ws_weights + 4 * L.start[e], u.keys, n, DType::Fp32); },
                [&] {
                  em.vec(VecOp::Arange, DType::Int32, u.idx, 0, 0, round_up(n, 32), 0.0);
                  em.sort(n);
                  if (kept)
                    em.vec(VecOp::Arange, DType::Int32, u.dest, 0, 0, kept,
                           static_cast<double>(L.offset[e]));
                  if (n > kept)
                    em.vec(VecOp::Dup, DType::Int32, u.dest + 4 * kept, 0, 0, n - kept, -1.0);
                  em.vec(VecOp::Scatter, DType::Int32, u.flat, u.dest, u.sorted, n, 0,
                         static_cast<uint32_t>(n));
                },
                [&] { em.store(u.flat, g.ws_dest + 4 * L.start[e], n, DType::Int32); });
        std::vector<int64_t> src(static_cast<size_t>(kept));
        for (int64_t r = 0; r < kept; ++r) src[r] = L.order[L.start[e] + r] / K;
        if (kept) em.gather_rows(L.offset[e], src);
      }
      em.barrier(2);
      // 5p. Per chunk: its segments' destinations back into flat order.
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t f0 = q * S, n = std::min(S, N - f0);
        b.scalar(walk);
        em.pass(
            [&] {
              em.load(g.ws_pos + 4 * f0, u.offs, n, DType::Int32);
              segments(q, [&](int64_t e, int64_t pos, int64_t cnt) {
                em.load(g.ws_dest + 4 * (L.start[e] + before[q * E + e]), u.dest + 4 * pos, cnt,
                        DType::Int32);
              });
            },
            [&] {
              em.vec(VecOp::Scatter, DType::Int32, u.flat, u.dest, u.offs, n, 0,
                     static_cast<uint32_t>(n));
            },
            [&] { em.store(u.flat, g.row_idx + 4 * f0, n, DType::Int32); });
      }
    }

    // 6. Padding rows of this core's experts.
    for (int64_t e = c; e < E; e += cores)
      if (L.rows_of[e] > L.kept[e]) em.zero_rows(L.offset[e] + L.kept[e], L.rows_of[e] - L.kept[e]);
    em.end();
    prog.cores.push_back(std::move(cp));
  }
  return prog;
}

}  // namespace npusim::kernels
