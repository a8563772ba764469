// The tiling spaces of the attention templates (flash_attention, sparse_attention,
// lightning_indexer): block sizes on the ladder within the sequence and the on-chip buffers, the
// pipeline depths, key splits and core counts. The constraints are can_implement's buffer
// accounting (the kernels' own layout functions, fed the tiling the point describes) and the
// pruning of splits and core counts beyond the work the tiling makes (the plans clamp them).
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <tuple>

#include "kernels/flash_attention.hpp"
#include "kernels/lightning_indexer.hpp"
#include "kernels/lightning_indexer_impl.hpp"
#include "kernels/space_util.hpp"
#include "kernels/sparse_attention.hpp"
#include "kernels/topk.hpp"

namespace npusim::kernels {

namespace {

double bytes_per_cycle_of_l2(const sim::HardwareSpec& hw) {
  return hw.l2.aggregate_bw_gbs * 1e3 / hw.freq_mhz;
}

}  // namespace

// ---- flash attention ----

SearchSpace FlashAttentionKernel::search_space(const sim::HardwareSpec& hw) const {
  struct Ctx {
    FlashAttentionShape s;
    FlashAttentionTiling base;
    sim::HardwareSpec hw;
  };
  const auto ctx = std::make_shared<const Ctx>(Ctx{s_, t_, hw});
  const FlashAttentionShape& s = s_;
  SearchSpace sp;
  // A query block holds at most the g x q_len rows of a KV head; key blocks up to the sequence.
  const int64_t q_cap = std::min<int64_t>(256, round_up(s.group() * s.q_len, 16));
  const int kQ = sp.add("q_block", space::with(space::ladder(16, q_cap, 16), t_.q_block));
  const int64_t kv_cap = std::min<int64_t>(512, round_up(s.kv_len, 16));
  const int kKv =
      sp.add("kv_block",
             space::with(space::ladder(std::min<int64_t>(kv_cap, 32), kv_cap, 16), t_.kv_block));
  const int kStages = sp.add("stages", space::with(space::ladder(1, 4), t_.stages));
  const int64_t min_q = sp.params[kQ].values.front(), min_kv = sp.params[kKv].values.front();
  const std::vector<int64_t> splits = space::with(
      space::ladder(1, std::clamp<int64_t>(ceil_div(s.kv_len, min_kv), 1, 64)), t_.split_kv);
  const int kSplit = sp.add("split_kv", splits);
  const int64_t max_items = fa::count_work(s, min_q, min_kv, static_cast<int>(splits.back())).items;
  const std::vector<int64_t> cores =
      space::with(space::core_counts(hw.num_aic, max_items), t_.cores);
  const int kCores = sp.add("cores", cores);

  auto dims = [ctx, kQ, kKv](const int64_t* p, int64_t stages, int64_t split) {
    FlashAttentionTiling t = ctx->base;
    t.q_block = p[kQ], t.kv_block = p[kKv], t.stages = static_cast<int>(stages),
    t.split_kv = static_cast<int>(split);
    return fa::make_dims(ctx->s, t, ctx->hw);
  };
  const int64_t l0c = hw.aic.l0c_bytes, l1 = hw.aic.l1_bytes, ub = hw.aiv.ub_bytes;
  sp.require("L0C and L0A / L0B capacity", {kQ, kKv}, [=](const int64_t* p) {
    const fa::Dims d = dims(p, ctx->base.stages, 1);
    return d.kq0 && d.kc0 && d.l0c_end <= static_cast<uint64_t>(l0c);
  });
  sp.require("UB capacity", {kQ, kKv}, [=](const int64_t* p) {
    return dims(p, ctx->base.stages, 1).ub_end <= static_cast<uint64_t>(ub);
  });
  sp.require("L1 capacity", {kQ, kKv, kStages}, [=](const int64_t* p) {
    return dims(p, p[kStages], 1).l1_end <= static_cast<uint64_t>(l1);
  });
  // A split starts on a block every row sees whole: more splits than such blocks are clamped.
  sp.require("split_kv beyond the key blocks", {kKv, kSplit}, [=](const int64_t* p) {
    const int64_t full = ctx->s.causal ? ctx->s.kv_len / p[kKv] : ceil_div(ctx->s.kv_len, p[kKv]);
    return space::within_reach(splits, p[kSplit], std::max<int64_t>(1, full));
  });
  sp.require("UB capacity of the split merge", {kQ, kKv, kSplit}, [=](const int64_t* p) {
    return p[kSplit] == 1 || dims(p, ctx->base.stages, p[kSplit]).merge_rows > 0;
  });
  sp.require("cores beyond the items", {kQ, kKv, kSplit, kCores}, [=](const int64_t* p) {
    return space::within_reach(
        cores, p[kCores], fa::count_work(ctx->s, p[kQ], p[kKv], static_cast<int>(p[kSplit])).items);
  });
  sp.tiling = space::tiling_by_name(sp);

  // Roofline per key block on an AIC and its AIVs: MTE2 brings K (and V), the cube runs QK^T and
  // PV (plus, on the GM path, the S / P / O hand-offs through L2), each AIV its rows' softmax and
  // O update; with two or more stages they overlap. Blocks spread over the cores (the longest item
  // bounding it), each item adds its Q load and epilogue, a split its merge; every operand crosses
  // HBM once.
  const double e = sim::dtype_bytes(s.dtype), cube_rate = hw.cube_macs_per_cycle(s.dtype),
               l2_rate = bytes_per_cycle_of_l2(hw);
  const sim::PathSpec kv_in = hw.path(sim::Path::GmToL1Nd2Nz), fix = hw.path(sim::Path::L0CToGm),
                      ub_in = hw.path(sim::Path::GmToUb);
  const double vec_rate = std::max(
      1e-9, hw.aiv.vec_rate[static_cast<int>(sim::VecOp::Add)][static_cast<int>(sim::DType::Fp32)]);
  const double head = hw.aic.mmad_head_cycles, sync = hw.sync.cross_core_latency_cycles;
  const double hbm =
      compulsory_bytes() / std::max(1e-9, hw.hbm_bytes_per_cycle() * hw.hbm.efficiency);
  const double aivs = std::max(1, hw.aiv_per_aic) * std::max(1, hw.num_aic);
  // Data-phase cycles of `bytes` on a path (its measured rate at that size), at most `cap` B/cycle.
  auto data = [](const sim::PathSpec& path, double bytes, double cap = 1e30) {
    return bytes / std::max(1e-9, std::min(path.rate_at(bytes), cap));
  };
  sp.estimate = [=](const int64_t* p) {
    const Ctx& c = *ctx;
    const fa::Work w = fa::count_work(c.s, p[kQ], p[kKv], static_cast<int>(p[kSplit]));
    const fa::Dims d = dims(p, p[kStages], p[kSplit]);
    const double used = std::min<double>(double(p[kCores]), double(std::max<int64_t>(1, w.items)));
    const double Mp = double(round_up(d.M, 16)), Bp = double(round_up(d.Bk, 16)),
                 dq = double(c.s.d_qk), dv = double(c.s.d_v);
    const double mte2 = data(kv_in, Bp * (dq + (c.s.kv_shared ? 0 : dv)) * e, l2_rate / used);
    const double chunks = std::ceil(dq / double(std::max<int64_t>(16, d.kq0))) +
                          std::ceil(Bp / double(std::max<int64_t>(16, d.kc0))) *
                              std::ceil(dv / double(std::max<int64_t>(16, d.W)));
    double cube = Mp * Bp * (dq + dv) / cube_rate + chunks * head;
    double vec = double(d.R) * (8 * Bp + 3 * dv) / vec_rate;
    if (!d.via_ub) {  // S and O out of L0C and P back in through L2; the AIVs read S and O
      cube += data(fix, Mp * (Bp + dv) * 4) + data(kv_in, Mp * Bp * e);
      vec += data(ub_in, double(d.R) * (Bp + dv) * 4);
    }
    const double step = p[kStages] >= 2 ? std::max({mte2, cube, vec}) : mte2 + std::max(cube, vec);
    const double item = data(kv_in, Mp * dq * e) + double(d.R) * dv * 6 / vec_rate + 4 * sync;
    const double blocks = std::max(double(w.steps) / used, double(w.longest));
    const double merge = p[kSplit] > 1 ? double(w.split_groups) * double(d.M) * dv *
                                                 double(p[kSplit]) * 4 / (vec_rate * aivs) +
                                             2 * sync
                                       : 0.0;
    return std::max(blocks * step + std::ceil(double(w.items) / used) * item + merge, hbm);
  };
  return sp;
}

// ---- sparse attention ----

SearchSpace SparseAttentionKernel::search_space(const sim::HardwareSpec& hw) const {
  struct Ctx {
    SparseAttentionShape s;
    SparseAttentionTiling base;
    sim::HardwareSpec hw;
  };
  const auto ctx = std::make_shared<const Ctx>(Ctx{s_, t_, hw});
  const SparseAttentionShape& s = s_;
  const int64_t positions = plan_.positions;
  SearchSpace sp;
  const int64_t kv_cap = std::min<int64_t>(256, round_up(std::max<int64_t>(1, positions), 16));
  const int kKv =
      sp.add("kv_block",
             space::with(space::ladder(std::min<int64_t>(kv_cap, 32), kv_cap, 16), t_.kv_block));
  // Head blocks: the divisors of heads that give each active AIV whole 32-byte vectors of heads.
  std::vector<int64_t> heads;
  for (int64_t h = 8; h <= s.heads; h += 8)
    if (s.heads % h == 0) heads.push_back(h);
  const int kHeads = sp.add("head_block", space::with(heads, t_.head_block));
  const int kStages = sp.add("stages", space::with(space::ladder(2, 4), t_.stages));
  const int kGather = sp.add("gather", {0, 1}, {"aic", "aiv"});
  const int64_t min_kv = sp.params[kKv].values.front();
  const std::vector<int64_t> splits = space::with(
      space::ladder(1, std::clamp<int64_t>(std::max<int64_t>(1, positions / min_kv), 1, 64)),
      t_.split_kv);
  const int kSplit = sp.add("split_kv", splits);
  // Cores: the ladder and every item count below the AICs (lowering and tiling_json clamp the cores
  // to the items, so a point names only counts the items reach).
  const int64_t tokens = s.tokens, H = s.heads;
  std::vector<int64_t> cores = space::core_counts(
      hw.num_aic, tokens * (H / sp.params[kHeads].values.front()) * splits.back());
  for (int64_t hb : sp.params[kHeads].values)
    for (int64_t n : splits)
      cores = space::with(cores,
                          std::min<int64_t>(hw.num_aic, tokens * std::max<int64_t>(1, H / hb) * n));
  cores = space::with(cores, std::min<int64_t>(t_.cores, static_cast<int64_t>(plan_.items.size())));
  const int kCores = sp.add("cores", cores);

  auto tiling_of = [ctx, kKv, kHeads](const int64_t* p) {
    SparseAttentionTiling t = ctx->base;
    t.kv_block = p[kKv], t.head_block = p[kHeads];
    return t;
  };
  const int64_t e = sim::dtype_bytes(s.dtype), l0a = hw.aic.l0a_bytes, l0c = hw.aic.l0c_bytes,
                l1 = hw.aic.l1_bytes, ub = hw.aiv.ub_bytes;
  sp.require("L0A / L0B capacity", {kKv, kHeads}, [=](const int64_t* p) {
    return sparse_attention_l0(ctx->s, tiling_of(p), ctx->hw).k0 >= 16 &&
           round_up(p[kKv], 16) * round_up(p[kHeads], 16) * e <= l0a / 2;
  });
  sp.require("L0C capacity", {kKv, kHeads}, [=](const int64_t* p) {
    const SparseAttentionTiling t = tiling_of(p);
    return sparse_attention_l0(ctx->s, t, ctx->hw).n0 >= 16 &&
           sparse_attention_l0c_bytes(ctx->s, t, ctx->hw) <= l0c;
  });
  sp.require("L1 capacity", {kKv, kHeads, kStages}, [=](const int64_t* p) {
    SparseAttentionTiling t = tiling_of(p);
    t.stages = static_cast<int>(p[kStages]);
    return sparse_attention_l1_bytes(ctx->s, t, ctx->hw) <= l1;
  });
  // A split shorter than a block's index positions only adds merge work.
  sp.require("split_kv beyond the index positions", {kKv, kSplit}, [=](const int64_t* p) {
    return p[kSplit] <= positions &&
           space::within_reach(splits, p[kSplit], std::max<int64_t>(1, positions / p[kKv]));
  });
  sp.require("UB capacity", {kKv, kHeads, kGather, kSplit}, [=](const int64_t* p) {
    SparseAttentionTiling t = tiling_of(p);
    t.gather = p[kGather] ? GatherBy::Aiv : GatherBy::Aic, t.split_kv = static_cast<int>(p[kSplit]);
    return sparse_attention_ub_bytes(ctx->s, t, ctx->hw) <= ub;
  });
  sp.require("cores beyond the items", {kHeads, kSplit, kCores},
             [=](const int64_t* p) { return p[kCores] <= tokens * (H / p[kHeads]) * p[kSplit]; });
  sp.tiling = space::tiling_by_name(sp);
  return sp;
}

// ---- lightning indexer ----

SearchSpace LightningIndexerKernel::search_space(const sim::HardwareSpec& hw) const {
  using namespace indexer_impl;
  const IndexerShape& s = s_;
  const int A = std::max(1, hw.aiv_per_aic);
  const int64_t e = sim::dtype_bytes(s.dtype), d = round_up(s.head_dim, k_align(s.dtype));
  SearchSpace sp;
  // Query blocks of one sequence whose head rows fit L0A; key blocks of whole sort32 blocks up to
  // 512 (the default's largest) or the longest sequence.
  const int64_t most_queries =
      s.queries.empty() ? 1 : *std::max_element(s.queries.begin(), s.queries.end());
  int64_t q_cap = 1;
  while (q_cap < most_queries && round_up((q_cap + 1) * s.heads, 16) * d * e <= hw.aic.l0a_bytes)
    ++q_cap;
  const int kQ = sp.add("q_block", space::with(space::ladder(1, q_cap), t_.q_block));
  const int64_t kb_cap = std::min<int64_t>(512, round_up(std::max<int64_t>(1, s.max_keys()), 32));
  const int kKb =
      sp.add("key_block",
             space::with(space::ladder(std::min<int64_t>(kb_cap, 64), kb_cap, 32), t_.key_block));
  const int64_t min_kb = sp.params[kKb].values.front();
  const std::vector<int64_t> vis = s.visible();
  const int64_t max_vis = vis.empty() ? 0 : *std::max_element(vis.begin(), vis.end());
  // Counts of blocks (merge batches, splits, K loads) and pipeline depths take powers of two; a
  // count the shape cannot use is pruned below.
  auto powers = [](int64_t hi) {
    std::vector<int64_t> v;
    for (int64_t x = 1; x <= std::max<int64_t>(1, hi); x *= 2) v.push_back(x);
    return v;
  };
  const std::vector<int64_t> merges = space::with(
      powers(std::min<int64_t>(ceil_div(s.max_keys(), min_kb), kMaxTopkCap / 32)), t_.merge_blocks);
  const int kMb = sp.add("merge_blocks", merges);
  const bool one_split = s.fused_topk && s.topk > kMaxMergeQueue;
  const std::vector<int64_t> splits = space::with(
      powers(one_split ? 1 : std::min<int64_t>(ceil_div(max_vis, min_kb), 16)), t_.splits);
  const int kSplits = sp.add("splits", splits);
  // Two or four scores blocks in flight (one would serialise the cube and the AIVs), K loads of one
  // to four blocks, double or triple buffered in L1.
  const int kSlots =
      sp.add("slots", space::with(hw.sync.cross_max_pending >= 4 ? std::vector<int64_t>{2, 4}
                                                                 : std::vector<int64_t>{2},
                                  t_.slots));
  const int kL1 = sp.add("l1_blocks", space::with(powers(4), t_.l1_blocks));
  const int kStages = sp.add(
      "stages",
      space::with(hw.sync.event_ids > 3 ? std::vector<int64_t>{2, 3} : std::vector<int64_t>{2},
                  t_.stages));

  // Units and the largest split count of each (q_block, key_block, splits), computed once.
  struct Work {
    int64_t units;
    int max_splits;
  };
  std::map<std::tuple<int64_t, int64_t, int64_t>, Work> work;
  int64_t max_units = 1;
  for (int64_t q : sp.params[kQ].values)
    for (int64_t kb : sp.params[kKb].values)
      for (int64_t n : splits) {
        Work w{0, 1};
        for_each_qblock(s, vis, q, kb, static_cast<int>(n),
                        [&](int64_t, int64_t, int64_t, int64_t, int sp_) {
                          w.units += sp_, w.max_splits = std::max(w.max_splits, sp_);
                        });
        work[{q, kb, n}] = w;
        max_units = std::max(max_units, w.units);
      }
  const std::vector<int64_t> cores =
      space::with(space::core_counts(hw.num_aic, max_units), t_.cores);
  const int kCores = sp.add("cores", cores);

  struct Ctx {
    IndexerShape s;
    IndexerTiling base;
    sim::HardwareSpec hw;
    std::map<std::tuple<int64_t, int64_t, int64_t>, Work> work;
  };
  const auto ctx = std::make_shared<const Ctx>(Ctx{s_, t_, hw, std::move(work)});
  auto tiling_of = [ctx, kQ, kKb](const int64_t* p) {
    IndexerTiling t = ctx->base;
    t.q_block = p[kQ], t.key_block = p[kKb];
    return t;
  };
  const int64_t l0a = hw.aic.l0a_bytes, l0c = hw.aic.l0c_bytes, l1 = hw.aic.l1_bytes,
                ub = hw.aiv.ub_bytes;
  const int64_t keys = s.max_keys(), heads = s.heads;
  const bool fused = s.fused_topk, via_ub = hw.path(sim::Path::L0CToUb).available;
  sp.require("L0A capacity", {kQ},
             [=](const int64_t* p) { return round_up(p[kQ] * heads, 16) * d * e <= l0a; });
  sp.require("L0C capacity", {kQ, kKb}, [=](const int64_t* p) {
    return static_cast<int64_t>(aic_layout(ctx->s, tiling_of(p), ctx->hw).l0c_buf) <= l0c;
  });
  if (fused)
    sp.require("merge batch beyond one MrgSort queue", {kKb, kMb},
               [=](const int64_t* p) { return p[kMb] * p[kKb] <= kMaxTopkCap; });
  // A batch (and k_scale group) covering every key the longest sequence has: larger ones are the
  // same.
  sp.require("merge_blocks beyond the keys", {kKb, kMb}, [=](const int64_t* p) {
    return space::within_reach(merges, p[kMb], ceil_div(keys, p[kKb]));
  });
  sp.require("splits beyond the key blocks", {kKb, kSplits}, [=](const int64_t* p) {
    return space::within_reach(splits, p[kSplits], std::max<int64_t>(1, ceil_div(max_vis, p[kKb])));
  });
  sp.require("UB capacity", {kQ, kKb, kMb, kSplits, kSlots}, [=](const int64_t* p) {
    IndexerTiling t = tiling_of(p);
    t.merge_blocks = p[kMb], t.splits = static_cast<int>(p[kSplits]),
    t.slots = static_cast<int>(p[kSlots]);
    const int max_splits = fused ? ctx->work.at({p[kQ], p[kKb], p[kSplits]}).max_splits : 1;
    const AivUb u = aiv_ub(ctx->s, t, via_ub, ceil_div(p[kQ], A), max_splits);
    return static_cast<int64_t>(std::max(u.bytes, u.s2_bytes)) <= ub;
  });
  sp.require("L1 capacity", {kQ, kKb, kL1, kStages}, [=](const int64_t* p) {
    IndexerTiling t = tiling_of(p);
    t.l1_blocks = p[kL1], t.stages = static_cast<int>(p[kStages]);
    return aic_layout(ctx->s, t, ctx->hw).l1_bytes <= l1;
  });
  sp.require("cores beyond the units", {kQ, kKb, kSplits, kCores}, [=](const int64_t* p) {
    return space::within_reach(cores, p[kCores], ctx->work.at({p[kQ], p[kKb], p[kSplits]}).units);
  });
  sp.tiling = space::tiling_by_name(sp);
  return sp;
}

}  // namespace npusim::kernels
