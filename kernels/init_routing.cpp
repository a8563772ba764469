#include "kernels/init_routing.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>

#include "common/numerics.hpp"
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

namespace {

constexpr int64_t kMaxChunk = 255 * 32;      // sort32 covers at most 255 repeats of 32 pairs
constexpr int64_t kMaxVecBytes = 255 * 256;  // an elementwise instruction: 255 repeats of 256 bytes
constexpr int64_t kTableBlockBytes = 8192;   // count-table rows core 0 loads at a time
constexpr int kPadEvent = 1;  // V -> MTE3 event of the zero tile (0 orders the sort passes)

bool drops(const InitRoutingShape& s) {
  return s.routing.mode != CapacityMode::Dropless;
}
bool by_probability(const InitRoutingShape& s) {
  return s.routing.mode == CapacityMode::Probability;
}
int64_t entries(const InitRoutingShape& s) {
  return s.tokens * s.topk;
}

// UB byte offsets of everything the lowering keeps on chip (32-byte aligned regions).
struct UbLayout {
  uint64_t keys, idx, p0, p1, sorted, offs, dest, flat, wts;  // chunk-sized sort buffers
  uint64_t hist, acc, kept, sums, block;                      // per-expert counts
  uint64_t stage, zero, tile;                                 // row gather slots, zero tile
  int64_t block_rows;
  uint64_t end;
};

UbLayout ub_layout(const InitRoutingShape& s, const InitRoutingTiling& t) {
  UbLayout u{};
  uint64_t at = 0;
  auto take = [&](int64_t bytes) {
    const uint64_t r = at;
    at += static_cast<uint64_t>(round_up(bytes, 32));
    return r;
  };
  const int64_t S = t.chunk, E = s.routing.experts, pair = sim::kSortPairBytes;
  u.keys = take(4 * S);
  u.idx = take(4 * S);
  u.p0 = take(pair * S);
  u.p1 = take(pair * S);
  u.sorted = take(4 * S);
  u.offs = take(4 * S);
  u.dest = take(4 * S);
  u.flat = take(4 * S);
  u.wts = by_probability(s) ? take(4 * S) : 0;
  u.hist = take(4 * E);
  u.acc = take(4 * E);
  u.kept = take(4 * E);
  u.sums = take(4 * E);
  const int64_t chunks = std::max<int64_t>(1, ceil_div(entries(s), std::max<int64_t>(1, S)));
  u.block_rows = std::clamp<int64_t>(kTableBlockBytes / (4 * E), 1, chunks);
  u.block = take(4 * E * u.block_rows);
  u.tile = static_cast<uint64_t>(
      round_up(t.rows_per_tile * t.cols_per_tile * sim::dtype_bytes(s.dtype), 32));
  u.stage = take(static_cast<int64_t>(t.buffers * u.tile));
  u.zero = s.routing.pad != PadMode::None ? take(static_cast<int64_t>(u.tile)) : 0;
  u.end = at;
  return u;
}

sim::TileRef flat(uint64_t offset, DType dt) {
  return {offset, 0, 0, 0, TileLayout::Flat, dt};
}

}  // namespace

RoutingLayout routing_layout(const std::vector<int32_t>& expert_of,
                             const std::vector<double>& weights, const ref::RoutingConfig& c) {
  const int64_t E = c.experts, N = static_cast<int64_t>(expert_of.size());
  RoutingLayout l;
  l.routed.assign(E, 0);
  for (int32_t e : expert_of) ++l.routed[e];
  l.start.resize(E);
  for (int64_t e = 0, pos = 0; e < E; pos += l.routed[e++]) l.start[e] = pos;
  // A counting sort keeps flat order within each expert; probability mode then orders each run by
  // weight, stably, so equal weights keep flat order too.
  l.order.resize(N);
  std::vector<int64_t> next = l.start;
  for (int64_t f = 0; f < N; ++f) l.order[next[expert_of[f]]++] = static_cast<int32_t>(f);
  const bool by_weight = c.mode == CapacityMode::Probability;
  auto key = [&](int32_t f) { return std::isnan(weights[f]) ? -INFINITY : weights[f]; };
  l.kept.resize(E), l.offset.resize(E), l.rows_of.resize(E);
  l.dest.assign(N, -1);
  for (int64_t e = 0; e < E; ++e) {
    auto run = l.order.begin() + l.start[e];
    if (by_weight)
      std::stable_sort(run, run + l.routed[e],
                       [&](int32_t a, int32_t b) { return key(a) > key(b); });
    l.kept[e] = c.mode == CapacityMode::Dropless ? l.routed[e] : std::min(l.routed[e], c.capacity);
    l.rows_of[e] = c.pad == PadMode::None       ? l.kept[e]
                   : c.pad == PadMode::Capacity ? c.capacity
                                                : round_up(l.kept[e], c.pad_multiple);
    l.offset[e] = l.rows;
    for (int64_t r = 0; r < l.kept[e]; ++r) l.dest[run[r]] = static_cast<int32_t>(l.rows + r);
    l.rows += l.rows_of[e];
  }
  return l;
}

