#include "kernels/lightning_indexer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/cube_vector.hpp"
#include "kernels/lightning_indexer_impl.hpp"
#include "kernels/reference/indexer.hpp"
#include "kernels/rng.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/topk.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::TileRef;
using sim::VecOp;
namespace indexer_impl {

// ---- Work plan: query blocks, their key-block ranges (units) and the AIC each unit runs on ----


Plan make_plan(const IndexerShape& s, const IndexerTiling& t, int aiv_per_aic) {
  Plan p;
  p.qa = ceil_div(t.q_block, aiv_per_aic);
  const std::vector<int64_t> vis = s.visible(), base = s.key_base();
  for_each_qblock(s, vis, t.q_block, t.key_block, t.splits, [&](int64_t first, int64_t nq, int64_t vmax, int64_t blocks, int sp) {
    p.qblocks.push_back({first, nq, base[first], vmax, blocks, sp});
    p.max_splits = std::max(p.max_splits, sp);
    p.stage2 |= s.fused_topk && sp > 1;
    for (int k = 0; k < sp; ++k)
      p.units.push_back({static_cast<int>(p.qblocks.size()) - 1, k, blocks * k / sp, blocks * (k + 1) / sp});
    p.items += blocks;
  });
  // Longest first to the least loaded AIC; an empty unit still costs its outputs.
  const int cores = static_cast<int>(std::clamp<int64_t>(t.cores, 1, static_cast<int64_t>(p.units.size())));
  std::vector<int> order(p.units.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return p.units[a].b1 - p.units[a].b0 > p.units[b].b1 - p.units[b].b0;
  });
  std::vector<double> load(static_cast<size_t>(cores), 0.0);
  p.per_core.assign(static_cast<size_t>(cores), {});
  for (int u : order) {
    const auto c = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    load[c] += static_cast<double>(p.units[u].b1 - p.units[u].b0) + 0.01;
    p.per_core[c].push_back(u);
  }
  for (auto& v : p.per_core) std::sort(v.begin(), v.end());
  return p;
}

// ---- On-chip layouts ----


AicLayout aic_layout(const IndexerShape& s, const IndexerTiling& t, const sim::HardwareSpec& hw) {
  const int64_t e = sim::dtype_bytes(s.dtype), d = round_up(s.head_dim, 32), m = round_up(t.q_block * s.heads, 16);
  AicLayout l{};
  l.q_l1 = 0;
  l.k_l1 = static_cast<uint64_t>(m * d * e);
  l.k_stage = static_cast<uint64_t>(d * round_up(t.l1_blocks * t.key_block, 16) * e);
  l.l1_bytes = static_cast<int64_t>(l.k_l1 + t.stages * l.k_stage);
  l.n0 = std::min<int64_t>(round_up(t.key_block, 16), hw.aic.l0b_bytes / 2 / (d * e) / 16 * 16);
  l.l0b_half = static_cast<uint64_t>(d * l.n0 * e);
  l.l0c_buf = static_cast<uint64_t>(m * round_up(t.key_block, 16) * 4);
  l.l0c_bufs = 2 * static_cast<int64_t>(l.l0c_buf) <= hw.aic.l0c_bytes ? 2 : 1;
  return l;
}

// One AIV's UB. Stage 1: the L0C->UB slots (3510) or the workspace copies (2201), the k_scale of
// a group of merge_blocks key blocks (two), the unit's weights and weight tile, then per query the
// batch's keys and two top-k areas, and the batch's columns (fused), or two sets of keys rows and
// the -inf fill (unfused). Stage 2 reuses the UB from 0.

AivUb aiv_ub(const IndexerShape& s, const IndexerTiling& t, bool via_ub, int64_t qa, int max_splits) {
  AivUb u;
  uint64_t at = 0;
  auto put = [&at](uint64_t bytes) {
    const uint64_t off = at;
    at += align32(static_cast<int64_t>(bytes));
    return off;
  };
  const int64_t rows = qa * s.heads, N = t.key_block, K = s.topk, cap = t.merge_blocks * N;
  u.slot_bytes = static_cast<uint64_t>(rows * N * 4);
  if (via_ub) put(t.slots * u.slot_bytes);
  else u.scores[0] = put(u.slot_bytes), u.scores[1] = put(u.slot_bytes);
  u.kscale[0] = put(cap * 4), u.kscale[1] = put(cap * 4);
  u.wbuf = put(rows * 4), u.qsbuf = put(rows * 4), u.wtile = put(u.slot_bytes);
  if (s.fused_topk) {
    u.keys[0] = put(qa * cap * 4);
    u.idx = put(cap * 4);
    u.area_bytes = align32(static_cast<int64_t>(TopkEmitter::area_bytes(K, cap)));
    u.areas = put(2 * qa * u.area_bytes);
  } else {
    u.keys[0] = put(qa * N * 4), u.keys[1] = put(qa * N * 4);
    u.fill = put(fill_len(s) * 4);
  }
  u.bytes = at;
  if (s.fused_topk && max_splits > 1) {  // TopkStage2's layout, from 0
    u.s2_area[1] = align32(max_splits * K * sim::kSortPairBytes), u.s2_out = 2 * u.s2_area[1];
    u.s2_bytes = TopkStage2::ub_bytes(K, max_splits);
  }
  return u;
}

