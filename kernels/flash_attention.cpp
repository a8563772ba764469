#include "kernels/flash_attention.hpp"

#include <fmt/format.h>
#include <tbb/parallel_for.h>

#include <cmath>
#include <limits>
#include <numeric>

#include "common/numerics.hpp"
#include "kernels/reference/attention.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::VecOp;

double FlashAttentionShape::softmax_scale() const { return scale != 0 ? scale : 1.0 / std::sqrt(static_cast<double>(d_qk)); }

namespace fa {

std::vector<Segment> segments(const Rows& rows, int64_t r0, int64_t r1) {
  std::vector<Segment> v;
  for (int64_t r = r0; r < r1;) {
    // Head-major rows stay in one head for nq rows, query-major rows in one query for nh.
    const int64_t run = rows.head_major ? rows.nq - r % rows.nq : rows.nh - r % rows.nh;
    const int64_t n = std::min(run, r1 - r);
    v.push_back({r, n, rows.query(r), rows.head(r)});
    r += n;
  }
  return v;
}

namespace {
// Heads and queries a full query block holds: whole queries' head groups when the group is
// smaller than the block, else one query and q_block of its heads.
std::pair<int64_t, int64_t> block_heads_queries(const FlashAttentionShape& s, int64_t q_block) {
  const int64_t g = s.group();
  if (g >= q_block) return {q_block, 1};
  return {g, std::max<int64_t>(1, q_block / g)};
}
}  // namespace

KeyRange key_range(const FlashAttentionShape& s, int64_t q0, int64_t nq, int64_t kv_block, int split_kv) {
  const int64_t pos_min = s.kv_len - s.q_len + q0, pos_max = pos_min + nq - 1;
  KeyRange r;
  r.blocks = ceil_div(s.causal ? pos_max + 1 : s.kv_len, kv_block);
  // Every split starts with a block each row sees whole, so no split has a row without a key (its
  // max would be -inf); the partly masked blocks go to the last split.
  r.full = s.causal ? (pos_min + 1) / kv_block : r.blocks;
  r.splits = std::max<int64_t>(1, std::min<int64_t>(split_kv, r.full));
  return r;
}

Work count_work(const FlashAttentionShape& s, int64_t q_block, int64_t kv_block, int split_kv) {
  const auto [hb, mq] = block_heads_queries(s, q_block);
  const int64_t per_q0 = s.batch * s.heads_kv * ceil_div(s.group(), hb);  // groups sharing a query range
  Work w;
  for (int64_t q0 = 0; q0 < s.q_len; q0 += mq) {
    const KeyRange kr = key_range(s, q0, std::min(mq, s.q_len - q0), kv_block, split_kv);
    w.groups += per_q0, w.items += per_q0 * kr.splits, w.steps += per_q0 * kr.blocks;
    w.longest = std::max({w.longest, kr.blocks - (kr.splits - 1) * kr.full / kr.splits, ceil_div(kr.full, kr.splits)});
    if (kr.splits > 1) w.split_groups += per_q0;
  }
  return w;
}

Plan make_plan(const FlashAttentionShape& s, const FlashAttentionTiling& t, int num_aic) {
  Plan p;
  const auto [hb, mq] = block_heads_queries(s, t.q_block);
  const int64_t g = s.group(), Bk = t.kv_block;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t n2 = 0; n2 < s.heads_kv; ++n2)
      for (int64_t q0 = 0; q0 < s.q_len; q0 += mq)
        for (int64_t h0 = 0; h0 < g; h0 += hb) {
          Group gr;
          gr.b = b, gr.n2 = n2;
          gr.rows = {q0, std::min(mq, s.q_len - q0), h0, std::min(hb, g - h0), false};
          gr.rows.head_major = gr.rows.nh < gr.rows.nq;  // fewer copies per block
          const KeyRange kr = key_range(s, q0, gr.rows.nq, Bk, t.split_kv);
          const int64_t full = kr.full, sp = kr.splits;
          gr.blocks = kr.blocks;
          for (int64_t i = 0; i < sp; ++i) gr.split_begin.push_back(sp == 1 ? 0 : i * full / sp);
          gr.split_begin.push_back(gr.blocks);
          if (sp > 1) gr.part = p.split_groups++;
          p.max_splits = std::max(p.max_splits, static_cast<int>(sp));
          p.groups.push_back(std::move(gr));
        }
  for (int64_t gi = 0; gi < static_cast<int64_t>(p.groups.size()); ++gi) {
    const Group& gr = p.groups[static_cast<size_t>(gi)];
    for (int sp = 0; sp < gr.splits(); ++sp) p.items.push_back({gi, sp, gr.split_begin[sp], gr.split_begin[sp + 1]});
  }
  // Items go, one KV head after the other, to the least-loaded AIC (ties: the lower index), the
  // way the next free core would take the next item: the AICs work on a few heads at a time, whose
  // K and V stay in L2. Within a head the longest query blocks (causal) come first, so the last
  // items dealt are short and the cores finish together.
  const int cores = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_aic, static_cast<int64_t>(p.items.size()))));
  std::vector<int64_t> order(p.items.size());
  std::iota(order.begin(), order.end(), 0);
  auto cost = [&](int64_t i) { return p.items[static_cast<size_t>(i)].j1 - p.items[static_cast<size_t>(i)].j0 + 1; };
  auto head = [&](int64_t i) {
    const Group& g = p.groups[static_cast<size_t>(p.items[static_cast<size_t>(i)].group)];
    return g.b * s.heads_kv + g.n2;
  };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return head(a) != head(b) ? head(a) < head(b) : cost(a) > cost(b);
  });
  p.core_items.assign(static_cast<size_t>(cores), {});
  std::vector<int64_t> load(static_cast<size_t>(cores), 0);
  for (int64_t i : order) {
    const size_t c = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    p.core_items[c].push_back(i);
    load[c] += cost(i);
  }
  return p;
}