InitRoutingKernel::InitRoutingKernel(InitRoutingShape s, InitRoutingTiling t, bool is_default)
    : s_(std::move(s)),
      t_(t),
      default_(is_default),
      layout_(routing_layout(s_.expert_of, s_.weights, s_.routing)) {}

int64_t InitRoutingKernel::ub_bytes(const InitRoutingShape& s, const InitRoutingTiling& t) {
  return static_cast<int64_t>(ub_layout(s, t).end);
}

std::string InitRoutingKernel::name() const {
  static const char* kModes[] = {"dropless", "position", "probability"};
  return fmt::format("init_routing_{}x{}x{}_{}e_{}_{}", s_.tokens, s_.topk, s_.hidden,
                     s_.routing.experts, sim::dtype_name(s_.dtype),
                     kModes[static_cast<int>(s_.routing.mode)]);
}

nlohmann::json InitRoutingKernel::tiling_json() const {
  return {{"chunk", t_.chunk},
          {"rows_per_tile", t_.rows_per_tile},
          {"cols_per_tile", t_.cols_per_tile},
          {"buffers", t_.buffers},
          {"cores", t_.cores}};
}

nlohmann::json InitRoutingKernel::details() const {
  const int64_t kept = std::accumulate(layout_.kept.begin(), layout_.kept.end(), int64_t{0});
  nlohmann::json capacity = {{"rows", layout_.rows},
                             {"dropped_entries", entries(s_) - kept},
                             {"padding_rows", layout_.rows - kept}};
  if (drops(s_)) capacity["capacity"] = s_.routing.capacity;
  return {{"routing",
           {{"tokens_per_expert", layout_.routed}, {"imbalance", imbalance(layout_.routed)}}},
          {"capacity", capacity}};
}

double InitRoutingKernel::compulsory_bytes() const {
  const double N = static_cast<double>(entries(s_)), e = sim::dtype_bytes(s_.dtype);
  return static_cast<double>(s_.tokens * s_.hidden) * e + 4 * N * (by_probability(s_) ? 3 : 2) +
         static_cast<double>(layout_.rows * s_.hidden) * e +
         4.0 * s_.routing.experts * (drops(s_) ? 2 : 1);
}

double InitRoutingKernel::estimated_instructions() const {
  const int64_t N = entries(s_), E = s_.routing.experts, chunks = ceil_div(N, t_.chunk);
  // (chunk, expert) segments: one destination arange, or per-segment copies in probability mode.
  std::vector<int64_t> seen(static_cast<size_t>(E), -1);
  int64_t segments = 0;
  for (int64_t f = 0; f < N; ++f)
    if (int64_t& q = seen[s_.expert_of[f]]; q != f / t_.chunk) q = f / t_.chunk, ++segments;
  const int64_t kept = std::accumulate(layout_.kept.begin(), layout_.kept.end(), int64_t{0});
  const double col_chunks = s_.hidden > 0 ? static_cast<double>(ceil_div(s_.hidden, t_.cols_per_tile)) : 0.0;  // layout only: no rows
  const double rows = kept * col_chunks * (2 + 5.0 / t_.rows_per_tile) +
                      (layout_.rows - kept) * col_chunks / t_.rows_per_tile;
  const double passes = by_probability(s_) ? chunks * 48.0 + segments * 2.0 + E * 20.0
                                           : chunks * 40.0 + segments * 2.0;
  return rows + passes + chunks + 8.0 * t_.cores;
}