// ---- GM placement: the tensors, then the workspaces ----


Gm place(const IndexerShape& s) {
  const int64_t T = s.tokens(), e = sim::dtype_bytes(s.dtype), HI = s.heads;
  GmAllocator gm;
  Gm g{};
  g.q = gm.alloc(T * HI * s.head_dim * e);
  g.k = gm.alloc(s.total_keys() * s.head_dim * e);
  g.qs = gm.alloc(T * HI * 4);
  g.ks = gm.alloc(s.total_keys() * 4);
  g.w = gm.alloc(T * HI * 4);
  if (s.fused_topk) g.idx = gm.alloc(T * s.topk * 4), g.vals = gm.alloc(T * s.topk * 4);
  else g.scores = gm.alloc(T * s.max_keys() * 4);
  g.end = gm.footprint();
  return g;
}

}  // namespace indexer_impl

using namespace indexer_impl;


// ---- Shape ----

std::vector<int64_t> IndexerShape::key_base() const {
  std::vector<int64_t> v;
  int64_t base = 0;
  for (size_t b = 0; b < queries.size(); ++b) {
    v.insert(v.end(), static_cast<size_t>(queries[b]), base);
    base += keys[b];
  }
  return v;
}

std::vector<int64_t> IndexerShape::visible() const {
  std::vector<int64_t> v;
  for (size_t b = 0; b < queries.size(); ++b)
    for (int64_t j = 0; j < queries[b]; ++j) {
      const int64_t pos = context[b] - queries[b] + j;
      v.push_back(std::min(keys[b], (pos + 1) / ratio));
    }
  return v;
}

sim::DType indexer_dtype_for(const sim::HardwareSpec& hw) {
  return hw.aic.cube_k0[static_cast<int>(DType::Fp8)] ? DType::Fp8 : DType::Bf16;
}


// ---- Kernel interface ----

std::string LightningIndexerKernel::name() const {
  return fmt::format("lightning_indexer_{}x{}_h{}x{}_k{}{}_{}{}", s_.tokens(), s_.max_keys(), s_.heads, s_.head_dim, s_.topk,
                     s_.ratio > 1 ? fmt::format("_r{}", s_.ratio) : "", sim::dtype_name(s_.dtype), s_.fused_topk ? "" : "_scores");
}

nlohmann::json LightningIndexerKernel::tiling_json() const {
  return {{"q_block", t_.q_block}, {"key_block", t_.key_block}, {"l1_blocks", t_.l1_blocks}, {"stages", t_.stages},
          {"slots", t_.slots}, {"merge_blocks", t_.merge_blocks}, {"splits", t_.splits}, {"cores", t_.cores}};
}

nlohmann::json LightningIndexerKernel::details() const {
  const Plan p = make_plan(s_, t_, 2);
  return {{"indexer", {{"batch", s_.keys.size()}, {"ratio", s_.ratio}, {"fused_topk", s_.fused_topk},
                       {"dtype", sim::dtype_name(s_.dtype)}, {"query_blocks", p.qblocks.size()}, {"units", p.units.size()},
                       {"key_blocks", p.items}, {"two_stage", p.stage2}}}};
}