Dims make_dims(const FlashAttentionShape& s, const FlashAttentionTiling& t, const sim::HardwareSpec& hw) {
  Dims d;
  const int64_t e = sim::dtype_bytes(s.dtype);
  std::tie(d.hb, d.mq) = block_heads_queries(s, t.q_block);
  d.M = d.hb * d.mq;
  d.Bk = t.kv_block;
  d.aivs = std::max(1, hw.aiv_per_aic);
  d.R = fa::aiv_rows(d.M, d.aivs, 0).second;
  d.via_ub = hw.path(Path::L0CToUb).available && hw.path(Path::UbToL1).available;
  d.lead = std::min(1, t.stages - 1);
  d.prefetch = std::max(0, t.stages - 1 - d.lead);
  const int64_t Mp = round_up(d.M, 16), Bp = round_up(d.Bk, 16);
  // L0C: the S tile and W-column O chunks; the widest W (a divisor of d_v, <= 128) with two O
  // buffers, then two S buffers if they fit too.
  d.s_bytes = static_cast<uint64_t>(Mp * Bp * 4);
  for (int64_t w = std::min<int64_t>(128, s.d_v); w >= 16; w -= 16) {
    if (s.d_v % w) continue;
    d.W = w;
    d.o_bytes = static_cast<uint64_t>(Mp * w * 4);
    if (d.s_bytes + 2 * d.o_bytes <= static_cast<uint64_t>(hw.aic.l0c_bytes)) break;
  }
  d.o_bufs = d.s_bytes + 2 * d.o_bytes <= static_cast<uint64_t>(hw.aic.l0c_bytes) ? 2 : 1;
  d.s_bufs = 2 * d.s_bytes + d.o_bufs * d.o_bytes <= static_cast<uint64_t>(hw.aic.l0c_bytes) ? 2 : 1;
  d.l0c_end = d.s_bufs * d.s_bytes + d.o_bufs * d.o_bytes;
  // L0A / L0B halves (ping-pong): C1 takes d_qk in chunks of kq0, C2 the keys in chunks of kc0.
  auto fits = [&](int64_t a_elems, int64_t b_elems) {
    return 2 * a_elems * e <= hw.aic.l0a_bytes && 2 * b_elems * e <= hw.aic.l0b_bytes;
  };
  for (int64_t k = std::min<int64_t>(128, s.d_qk); k >= 16 && !d.kq0; k -= 16)
    if (fits(Mp * k, k * Bp)) d.kq0 = k;
  for (int64_t k = Bp; k >= 16 && !d.kc0; k -= 16)
    if (fits(Mp * k, k * d.W)) d.kc0 = k;
  // L1: Q (one or two buffers), `stages` K (and V) tiles, the P slots.
  d.q_bytes = static_cast<uint64_t>(Mp * s.d_qk * e);
  d.v_off = static_cast<uint64_t>(Bp * s.d_qk * e);
  d.stage_bytes = d.v_off + (s.kv_shared ? 0 : static_cast<uint64_t>(Bp * s.d_v * e));
  d.p_bytes = static_cast<uint64_t>(Mp * Bp * e);
  const uint64_t rest = t.stages * d.stage_bytes + Dims::kSlots * d.p_bytes;
  d.q_bufs = 2 * d.q_bytes + rest <= static_cast<uint64_t>(hw.aic.l1_bytes) ? 2 : 1;
  d.l1_q = 0;
  d.l1_stage = d.q_bufs * d.q_bytes;
  d.l1_p = d.l1_stage + t.stages * d.stage_bytes;
  d.l1_end = d.l1_p + Dims::kSlots * d.p_bytes;
  // UB of an AIV: S/P slots, reduction scratch, broadcast tile, O-chunk slots, the O accumulator,
  // output staging, the (m, l, alpha) ring and row vectors.
  auto al = [](int64_t b) { return static_cast<uint64_t>(round_up(b, 32)); };
  // NZ tiles in UB keep 16-row strips (ld a multiple of 16, as the fractal padding requires).
  const int64_t Rp = round_up(d.R, 16);
  d.Wb = std::min<int64_t>(64, std::max(Bp, d.W));
  d.vec = al(Rp * 4);
  d.s_slot = al(Rp * Bp * 4);
  d.ub_s = 0;
  // The reduction scratch and the broadcast tile share a buffer: the in-order V pipe never needs
  // both at once (tree, then broadcast and subtract, then tree again).
  d.ub_tmp = d.ub_s + Dims::kSlots * d.s_slot;
  d.ub_bcast = d.ub_tmp;
  d.ub_oin = d.ub_tmp + al(Rp * std::max<int64_t>({16, Bp / 2, d.Wb}) * 4);
  d.oin_slot = al(Rp * d.W * 4);
  d.ub_acc = d.ub_oin + Dims::kSlots * d.oin_slot;
  d.ub_stage = d.ub_acc + al(Rp * s.d_v * 4);
  d.stage_slot = d.oin_slot;
  d.ub_stats = d.ub_stage + 2 * d.stage_slot;
  d.ub_vecs = d.ub_stats + 3 * Dims::kStatSets * d.vec;
  d.ub_end = d.ub_vecs + 8 * d.vec;  // mb, lb, scratch, ones, sinks (two), 1 / den, lse
  // A merge task: as many rows as fit beside the split parts.
  for (int64_t r = d.M; r >= 1 && !d.merge_rows; r = r > 16 ? r - 16 : r - 1)
    if (merge_ub(s, d, std::max(1, t.split_kv), r).end <= static_cast<uint64_t>(hw.aiv.ub_bytes)) d.merge_rows = r;
  d.merge_bytes = d.merge_rows ? merge_ub(s, d, std::max(1, t.split_kv), d.merge_rows).end : 0;
  return d;
}