Status InitRoutingKernel::can_implement(const sim::HardwareSpec& hw) const {
  std::vector<std::pair<VecOp, DType>> ops = {
      {VecOp::Histogram, DType::Int32}, {VecOp::Add, DType::Int32},
      {VecOp::Dup, DType::Int32},       {VecOp::Cast, DType::Int32},
      {VecOp::Muls, DType::Fp32},       {VecOp::Dup, DType::Fp32},
      {VecOp::Arange, DType::Int32},    {VecOp::Sort32, DType::Fp32},
      {VecOp::MrgSort, DType::Fp32},    {VecOp::Extract, DType::Fp32},
      {VecOp::Adds, DType::Int32},      {VecOp::Scatter, DType::Int32}};
  if (drops(s_)) ops.push_back({VecOp::Mins, DType::Int32});
  if (s_.cumsum) ops.push_back({VecOp::Cumsum, DType::Int32});
  if (by_probability(s_)) ops.push_back({VecOp::Gather, DType::Fp32});
  if (s_.routing.pad != PadMode::None) ops.push_back({VecOp::Dup, s_.dtype});
  for (auto [op, dt] : ops)
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(dt)] > 0))
      return Status::bad("hardware", fmt::format("{} has no vector {} on {}", hw.name,
                                                 sim::vec_op_name(op), sim::dtype_name(dt)));
  if (t_.chunk < 32 || t_.chunk % 32 || t_.chunk > kMaxChunk)
    return Status::bad(
        "tiling.chunk",
        fmt::format("chunk must be a multiple of 32 in [32, {}] (sort32 repeats), found {}",
                    kMaxChunk, t_.chunk));
  if (by_probability(s_)) {
    const auto most = std::max_element(layout_.routed.begin(), layout_.routed.end());
    if (*most > t_.chunk)
      return Status::bad(
          "tiling.chunk",
          fmt::format("probability mode sorts each expert's weights in UB: expert {} receives {} "
                      "entries, more than a chunk of {}",
                      most - layout_.routed.begin(), *most, t_.chunk));
  }
  const int64_t e = sim::dtype_bytes(s_.dtype);
  if (s_.hidden > 0 && (t_.cols_per_tile <= 0 || (t_.cols_per_tile * e) % 32))  // hidden 0: the layout alone
    return Status::bad(
        "tiling.cols_per_tile",
        fmt::format("{} columns are not a whole number of 32-byte UB blocks", t_.cols_per_tile));
  if (t_.rows_per_tile < 1)
    return Status::bad("tiling.rows_per_tile", "rows_per_tile must be >= 1");
  if (t_.buffers < 1 || t_.buffers > hw.sync.event_ids)
    return Status::bad("tiling.buffers", fmt::format("buffers must be 1..{}, found {}",
                                                     hw.sync.event_ids, t_.buffers));
  if (const int64_t ub = ub_bytes(s_, t_); ub > hw.aiv.ub_bytes)
    return Status::bad(
        "tiling.chunk",
        fmt::format(
            "a chunk of {} entries, {} experts and {} slots of {} x {} need {} B of UB, more "
            "than its {} B",
            t_.chunk, s_.routing.experts, t_.buffers, t_.rows_per_tile, t_.cols_per_tile, ub,
            hw.aiv.ub_bytes));
  if (t_.cores < 1 || t_.cores > hw.num_aiv)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} AIVs on {}, found {}",
                                                   hw.num_aiv, hw.name, t_.cores));
  return Status::good();
}