std::vector<TensorInfo> LightningIndexerKernel::tensors() const {
  const Gm g = place(s_);
  const int64_t T = s_.tokens(), HI = s_.heads, SK = s_.total_keys();
  std::vector<TensorInfo> out{{"q", s_.dtype, T, HI * s_.head_dim, TensorLayout::RowMajor, g.q, false},
                              {"k", s_.dtype, SK, s_.head_dim, TensorLayout::RowMajor, g.k, false},
                              {"q_scale", DType::Fp32, T, HI, TensorLayout::RowMajor, g.qs, false},
                              {"k_scale", DType::Fp32, 1, SK, TensorLayout::RowMajor, g.ks, false},
                              {"w", DType::Fp32, T, HI, TensorLayout::RowMajor, g.w, false}};
  if (s_.fused_topk) {
    out.push_back({"indices", DType::Int32, T, s_.topk, TensorLayout::RowMajor, g.idx, true});
    out.push_back({"values", DType::Fp32, T, s_.topk, TensorLayout::RowMajor, g.vals, true});
  } else {
    out.push_back({"scores", DType::Fp32, T, s_.max_keys(), TensorLayout::RowMajor, g.scores, true});
  }
  return out;
}

double LightningIndexerKernel::flops() const {
  // Per visible (query, key): the HI dot products of DI, ReLU, weight and head sum, the k_scale product.
  const std::vector<int64_t> v = s_.visible();
  const double pairs = static_cast<double>(std::accumulate(v.begin(), v.end(), int64_t{0}));
  return pairs * (2.0 * s_.heads * s_.head_dim + 3.0 * s_.heads + 1.0);
}

double LightningIndexerKernel::compulsory_bytes() const {
  double bytes = 0;
  for (const auto& t : tensors()) bytes += static_cast<double>(t.rows * t.cols) * sim::dtype_bytes(t.dtype);
  return bytes;
}

double LightningIndexerKernel::estimated_instructions() const {
  // Mirrors the lowering (the GM hand-off of 2201, which costs a few more per block than L0C->UB).
  const Plan p = make_plan(s_, t_, 2);
  const double items = static_cast<double>(p.items), units = static_cast<double>(p.units.size()), qa = static_cast<double>(p.qa);
  const double tree = std::ceil(std::log2(static_cast<double>(s_.heads))), mb = static_cast<double>(t_.merge_blocks);
  const double subs = static_cast<double>(ceil_div(t_.key_block, s_.dtype == DType::Fp8 ? 256 : 128));
  const double aic = 12 + 4 * subs + 5.0 / static_cast<double>(t_.l1_blocks) + 4;
  const double batch = s_.fused_topk ? 3 + TopkEmitter::levels(t_.merge_blocks * t_.key_block) : 3;
  const double aiv = 10 + qa * (tree + 1) + (5 + qa * batch) / mb;
  const double unit = 12 + 2 * (8 + qa * s_.heads + qa * 4);
  return items * (aic + 2 * aiv) + units * unit + (p.stage2 ? 12.0 * s_.tokens() : 0) + static_cast<double>(p.per_core.size()) * 40;
}

int64_t LightningIndexerKernel::ub_bytes(const IndexerShape& s, const IndexerTiling& t, const sim::HardwareSpec& hw) {
  const int A = std::max(1, hw.aiv_per_aic);
  const int64_t qa = ceil_div(t.q_block, A);
  const int max_splits = s.fused_topk ? make_plan(s, t, A).max_splits : 1;
  const AivUb u = aiv_ub(s, t, hw.path(Path::L0CToUb).available, qa, max_splits);
  return static_cast<int64_t>(std::max(u.bytes, u.s2_bytes));
}