MergeUb merge_ub(const FlashAttentionShape& s, const Dims& d, int splits, int64_t rows) {
  auto al = [](int64_t b) { return static_cast<uint64_t>(round_up(b, 32)); };
  const int64_t rp = round_up(rows, 16);
  MergeUb u{};
  u.acc = 0;
  u.part_bytes = al(rp * s.d_v * 4);
  u.parts = u.acc + u.part_bytes;
  u.plse = u.parts + 2 * u.part_bytes;
  u.w = u.plse + al(splits * rp * 4);
  u.bcast = u.w + al(splits * rp * 4);
  u.vecs = u.bcast + al(rp * d.Wb * 4);
  u.vec = al(rp * 4);
  u.end = u.vecs + 8 * u.vec;
  return u;
}

Gm place(const FlashAttentionShape& s, const Dims& d, const Plan& p, int cores) {
  const int64_t e = sim::dtype_bytes(s.dtype), T1 = s.batch * s.q_len, T2 = s.batch * s.kv_len;
  const int64_t Mp = round_up(d.M, 16), Bp = round_up(d.Bk, 16);
  GmAllocator gm;
  Gm g;
  g.q = gm.alloc(T1 * s.heads_q * s.d_qk * e);
  g.k = gm.alloc(T2 * s.heads_kv * s.d_qk * e);
  if (!s.kv_shared) g.v = gm.alloc(T2 * s.heads_kv * s.d_v * e);
  if (s.sink) g.sinks = gm.alloc(s.heads_q * 4);
  g.out = gm.alloc(T1 * s.heads_q * s.d_v * e);
  g.lse = gm.alloc(T1 * s.heads_q * 4);
  // Split parts: per group an NZ [M, splits x d_v] fp32 tile and [splits, M] lse.
  g.part_o = gm.alloc(p.split_groups * p.max_splits * s.d_v * Mp * 4);
  g.part_lse = gm.alloc(p.split_groups * p.max_splits * d.M * 4);
  g.ws = gm.footprint();
  if (!d.via_ub) {
    g.ws_s = 0;
    g.ws_p = Dims::kSlots * Mp * Bp * 4;
    g.ws_o = g.ws_p + Dims::kSlots * Mp * Bp * e;
    g.ws_core = round_up(g.ws_o + Dims::kSlots * Mp * d.W * 4, 512);
    gm.alloc(cores * g.ws_core);
  }
  g.footprint = gm.footprint();
  return g;
}

}  // namespace fa

std::string FlashAttentionKernel::name() const {
  return fmt::format("flash_attention_b{}_q{}_kv{}_h{}x{}_d{}x{}_{}{}{}{}", s_.batch, s_.q_len, s_.kv_len, s_.heads_q,
                     s_.heads_kv, s_.d_qk, s_.d_v, sim::dtype_name(s_.dtype), s_.causal ? "_causal" : "",
                     s_.sink ? "_sink" : "", s_.kv_shared ? "_shared" : "");
}

nlohmann::json FlashAttentionKernel::tiling_json() const {
  return {{"q_block", t_.q_block}, {"kv_block", t_.kv_block}, {"stages", t_.stages}, {"split_kv", t_.split_kv},
          {"cores", t_.cores}};
}

double FlashAttentionKernel::flops() const {
  // 2 (d_qk + d_v) per visible (query head, key) pair: the useful work, masked keys excluded.
  double keys = 0;
  for (int64_t i = 0; i < s_.q_len; ++i) keys += static_cast<double>(fa::visible(s_, s_.kv_len - s_.q_len + i, 0, s_.kv_len));
  return 2.0 * static_cast<double>(s_.d_qk + s_.d_v) * keys * static_cast<double>(s_.batch * s_.heads_q);
}