std::vector<TensorInfo> InitRoutingKernel::tensors() const {
  const int64_t T = s_.tokens, K = s_.topk, H = s_.hidden, E = s_.routing.experts,
                e = sim::dtype_bytes(s_.dtype);
  GmAllocator gm;
  std::vector<TensorInfo> out;
  out.push_back({"x", s_.dtype, T, H, TensorLayout::RowMajor, gm.alloc(T * H * e), false});
  out.push_back({"ids", DType::Int32, T, K, TensorLayout::RowMajor, gm.alloc(T * K * 4), false});
  if (by_probability(s_))
    out.push_back(
        {"weights", DType::Fp32, T, K, TensorLayout::RowMajor, gm.alloc(T * K * 4), false});
  out.push_back({"expanded_x", s_.dtype, layout_.rows, H, TensorLayout::RowMajor,
                 gm.alloc(layout_.rows * H * e), true});
  out.push_back({"expanded_row_idx", DType::Int32, 1, T * K, TensorLayout::RowMajor,
                 gm.alloc(T * K * 4), true});
  out.push_back(
      {"expert_tokens", DType::Int32, 1, E, TensorLayout::RowMajor, gm.alloc(E * 4), true});
  if (drops(s_))
    out.push_back({"tokens_before_capacity", DType::Int32, 1, E, TensorLayout::RowMajor,
                   gm.alloc(E * 4), true});
  return out;
}

std::vector<double> InitRoutingKernel::make_input(size_t index, const InputSpec& spec) const {
  // The ids (and weights) are the routing the program was lowered for.
  if (index == 1) return {s_.expert_of.begin(), s_.expert_of.end()};
  if (index == 2 && by_probability(s_)) return s_.weights;
  return Kernel::make_input(index, spec);
}

Golden InitRoutingKernel::reference(const std::vector<std::vector<double>>& in) const {
  return references(in, {}).front();
}

std::vector<Golden> InitRoutingKernel::references(const std::vector<std::vector<double>>& in,
                                                  const std::vector<std::vector<double>>&) const {
  const std::vector<int32_t> picks(in[1].begin(), in[1].end());
  const ref::Routing r = ref::init_routing(s_.tokens, s_.topk, picks.data(),
                                           by_probability(s_) ? in[2].data() : nullptr,
                                           in[0].data(), s_.hidden, s_.routing);
  auto golden = [](auto first, auto last) {
    Golden g;
    g.exact.assign(first, last);
    g.same_precision = g.exact;
    return g;
  };
  const std::vector<int64_t>& tokens = s_.cumsum ? r.cumsum : r.counts;
  std::vector<Golden> out{golden(r.expanded_x.begin(), r.expanded_x.end()),
                          golden(r.expanded_row_idx.begin(), r.expanded_row_idx.end()),
                          golden(tokens.begin(), tokens.end())};
  if (drops(s_)) out.push_back(golden(r.before_capacity.begin(), r.before_capacity.end()));
  return out;
}

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

InitRoutingTiling default_init_routing_tiling(const InitRoutingShape& s,
                                              const sim::HardwareSpec& hw) {
  InitRoutingTiling t;
  const int64_t N = entries(s), align = 32 / sim::dtype_bytes(s.dtype);
  // The chunk: the entries over every AIV, at least the largest expert in probability mode, at
  // most what leaves half of UB to the row gather.
  int64_t most = 0;
  if (by_probability(s)) {
    std::vector<int64_t> routed(static_cast<size_t>(s.routing.experts), 0);
    for (int32_t e : s.expert_of) most = std::max(most, ++routed[e]);
  }
  t.chunk =
      std::clamp(round_up(std::max(ceil_div(N, hw.num_aiv), most), 32), int64_t{32}, kMaxChunk);
  t.rows_per_tile = t.cols_per_tile = 0;
  while (t.chunk > 32 && InitRoutingKernel::ub_bytes(s, t) > hw.aiv.ub_bytes / 2) t.chunk -= 32;
  t.rows_per_tile = 4;
  t.cols_per_tile = round_up(s.hidden, align);
  while (InitRoutingKernel::ub_bytes(s, t) > hw.aiv.ub_bytes &&
         (t.rows_per_tile > 1 || t.cols_per_tile > align)) {
    if (t.rows_per_tile > 1)
      t.rows_per_tile /= 2;
    else
      t.cols_per_tile = round_up(t.cols_per_tile / 2, align);
  }
  t.cores = static_cast<int>(std::clamp<int64_t>(ceil_div(N, t.chunk), 1, hw.num_aiv));
  return t;
}