Status LightningIndexerKernel::can_implement(const sim::HardwareSpec& hw) const {
  const int64_t e = sim::dtype_bytes(s_.dtype), ka = k_align(s_.dtype), D = s_.head_dim;
  if (!hw.aic.cube_k0[static_cast<int>(s_.dtype)])
    return Status::bad("workload.dtype", fmt::format("{} has no {} cube; fp8 values are exact in bf16 (dtype: bf16)", hw.name,
                                                     sim::dtype_name(s_.dtype)));
  if (D % ka)
    return Status::bad("workload.head_dim", fmt::format("head_dim {} cannot be tiled by the {} cube: its K fractal holds 32 bytes, "
                                                        "so it must be a multiple of {}", D, sim::dtype_name(s_.dtype), ka));
  if (2 * D * 16 * e > hw.aic.l0b_bytes)
    return Status::bad("workload.head_dim", fmt::format("head_dim {} leaves no double-buffered 16-key tile in L0B ({} B)", D, hw.aic.l0b_bytes));
  if (s_.fused_topk && (s_.topk < 1 || s_.topk > s_.max_keys() || s_.topk > kMaxTopk))
    return Status::bad("workload.topk", fmt::format("topk {} must lie in 1..{} (the keys of the longest sequence, at most {})",
                                                    s_.topk, s_.max_keys(), kMaxTopk));
  if (t_.q_block < 1 || round_up(t_.q_block * s_.heads, 16) * round_up(D, ka) * e > hw.aic.l0a_bytes)
    return Status::bad("tiling.q_block", fmt::format("q_block {} x {} heads x head_dim {} must be >= 1 block and fit L0A ({} B)",
                                                     t_.q_block, s_.heads, D, hw.aic.l0a_bytes));
  if (t_.key_block < 32 || t_.key_block % 32)
    return Status::bad("tiling.key_block", fmt::format("key_block {} must be a multiple of 32 (sort32 blocks)", t_.key_block));
  const AicLayout l = aic_layout(s_, t_, hw);
  if (static_cast<int64_t>(l.l0c_buf) > hw.aic.l0c_bytes)
    return Status::bad("tiling.key_block", fmt::format("the fp32 score tile {} x {} needs {} B of L0C, more than its {} B",
                                                       t_.q_block * s_.heads, t_.key_block, l.l0c_buf, hw.aic.l0c_bytes));
  if (t_.stages < 1 || t_.stages >= hw.sync.event_ids || l.l1_bytes > hw.aic.l1_bytes)
    return Status::bad("tiling.stages", fmt::format("stages must be 1..{} and Q + stages x K tiles of l1_blocks key blocks ({} B) fit L1 ({} B)",
                                                    hw.sync.event_ids - 1, l.l1_bytes, hw.aic.l1_bytes));
  if (hw.sync.event_ids < 5) return Status::bad("hardware", "the AIVs use five V<->MTE2 events");
  const CubeVectorSlots cv = CubeVectorSlots::for_hardware(hw, t_.slots);
  if (Status st = cv.check(hw); !st.ok) return st;
  if (hw.sync.cross_flag_ids <= kBarrier) return Status::bad("hardware", "the all-AIV barrier needs a cross-core flag beyond the hand-off's");
  if (t_.merge_blocks < 1 || (s_.fused_topk && t_.merge_blocks * t_.key_block > kMaxTopkCap))
    return Status::bad("tiling.merge_blocks", fmt::format("merge_blocks x key_block = {} candidates must be 1 block .. {} (one MrgSort queue)",
                                                          t_.merge_blocks * t_.key_block, kMaxTopkCap));
  if (t_.l1_blocks < 1) return Status::bad("tiling.l1_blocks", "l1_blocks must be >= 1");
  if (t_.splits < 1 || (s_.fused_topk && t_.splits > 1 && s_.topk > kMaxMergeQueue))
    return Status::bad("tiling.splits", fmt::format("splits must be >= 1, and 1 when topk {} exceeds one MrgSort queue ({})",
                                                    s_.topk, kMaxMergeQueue));
  if (t_.cores < 1 || t_.cores > hw.num_aic)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} on {}, found {}", hw.num_aic, hw.name, t_.cores));
  for (auto [op, dt] : {std::pair{VecOp::Relu, DType::Fp32}, {VecOp::Mul, DType::Fp32}, {VecOp::Add, DType::Fp32},
                        {VecOp::Dup, DType::Fp32}, {VecOp::Dup, DType::Int32}, {VecOp::Arange, DType::Int32}, {VecOp::Maxs, DType::Int32},
                        {VecOp::Sort32, DType::Fp32}, {VecOp::MrgSort, DType::Fp32}, {VecOp::Extract, DType::Fp32}})
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(dt)] > 0))
      return Status::bad("hardware", fmt::format("{} has no {} vector {}", hw.name, sim::dtype_name(dt), sim::vec_op_name(op)));
  const int64_t ub = ub_bytes(s_, t_, hw);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.key_block", fmt::format("q_block {} and key_block {} (merge_blocks {}, topk {}) need {} B of UB per AIV, "
                                                       "more than its {} B", t_.q_block, t_.key_block, t_.merge_blocks, s_.topk, ub,
                                                       hw.aiv.ub_bytes));
  return Status::good();
}

// ---- Inputs and references ----