double FlashAttentionKernel::compulsory_bytes() const {
  const double e = sim::dtype_bytes(s_.dtype), T1 = static_cast<double>(s_.batch * s_.q_len),
               T2 = static_cast<double>(s_.batch * s_.kv_len);
  return e * (T1 * s_.heads_q * (s_.d_qk + s_.d_v) + T2 * s_.heads_kv * (s_.d_qk + (s_.kv_shared ? 0 : s_.d_v))) +
         4.0 * T1 * s_.heads_q + (s_.sink ? 4.0 * s_.heads_q : 0.0);
}

double FlashAttentionKernel::estimated_instructions() const {
  // The 2201 data path's count (3510 issues fewer: no MTE2 copies of S and O on the AIVs), term
  // by term from the lowering; L0 chunk sizes as the common presets give them.
  const fa::Plan p = fa::make_plan(s_, t_, t_.cores);
  int64_t w = std::min<int64_t>(128, s_.d_v);
  while (s_.d_v % w) w -= 16;
  const double nk1 = static_cast<double>(ceil_div(s_.d_qk, std::min<int64_t>(128, s_.d_qk))), nw = static_cast<double>(s_.d_v / w);
  const double groups = static_cast<double>(ceil_div(w, 64)), strips = static_cast<double>(ceil_div(t_.kv_block, 16));
  const double tree = std::ceil(std::log2(std::max(1.0, strips))) + 1;
  // AIC: K (V) load and flags; per d_qk chunk 12 (kv_shared: a copy per 16 dimensions); S out 7;
  // C2: P in 7, per W chunk an L0B load, an MMAD and the chunk out, 16.
  const double aic = 6 + 12 * nk1 + (s_.kv_shared ? s_.d_qk / 16.0 - nk1 : 0) + 7 + 11 + 16 * nw;
  // Each AIV: V1 (copies, flags, scale, two trees, the softmax updates, cast, P out), V2 per chunk.
  const double aiv = 2 * (19 + 2 * tree + std::ceil(strips / 4) + nw * (8 + groups));
  double steps = 0, per_item = 0, masks = 0;
  for (const fa::Item& it : p.items) {
    const fa::Group& g = p.groups[static_cast<size_t>(it.group)];
    const double nseg = static_cast<double>(std::min(g.rows.nq, g.rows.nh)), rows = static_cast<double>(g.rows.count());
    steps += static_cast<double>(it.j1 - it.j0);
    per_item += 6 + nseg + 2 * (12 + nw * (5 + groups + nseg) + nseg + (s_.sink ? 6 + nseg : 0));
    // A Dup per row and per strip run on the partly masked blocks: the causal diagonal, or the
    // key tail of the last block.
    const double diag = s_.causal ? static_cast<double>(std::min<int64_t>(it.j1 - it.j0, ceil_div(g.rows.nq, t_.kv_block) + 1)) : 0;
    const bool tail = !s_.causal && it.j1 == g.blocks && s_.kv_len % 16;
    masks += diag * (rows + strips * nseg) + (tail ? rows : 0);
  }
  const double merge = static_cast<double>(p.split_groups) * (24 + 8.0 * p.max_splits + p.max_splits * (1 + nw * groups));
  return steps * (aic + aiv) + per_item + masks + merge + 48.0 * static_cast<double>(p.core_items.size());
}

