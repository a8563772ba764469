#include "kernels/init_routing.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>

#include "common/numerics.hpp"
#include "kernels/rng.hpp"
#include "kernels/routing.hpp"
#include "kernels/init_routing_impl.hpp"
#include "kernels/tensor_io.hpp"

namespace npusim::kernels {

using ref::CapacityMode;
using ref::PadMode;
using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;
namespace init_routing_impl {

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

}  // namespace init_routing_impl

using namespace init_routing_impl;


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

InitRoutingTiling parse_init_routing_tiling(const YamlNode& tiling, InitRoutingTiling t) {
  if (auto c = tiling.get("chunk")) t.chunk = c->as_positive_int();
  if (auto rp = tiling.get("rows_per_tile")) t.rows_per_tile = rp->as_positive_int();
  if (auto cp = tiling.get("cols_per_tile")) t.cols_per_tile = cp->as_positive_int();
  if (auto bu = tiling.get("buffers")) t.buffers = static_cast<int>(bu->as_positive_int());
  if (auto c = tiling.get("cores")) t.cores = static_cast<int>(c->as_positive_int());
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
  if (tiling) t = parse_init_routing_tiling(*tiling, t);
  auto k = std::make_unique<InitRoutingKernel>(std::move(s), t, !tiling.has_value());
  if (k->layout().rows > INT32_MAX) w.fail("expanded_x would hold more than 2^31 rows");
  return k;
}

std::unique_ptr<Kernel> InitRoutingKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec&) const {
  return std::make_unique<InitRoutingKernel>(s_, parse_init_routing_tiling(tiling, t_), false);
}

}  // namespace npusim::kernels