std::vector<double> LightningIndexerKernel::make_input(size_t index, const InputSpec& spec) const {
  const int64_t T = s_.tokens(), HI = s_.heads, D = s_.head_dim;
  const uint64_t seed = spec.seed * 0x9E3779B97F4A7C15ull + (index % 2) + 11;  // q and q_scale share a stream, as k and k_scale do
  if (index == 4) {  // w: weights_proj output times HI^-0.5 DI^-0.5, in fp32
    Rng rng(seed);
    std::vector<double> w(static_cast<size_t>(T * HI));
    for (auto& x : w) x = static_cast<float>(rng.normal() * spec.scale / std::sqrt(static_cast<double>(HI * D)));
    return w;
  }
  const bool q = index == 0 || index == 2;
  const ref::Fp8Rows z = ref::random_fp8_rows(q ? T * HI : s_.total_keys(), D, spec.distribution,
                                              !q && spec.distribution == "ties", spec.scale, seed);
  return index < 2 ? z.values : z.scales;
}

Golden LightningIndexerKernel::reference(const std::vector<std::vector<double>>& inputs) const { return references(inputs, {})[0]; }

std::vector<Golden> LightningIndexerKernel::references(const std::vector<std::vector<double>>& in,
                                                       const std::vector<std::vector<double>>& device) const {
  ref::IndexerOperands op;
  op.tokens = s_.tokens(), op.heads = s_.heads, op.head_dim = s_.head_dim, op.cols = s_.max_keys();
  op.q = in[0].data(), op.k = in[1].data(), op.q_scale = in[2].data(), op.k_scale = in[3].data(), op.w = in[4].data();
  op.key_base = s_.key_base(), op.visible = s_.visible();
  Golden g;
  ref::indexer_scores(op, &g.exact, &g.same_precision);
  if (!s_.fused_topk) return {g};
  auto [idx, val] = topk_goldens(op.tokens, op.cols, s_.topk, g.exact, g.same_precision, device.empty() ? nullptr : &device[0]);
  return {idx, val};
}

// ---- Config ----

IndexerTiling default_indexer_tiling(const IndexerShape& s, const sim::HardwareSpec& hw) {
  IndexerTiling t;
  const int A = std::max(1, hw.aiv_per_aic);
  const int64_t most_queries = s.queries.empty() ? 1 : *std::max_element(s.queries.begin(), s.queries.end());
  t.q_block = std::min(A * ceil_div(64, s.heads * A), round_up(most_queries, A));
  while (t.q_block > 1 && round_up(t.q_block * s.heads, 16) * round_up(s.head_dim, 32) * sim::dtype_bytes(s.dtype) > hw.aic.l0a_bytes)
    --t.q_block;
  t.cores = hw.num_aic;
  const auto fits = [&](const IndexerTiling& x) { return LightningIndexerKernel::ub_bytes(s, x, hw) <= hw.aiv.ub_bytes; };
  for (int64_t kb = 512; kb >= 32; kb /= 2) {
    t.key_block = kb;
    // As many blocks per merge batch (and k_scale group) as topk (unfused: 2048 keys) allows and UB holds.
    for (t.merge_blocks = std::max<int64_t>(1, std::min(s.fused_topk ? s.topk : 2048, kMaxTopkCap) / kb); t.merge_blocks > 1 && !fits(t);)
      --t.merge_blocks;
    for (t.l1_blocks = 2; t.l1_blocks > 1 && aic_layout(s, t, hw).l1_bytes > hw.aic.l1_bytes;) --t.l1_blocks;
    const AicLayout l = aic_layout(s, t, hw);
    if (static_cast<int64_t>(l.l0c_buf) * 2 <= hw.aic.l0c_bytes && l.l1_bytes <= hw.aic.l1_bytes && fits(t)) break;
  }
  // Stage 2 per split: one merge of the list (k pairs) against a key block's ReLU / weight / head
  // sum (~3 HI key_block / rate) and its sort (~3 key_block pairs / rate).
  const double vrate = hw.aiv.vec_rate[static_cast<int>(VecOp::Add)][static_cast<int>(DType::Fp32)];
  const double srate = std::max(1e-9, hw.aiv.vec_rate[static_cast<int>(VecOp::MrgSort)][static_cast<int>(DType::Fp32)]);
  const double block = 3.0 * s.heads * t.key_block / std::max(1e-9, vrate) + 3.0 * t.key_block / srate;
  const double split = s.fused_topk ? 1.5 * s.topk / srate * t.q_block / A : 0.0;
  const Plan one = make_plan(s, t, A);
  int64_t blocks = 1;
  for (const QBlock& q : one.qblocks) blocks = std::max(blocks, q.blocks);
  t.splits = s.fused_topk && s.topk > kMaxMergeQueue
                 ? 1 : choose_splits(static_cast<int64_t>(one.qblocks.size()), blocks, hw.num_aic, split / block);
  while (t.splits > 1 && !fits(t)) --t.splits;  // stage 2 holds splits lists in UB
  t.cores = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(make_plan(s, t, A).units.size()), 1, hw.num_aic));
  return t;
}