Status FlashAttentionKernel::can_implement(const sim::HardwareSpec& hw) const {
  const auto& s = s_;
  if (s.batch < 1 || s.q_len < 1 || s.kv_len < 1)
    return Status::bad(s.kv_len < 1 ? "workload.kv_len" : s.q_len < 1 ? "workload.q_len" : "workload.batch",
                       "batch, q_len and kv_len must be >= 1 (kv_len 0 would leave every row without a key)");
  if (s.q_len > s.kv_len)
    return Status::bad("workload.q_len", fmt::format("q_len {} exceeds kv_len {}: the queries are the last q_len tokens of the sequence",
                                                     s.q_len, s.kv_len));
  if (s.heads_kv < 1 || s.heads_q % s.heads_kv)
    return Status::bad("workload.heads_kv", fmt::format("heads_q {} must be a multiple of heads_kv {}", s.heads_q, s.heads_kv));
  if (s.d_qk % 16 || s.d_qk < 16)
    return Status::bad("workload.d_qk", fmt::format("d_qk {} is not a multiple of 16: the cube takes K in 16-element fractal rows", s.d_qk));
  if (s.d_v % 16 || s.d_v < 16)
    return Status::bad("workload.d_v", fmt::format("d_v {} is not a multiple of 16: O leaves L0C in 16-column strips", s.d_v));
  if (s.kv_shared && s.d_v > s.d_qk)
    return Status::bad("workload.d_v", fmt::format("with kv_shared V is the first d_v columns of K: d_v {} > d_qk {}", s.d_v, s.d_qk));
  if (!(s.scale >= 0)) return Status::bad("workload.scale", "scale must be >= 0 (0: d_qk^-0.5)");
  if (!hw.aic.cube_k0[static_cast<int>(s.dtype)])
    return Status::bad("workload.dtype", fmt::format("{} has no {} cube", hw.name, sim::dtype_name(s.dtype)));
  for (auto op : {VecOp::Muls, VecOp::Max, VecOp::Sub, VecOp::Exp, VecOp::Add, VecOp::Mul, VecOp::Div, VecOp::Ln, VecOp::Dup,
                  VecOp::ReduceMax, VecOp::ReduceSum, VecOp::Cast})
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(DType::Fp32)] > 0))
      return Status::bad("hardware", fmt::format("{} has no fp32 vector {}", hw.name, sim::vec_op_name(op)));
  const bool via_ub = hw.path(Path::L0CToUb).available && hw.path(Path::UbToL1).available;
  std::vector<Path> need{Path::GmToL1Nd2Nz, Path::GmToUb, Path::UbToGm, Path::UbToUb, Path::L1ToL0A, Path::L1ToL0B};
  if (via_ub) need.insert(need.end(), {Path::L0CToUb, Path::UbToL1});
  else need.insert(need.end(), {Path::L0CToGm, Path::GmToL1});
  for (Path p : need)
    if (!hw.path(p).available) return Status::bad("hardware", fmt::format("{} lacks the {} path", hw.name, sim::path_name(p)));
  if (hw.aiv_per_aic < 1 || hw.sync.cross_flag_ids < 4 + 3 * hw.aiv_per_aic || hw.sync.event_ids < 8 ||
      fa::Dims::kSlots > hw.sync.cross_max_pending)
    return Status::bad("hardware", fmt::format("the pipeline needs AIVs paired with each AIC, {} cross-core flags (3 per AIV "
                                               "and 4 shared), 8 event ids and room for 2 pending sets",
                                               4 + 3 * std::max(1, hw.aiv_per_aic)));
  const auto& t = t_;
  if (t.q_block < 16 || t.q_block % 16)
    return Status::bad("tiling.q_block", fmt::format("q_block {} must be a positive multiple of 16 (cube rows)", t.q_block));
  if (t.kv_block < 16 || t.kv_block % 16)
    return Status::bad("tiling.kv_block", fmt::format("kv_block {} must be a positive multiple of 16 (cube fractals)", t.kv_block));
  if (t.stages < 1 || t.stages > 4)
    return Status::bad("tiling.stages", fmt::format("stages must be 1..4 (one event id each), found {}", t.stages));
  if (t.split_kv < 1 || t.split_kv > 64)
    return Status::bad("tiling.split_kv", fmt::format("split_kv must be 1..64, found {}", t.split_kv));
  if (t.cores < 1 || t.cores > hw.num_aic)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} on {}, found {}", hw.num_aic, hw.name, t.cores));
  const fa::Dims d = fa::make_dims(s, t, hw);
  if (d.l0c_end > static_cast<uint64_t>(hw.aic.l0c_bytes))
    return Status::bad("tiling.q_block", fmt::format("the fp32 S tile {}x{} and an O chunk of {} columns need {} B of L0C, more than its {} B",
                                                     d.M, t.kv_block, d.W, d.l0c_end, hw.aic.l0c_bytes));
  if (!d.kq0 || !d.kc0)
    return Status::bad("tiling.q_block", fmt::format("a {}-row block with {} keys leaves no 16-deep K chunk that fits half of L0A / L0B",
                                                     d.M, t.kv_block));
  if (d.l1_end > static_cast<uint64_t>(hw.aic.l1_bytes))
    return Status::bad("tiling.kv_block", fmt::format("Q ({} rows x {}), {} stages of {} keys{} and 2 P slots need {} B of L1, more than its {} B",
                                                      d.M, s.d_qk, t.stages, t.kv_block, s.kv_shared ? "" : " of K and V",
                                                      d.l1_end, hw.aic.l1_bytes));
  if (d.ub_end > static_cast<uint64_t>(hw.aiv.ub_bytes))
    return Status::bad("tiling.q_block", fmt::format("{} rows per AIV with {} keys and d_v {} need {} B of UB, more than its {} B",
                                                     d.R, t.kv_block, s.d_v, d.ub_end, hw.aiv.ub_bytes));
  if (t.split_kv > 1 && !d.merge_rows)
    return Status::bad("tiling.split_kv", fmt::format("one row of {} splits of d_v {} does not fit UB for the merge", t.split_kv, s.d_v));
  const int64_t big = int64_t(1) << 30;
  if (s.batch * s.kv_len * s.heads_kv * std::max(s.d_qk, s.d_v) > big * 4 || s.batch * s.q_len * s.heads_q * s.d_qk > big * 4)
    return Status::bad("workload", "tensors beyond 2^32 elements do not fit the instruction fields");
  return Status::good();
}