std::unique_ptr<Kernel> make_init_routing(const YamlNode& w, const std::optional<YamlNode>& tiling,
                                          const sim::HardwareSpec& hw) {
  InitRoutingShape s;
  s.hidden = w.at("hidden").as_positive_int();
  if (s.hidden > (int64_t(1) << 24))
    w.at("hidden").fail("hidden beyond 2^24 does not fit the instruction fields");
  s.dtype = *sim::dtype_from_name(w.at("dtype").as_enum({"fp16", "bf16", "fp32"}));
  const YamlNode routing = w.at("routing");
  const RoutingSpec r = parse_routing(routing);
  s.tokens = r.tokens, s.topk = r.topk, s.routing.experts = r.experts;
  s.expert_of = draw_routing(r);
  if (auto cap = w.get("capacity")) {
    const std::string mode = cap->at("mode").as_enum({"dropless", "position", "probability"});
    s.routing.mode = mode == "dropless"   ? CapacityMode::Dropless
                     : mode == "position" ? CapacityMode::Position
                                          : CapacityMode::Probability;
    auto factor = cap->get("factor");
    auto rows = cap->get("rows");
    if (s.routing.mode == CapacityMode::Dropless) {
      if (factor || rows) (factor ? *factor : *rows).fail("a dropless expert has no capacity");
    } else if (factor && rows) {
      rows->fail("give either factor or rows, not both");
    } else if (factor) {
      const double cf = factor->as_positive_double();
      s.routing.capacity = static_cast<int64_t>(
          std::ceil(cf * static_cast<double>(s.tokens * s.topk) / static_cast<double>(r.experts)));
    } else if (rows) {
      s.routing.capacity = rows->as_positive_int();
    } else {
      cap->fail(fmt::format(
          "capacity mode {} needs factor (C = ceil(factor x tokens x topk / experts)) or rows (C)",
          mode));
    }
  }
  if (auto pad = w.get("pad")) {
    if (pad->is_map()) {
      s.routing.pad = PadMode::Multiple;
      s.routing.pad_multiple = pad->at("multiple").as_positive_int();
    } else if (pad->as_enum({"none", "capacity"}) == "capacity") {
      if (!drops(s)) pad->fail("padding to capacity needs capacity mode position or probability");
      s.routing.pad = PadMode::Capacity;
    }
  }
  if (auto et = w.get("expert_tokens")) s.cumsum = et->as_enum({"count", "cumsum"}) == "cumsum";
  // Probability mode drops by weight, so the weights are part of the routing the kernel is lowered
  // for: uniform in (0, 1], or four levels (many ties).
  auto weights = routing.get("weights");
  if (by_probability(s)) {
    const bool ties = weights && weights->as_enum({"uniform", "ties"}) == "ties";
    Rng rng(r.seed * 0x2545F4914F6CDD1Dull + 0x3E1);
    s.weights.resize(s.expert_of.size());
    for (double& v : s.weights)
      v = num::round_to(num::Format::Fp32, ties ? 0.25 * static_cast<double>(1 + rng.next() % 4)
                                                : 1.0 - rng.uniform01());
  } else if (weights) {
    weights->fail("'weights' applies to capacity mode probability only");
  }
  InitRoutingTiling t = default_init_routing_tiling(s, hw);
  if (tiling) {
    if (auto c = tiling->get("chunk")) t.chunk = c->as_positive_int();
    if (auto rp = tiling->get("rows_per_tile")) t.rows_per_tile = rp->as_positive_int();
    if (auto cp = tiling->get("cols_per_tile")) t.cols_per_tile = cp->as_positive_int();
    if (auto bu = tiling->get("buffers")) t.buffers = static_cast<int>(bu->as_positive_int());
    if (auto c = tiling->get("cores")) t.cores = static_cast<int>(c->as_positive_int());
  }
  auto k = std::make_unique<InitRoutingKernel>(std::move(s), t, !tiling.has_value());
  if (k->layout().rows > INT32_MAX) w.fail("expanded_x would hold more than 2^31 rows");
  return k;
}

}  // namespace npusim::kernels