namespace {
// An int, or a list of one int per sequence.
std::vector<int64_t> per_sequence(const YamlNode& n, size_t batch) {
  if (n.is_seq()) {
    std::vector<int64_t> v = n.as_int_list();
    if (v.size() != batch) n.fail(fmt::format("expected {} values (one per sequence of the batch), found {}", batch, v.size()));
    for (int64_t x : v)
      if (x < 0) n.fail("expected values >= 0");
    return v;
  }
  return std::vector<int64_t>(batch, n.as_positive_int());
}
}  // namespace

IndexerTiling parse_indexer_tiling(const YamlNode& tiling, IndexerTiling t) {
  if (auto x = tiling.get("q_block")) t.q_block = x->as_positive_int();
  if (auto x = tiling.get("key_block")) t.key_block = x->as_positive_int();
  if (auto x = tiling.get("l1_blocks")) t.l1_blocks = x->as_positive_int();
  if (auto x = tiling.get("stages")) t.stages = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("slots")) t.slots = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("merge_blocks")) t.merge_blocks = x->as_positive_int();
  if (auto x = tiling.get("splits")) t.splits = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("cores")) t.cores = static_cast<int>(x->as_positive_int());
  return t;
}

std::unique_ptr<Kernel> make_lightning_indexer(const YamlNode& w, const std::optional<YamlNode>& tiling,
                                               const sim::HardwareSpec& hw) {
  IndexerShape s;
  size_t batch = 1;
  if (auto x = w.get("batch")) batch = static_cast<size_t>(x->as_positive_int());
  const int64_t tokens = w.at("tokens").as_positive_int();
  if (tokens % static_cast<int64_t>(batch)) w.at("tokens").fail(fmt::format("{} tokens do not split evenly over {} sequences", tokens, batch));
  s.queries.assign(batch, tokens / static_cast<int64_t>(batch));
  s.keys = per_sequence(w.at("keys"), batch);
  s.topk = w.at("topk").as_positive_int();
  if (auto x = w.get("heads")) s.heads = x->as_positive_int();
  if (auto x = w.get("head_dim")) s.head_dim = x->as_positive_int();
  if (auto x = w.get("ratio")) s.ratio = x->as_positive_int();
  if (auto x = w.get("fused_topk")) s.fused_topk = x->as_bool();
  s.dtype = indexer_dtype_for(hw);
  if (auto x = w.get("dtype")) s.dtype = *sim::dtype_from_name(x->as_enum({"fp8", "bf16"}));
  for (int64_t k : s.keys) s.context.push_back(k * s.ratio);
  if (auto x = w.get("context")) s.context = per_sequence(*x, batch);
  for (size_t b = 0; b < batch; ++b) {
    if (s.context[b] / s.ratio != s.keys[b])
      w.at(w.has("context") ? "context" : "keys").fail(fmt::format("sequence {}: {} tokens at ratio {} give {} keys, not {}", b, s.context[b],
                                                                    s.ratio, s.context[b] / s.ratio, s.keys[b]));
    if (s.queries[b] > s.context[b])
      w.at("tokens").fail(fmt::format("sequence {} has {} queries but only {} tokens of context", b, s.queries[b], s.context[b]));
  }
  if (s.fused_topk && s.topk > s.max_keys())
    w.at("topk").fail(fmt::format("topk {} exceeds the {} keys of the longest sequence", s.topk, s.max_keys()));
  if (s.heads * s.head_dim > (int64_t(1) << 20) || s.total_keys() > (int64_t(1) << 30) || tokens > (int64_t(1) << 24))
    w.fail("heads x head_dim beyond 2^20, keys beyond 2^30 or tokens beyond 2^24 do not fit the instruction fields");
  IndexerTiling t = default_indexer_tiling(s, hw);
  if (tiling) t = parse_indexer_tiling(*tiling, t);
  return std::make_unique<LightningIndexerKernel>(std::move(s), t, !tiling.has_value());
}

std::unique_ptr<Kernel> LightningIndexerKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec&) const {
  return std::make_unique<LightningIndexerKernel>(s_, parse_indexer_tiling(tiling, t_), false);
}

}  // namespace npusim::kernels