std::vector<TensorInfo> FlashAttentionKernel::tensors() const {
  const fa::Plan p = fa::make_plan(s_, t_, t_.cores);
  const fa::Gm g = fa::place(s_, fa::make_dims(s_, t_, sim::HardwareSpec{}), p, t_.cores);
  const int64_t T1 = s_.batch * s_.q_len, T2 = s_.batch * s_.kv_len;
  std::vector<TensorInfo> v{{"q", s_.dtype, T1, s_.heads_q * s_.d_qk, TensorLayout::RowMajor, g.q, false},
                            {"k", s_.dtype, T2, s_.heads_kv * s_.d_qk, TensorLayout::RowMajor, g.k, false}};
  if (!s_.kv_shared) v.push_back({"v", s_.dtype, T2, s_.heads_kv * s_.d_v, TensorLayout::RowMajor, g.v, false});
  if (s_.sink) v.push_back({"sinks", DType::Fp32, 1, s_.heads_q, TensorLayout::RowMajor, g.sinks, false});
  v.push_back({"out", s_.dtype, T1, s_.heads_q * s_.d_v, TensorLayout::RowMajor, g.out, true});
  v.push_back({"lse", DType::Fp32, T1, s_.heads_q, TensorLayout::RowMajor, g.lse, true});
  return v;
}

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float f32(double x) { return static_cast<float>(x); }

// The kernel's block sum of one row: strips of 16 columns added pairwise (first half + second
// half, an odd strip into the first), fp32 at each level, then the 16 lanes summed in double
// and rounded once (reduce_sum).
float tree_sum(std::vector<float>& x, int64_t strips) {
  int64_t n = strips;
  while (n > 1) {
    const int64_t h = n / 2;
    for (int64_t i = 0; i < h * 16; ++i) x[i] = x[i] + x[i + h * 16];
    if (n % 2)
      for (int64_t c = 0; c < 16; ++c) x[c] = x[c] + x[2 * h * 16 + c];
    n = h;
  }
  double acc = 0;
  for (int c = 0; c < 16; ++c) acc += x[c];
  return f32(acc);
}

}  // namespace

std::vector<Golden> FlashAttentionKernel::references(const std::vector<std::vector<double>>& in,
                                                     const std::vector<std::vector<double>>&) const {
  const auto& s = s_;
  const int64_t T1 = s.batch * s.q_len, N1 = s.heads_q, N2 = s.heads_kv, dq = s.d_qk, dv = s.d_v, g = s.group();
  const std::vector<double>& q = in[0];
  const std::vector<double>& k = in[1];
  std::vector<double> vshared;
  if (s.kv_shared) {
    vshared.resize(static_cast<size_t>(s.batch * s.kv_len * N2 * dv));
    for (int64_t r = 0; r < s.batch * s.kv_len * N2; ++r)
      std::copy_n(k.begin() + r * dq, dv, vshared.begin() + r * dv);
  }
  const std::vector<double>& v = s.kv_shared ? vshared : in[2];
  const double* sinks = s.sink ? in[s.kv_shared ? 2 : 3].data() : nullptr;
  const double scale = s.softmax_scale();
  Golden out, lse;
  out.exact.resize(static_cast<size_t>(T1 * N1 * dv));
  lse.exact.resize(static_cast<size_t>(T1 * N1));
  ref::FlashConfig c{s.batch, s.q_len, s.kv_len, N1, N2, dq, dv, s.causal, scale};
  ref::flash_attention(c, q.data(), k.data(), v.data(), sinks, out.exact.data(), lse.exact.data());

  // The kernel's rounding points, row by row, over the kernel's own blocks and splits: S in fp32
  // from the input-type operands, scaled in fp32, the online softmax in fp32 per block (the block
  // sum as the kernel's tree), P rounded to the input type before P V, O accumulated in fp32,
  // the split merge by lse, one rounding of the output.
  const fa::Plan plan = fa::make_plan(s, t_, t_.cores);
  const num::Format io = sim::number_format(s.dtype);
  out.same_precision.resize(out.exact.size());
  lse.same_precision.resize(lse.exact.size());
  const int64_t Bk = t_.kv_block;
  tbb::parallel_for(size_t{0}, plan.groups.size(), [&](size_t gi) {
    const fa::Group& gr = plan.groups[gi];
    std::vector<float> qv(static_cast<size_t>(dq)), sv, pv(static_cast<size_t>(round_up(Bk, 16))), o(static_cast<size_t>(dv)),
        ob(static_cast<size_t>(dv));
    for (int64_t r = 0; r < gr.rows.count(); ++r) {
      const int64_t qi = gr.rows.q0 + gr.rows.query(r), h1 = gr.n2 * g + gr.rows.h0 + gr.rows.head(r);
      const int64_t row = gr.b * s.q_len + qi, pos = s.kv_len - s.q_len + qi;
      for (int64_t d = 0; d < dq; ++d) qv[static_cast<size_t>(d)] = f32(q[static_cast<size_t>((row * N1 + h1) * dq + d)]);
      const int64_t kv_end = s.causal ? s.kv_len - s.q_len + gr.rows.q0 + gr.rows.nq : s.kv_len;
      std::vector<float> part_lse;
      std::vector<std::vector<float>> part_o;
      float m = 0, l = 0;
      for (int sp = 0; sp < gr.splits(); ++sp) {
        bool first = true;
        for (int64_t j = gr.split_begin[sp]; j < gr.split_begin[sp + 1]; ++j) {
          const int64_t k0 = j * Bk, kb = std::min(Bk, kv_end - k0), strips = ceil_div(kb, 16);
          const int64_t vis = fa::visible(s, pos, k0, kb);
          sv.assign(static_cast<size_t>(strips * 16), kNegInf);
          float mb = kNegInf;
          for (int64_t c = 0; c < vis; ++c) {
            const double* kr = k.data() + ((gr.b * s.kv_len + k0 + c) * N2 + gr.n2) * dq;
            float acc = 0;
            for (int64_t d = 0; d < dq; ++d) acc += qv[static_cast<size_t>(d)] * f32(kr[d]);
            sv[static_cast<size_t>(c)] = f32(static_cast<double>(acc) * scale);
            mb = std::max(mb, sv[static_cast<size_t>(c)]);
          }
          const float mn = first ? mb : std::max(m, mb);
          const float alpha = first ? 1.0f : f32(std::exp(static_cast<double>(f32(m - mn))));
          // Lanes of the NZ strips, lane c of strip t at t * 16 + c (the column), for the tree.
          pv.assign(static_cast<size_t>(strips * 16), 0.0f);
          for (int64_t c = 0; c < vis; ++c) pv[static_cast<size_t>(c)] = f32(std::exp(static_cast<double>(f32(sv[static_cast<size_t>(c)] - mn))));
          std::fill(ob.begin(), ob.end(), 0.0f);
          for (int64_t c = 0; c < vis; ++c) {
            const float pl = f32(num::round_to(io, pv[static_cast<size_t>(c)]));
            const double* vr = v.data() + ((gr.b * s.kv_len + k0 + c) * N2 + gr.n2) * dv;
            for (int64_t d = 0; d < dv; ++d) ob[static_cast<size_t>(d)] += pl * f32(vr[d]);
          }
          const float lb = tree_sum(pv, strips);
          l = first ? lb : f32(f32(l * alpha) + lb);
          for (int64_t d = 0; d < dv; ++d)
            o[static_cast<size_t>(d)] = first ? ob[static_cast<size_t>(d)] : f32(f32(o[static_cast<size_t>(d)] * alpha) + ob[static_cast<size_t>(d)]);
          m = mn;
          first = false;
        }
        const float ln_l = f32(std::log(static_cast<double>(l)));
        if (gr.splits() > 1) {
          const float inv = f32(1.0 / static_cast<double>(l));
          part_o.emplace_back(static_cast<size_t>(dv));
          for (int64_t d = 0; d < dv; ++d) part_o.back()[static_cast<size_t>(d)] = f32(o[static_cast<size_t>(d)] * inv);
          part_lse.push_back(f32(ln_l + m));
        }
      }
      const size_t oo = static_cast<size_t>((row * N1 + h1) * dv), lo = static_cast<size_t>(row * N1 + h1);
      const float sink = sinks ? f32(sinks[h1]) : 0.0f;
      if (gr.splits() == 1) {
        float den = l;
        if (sinks) den = f32(l + f32(std::exp(static_cast<double>(f32(sink - m)))));
        const float inv = f32(1.0 / static_cast<double>(den));
        for (int64_t d = 0; d < dv; ++d) out.same_precision[oo + d] = num::round_to(io, f32(o[static_cast<size_t>(d)] * inv));
        lse.same_precision[lo] = f32(f32(std::log(static_cast<double>(l))) + m);
        continue;
      }
      // The merge, as the AIVs do it after the barrier.
      float mx = part_lse[0];
      for (float x : part_lse) mx = std::max(mx, x);
      std::vector<float> w(part_lse.size());
      for (size_t i = 0; i < w.size(); ++i) w[i] = f32(std::exp(static_cast<double>(f32(part_lse[i] - mx))));
      float L = w[0];
      for (size_t i = 1; i < w.size(); ++i) L = f32(L + w[i]);
      float den = L;
      if (sinks) den = f32(L + f32(std::exp(static_cast<double>(f32(sink - mx)))));
      const float inv = f32(1.0 / static_cast<double>(den));
      for (int64_t d = 0; d < dv; ++d) {
        float acc = 0;
        for (size_t i = 0; i < w.size(); ++i) {
          const float term = f32(part_o[i][static_cast<size_t>(d)] * f32(w[i] * inv));
          acc = i == 0 ? term : f32(acc + term);
        }
        out.same_precision[oo + d] = num::round_to(io, acc);
      }
      lse.same_precision[lo] = f32(f32(std::log(static_cast<double>(L))) + mx);
    }
  });
  if (s_.lse_base2) ref::lse_to_base2(lse.exact, false), ref::lse_to_base2(lse.same_precision, true);
  return {std::move(out), std::move(lse)};
}

FlashAttentionTiling default_flash_attention_tiling(const FlashAttentionShape& s, const sim::HardwareSpec& hw) {
  FlashAttentionTiling t;
  t.cores = std::max(1, hw.num_aic);
  auto budgets_fit = [&](const FlashAttentionTiling& x) {
    const fa::Dims d = fa::make_dims(s, x, hw);
    return d.kq0 && d.kc0 && d.l0c_end <= static_cast<uint64_t>(hw.aic.l0c_bytes) &&
           d.l1_end <= static_cast<uint64_t>(hw.aic.l1_bytes) && d.ub_end <= static_cast<uint64_t>(hw.aiv.ub_bytes);
  };
  // Three K stages (C1 one block ahead of C2 and the K loads one ahead of C1) before two or
  // one; then the largest q_block, then the largest kv_block from 128 down to 64; below 64 keys
  // only when nothing else fits.
  bool found = false;
  for (int64_t kv_min : {64, 16})
    for (int st : {3, 2, 1})
      for (int64_t qb : {128, 64, 32, 16})
        for (int64_t kv = 128; kv >= kv_min && !found; kv -= 16) {
          FlashAttentionTiling x = t;
          x.kv_block = kv, x.q_block = qb, x.stages = st;
          if (budgets_fit(x)) t = x, found = true;
        }
  // Split the keys only when the (query block, head group) items do not cover the AICs; then
  // the split count minimising rounds x blocks per split (ties: fewer splits).
  const fa::Plan p = fa::make_plan(s, t, hw.num_aic);
  const int64_t items = static_cast<int64_t>(p.groups.size());
  int64_t blocks = 1;
  for (const auto& g : p.groups) blocks = std::max(blocks, g.blocks);
  if (items < hw.num_aic) {
    int64_t best = 0;
    for (int sp = 1; sp <= std::min<int64_t>(64, blocks); ++sp) {
      FlashAttentionTiling x = t;
      x.split_kv = sp;
      const int64_t cost = ceil_div(items * sp, hw.num_aic) * ceil_div(blocks, sp);
      if ((!best || cost < best) && (sp == 1 || fa::make_dims(s, x, hw).merge_rows)) best = cost, t.split_kv = sp;
    }
  }
  const fa::Plan q = fa::make_plan(s, t, hw.num_aic);
  t.cores = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(q.items.size()), 1, hw.num_aic));
  return t;
}

FlashAttentionTiling parse_flash_attention_tiling(const YamlNode& tiling, FlashAttentionTiling t, const FlashAttentionShape& s,
                                                  const sim::HardwareSpec& hw) {
  if (auto x = tiling.get("q_block")) t.q_block = x->as_positive_int();
  if (auto x = tiling.get("kv_block")) t.kv_block = x->as_positive_int();
  if (auto x = tiling.get("stages")) t.stages = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("split_kv")) t.split_kv = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("cores")) t.cores = static_cast<int>(x->as_positive_int());
  else t.cores = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(fa::make_plan(s, t, hw.num_aic).items.size()), 1, hw.num_aic));
  return t;
}

std::unique_ptr<Kernel> make_flash_attention(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  FlashAttentionShape s;
  s.batch = w.at("batch").as_positive_int();
  s.q_len = w.at("q_len").as_positive_int();
  s.kv_len = w.at("kv_len").as_positive_int();
  s.heads_q = w.at("heads_q").as_positive_int();
  s.heads_kv = s.heads_q;
  if (auto x = w.get("heads_kv")) s.heads_kv = x->as_positive_int();
  s.d_qk = w.at("d_qk").as_positive_int();
  s.d_v = s.d_qk;
  if (auto x = w.get("d_v")) s.d_v = x->as_positive_int();
  s.dtype = *sim::dtype_from_name(w.at("dtype").as_enum({"fp16", "bf16"}));
  if (auto x = w.get("causal")) s.causal = x->as_bool();
  if (auto x = w.get("scale")) {
    s.scale = x->as_double();
    if (!(s.scale >= 0)) x->fail("scale must be >= 0 (0: d_qk^-0.5)");
  }
  if (auto x = w.get("sink")) s.sink = x->as_bool();
  if (auto x = w.get("kv_shared")) s.kv_shared = x->as_bool();
  if (auto x = w.get("lse_base")) s.lse_base2 = x->as_enum({"e", "2"}) == "2";
  for (auto [key, v] : {std::pair{"batch", s.batch}, {"q_len", s.q_len}, {"kv_len", s.kv_len}, {"heads_q", s.heads_q},
                        {"d_qk", s.d_qk}})
    if (v > (int64_t(1) << 24)) w.at(key).fail(fmt::format("{} = {} is beyond 2^24, more than the instruction fields index", key, v));
  if (s.q_len > s.kv_len) w.at("q_len").fail(fmt::format("q_len {} exceeds kv_len {} (the queries are the sequence's last tokens)", s.q_len, s.kv_len));
  if (s.heads_q % s.heads_kv) w.at("heads_kv").fail(fmt::format("heads_q {} is not a multiple of heads_kv {}", s.heads_q, s.heads_kv));
  FlashAttentionTiling t = default_flash_attention_tiling(s, hw);
  if (tiling) t = parse_flash_attention_tiling(*tiling, t, s, hw);
  return std::make_unique<FlashAttentionKernel>(s, t, !tiling.has_value());
}

std::unique_ptr<Kernel> FlashAttentionKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const {
  return std::make_unique<FlashAttentionKernel>(s_, parse_flash_attention_tiling(tiling, t_, s_, hw), false);
}

}  // namespace npusim::kernels
