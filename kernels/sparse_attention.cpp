// The sparse attention (sparse_attention.hpp) apart from its lowering: the plan of valid rows and
// items, feasibility, tensors and inputs, the fp64 and same-precision references, the default
// tiling and the YAML factory.
#include "kernels/sparse_attention.hpp"

#include <fmt/format.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

#include "common/numerics.hpp"
#include "kernels/indices.hpp"
#include "kernels/reference/attention.hpp"
#include "kernels/tensor_io.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::VecOp;

namespace {

bool valid_index(int32_t i, int64_t rows) { return i >= 0 && i < rows; }

// Split s of S over N positions: [s N / S, (s + 1) N / S).
std::pair<int64_t, int64_t> split_positions(int64_t n, int s, int splits) {
  return {n * s / splits, n * (s + 1) / splits};
}

}  // namespace

int sparse_attention_active_aivs(int64_t head_block, int aiv_per_aic) {
  for (int a = std::max(1, aiv_per_aic); a >= 1; --a)
    if (head_block > 0 && head_block % (8 * a) == 0) return a;
  return 0;
}

// ---- plan ----

std::pair<int64_t, int64_t> SparsePlan::block_rows(const Item& it, int64_t b) const {
  const int64_t first = it.r0 + b * kv_block;
  return {first, std::min(it.r1, first + kv_block)};
}

std::pair<int64_t, int64_t> SparsePlan::block_positions(const Item& it, int64_t b) const {
  const int64_t first = b == 0 ? it.p0 : rows[static_cast<size_t>(it.r0 + b * kv_block - 1)].pos + 1;
  const int64_t last = b == it.blocks - 1 ? it.p1 : rows[static_cast<size_t>(it.r0 + (b + 1) * kv_block - 1)].pos + 1;
  return {first, last};
}

namespace {
// Valid rows [r0, r1) of token t whose positions lie in [p0, p1).
std::pair<int64_t, int64_t> rows_in(const SparsePlan& p, int64_t t, int64_t p0, int64_t p1) {
  const auto first = p.rows.begin() + p.token_rows[static_cast<size_t>(t)];
  const auto last = p.rows.begin() + p.token_rows[static_cast<size_t>(t) + 1];
  auto by_pos = [](const SparsePlan::Row& r, int64_t pos) { return r.pos < pos; };
  const auto a = std::lower_bound(first, last, p0, by_pos), b = std::lower_bound(a, last, p1, by_pos);
  return {a - p.rows.begin(), b - p.rows.begin()};
}
}  // namespace

bool SparsePlan::split_nonempty(int64_t t, int split, int splits) const {
  const auto [p0, p1] = split_positions(positions, split, splits);
  const auto [r0, r1] = rows_in(*this, t, p0, p1);
  return r1 > r0;
}

SparsePlan make_sparse_plan(const SparseAttentionShape& s, const SparseAttentionTiling& t) {
  SparsePlan p;
  p.kv_block = std::max<int64_t>(1, t.kv_block);
  for (const auto& src : s.sources) p.positions += src.per_query;
  p.token_rows.push_back(0);
  for (int64_t tok = 0; tok < s.tokens; ++tok) {
    int32_t pos = 0;
    for (size_t k = 0; k < s.sources.size(); ++k) {
      const SparseKvSource& src = s.sources[k];
      const bool complete = src.idx.size() == static_cast<size_t>(s.tokens * src.per_query);  // else refused
      for (int64_t j = 0; j < src.per_query; ++j, ++pos) {
        const int32_t i = complete ? src.idx[static_cast<size_t>(tok * src.per_query + j)] : -1;
        if (valid_index(i, src.rows)) p.rows.push_back({static_cast<int32_t>(k), pos, i});
      }
    }
    p.token_rows.push_back(static_cast<int64_t>(p.rows.size()));
  }
  const int64_t groups = t.head_block > 0 && s.heads % t.head_block == 0 ? s.heads / t.head_block : 1;
  const int splits = std::max(1, t.split_kv);
  for (int64_t tok = 0; tok < s.tokens; ++tok)
    for (int64_t g = 0; g < groups; ++g)
      for (int sp = 0; sp < splits; ++sp) {
        const auto [p0, p1] = split_positions(p.positions, sp, splits);
        const auto [r0, r1] = rows_in(p, tok, p0, p1);
        p.items.push_back({tok, g, sp, r0, r1, p0, p1, ceil_div(r1 - r0, p.kv_block)});
      }
  return p;
}

// ---- kernel ----

SparseAttentionKernel::SparseAttentionKernel(SparseAttentionShape s, SparseAttentionTiling t, bool is_default)
    : s_(std::move(s)), t_(t), default_(is_default), plan_(make_sparse_plan(s_, t_)) {
  std::unordered_set<uint64_t> seen;
  seen.reserve(plan_.rows.size());
  for (const auto& r : plan_.rows) seen.insert(static_cast<uint64_t>(r.row) << 1 | static_cast<uint64_t>(r.source));
  distinct_rows_ = static_cast<int64_t>(seen.size());
}

std::string SparseAttentionKernel::name() const {
  std::string n = fmt::format("sparse_attention_{}x{}_{}_{}", s_.tokens, s_.heads, s_.d_qk, s_.d_v);
  for (const auto& src : s_.sources) n += fmt::format("_n{}", src.per_query);
  return n + (s_.sink ? "_sink_" : "_") + std::string(sim::dtype_name(s_.dtype));
}

nlohmann::json SparseAttentionKernel::tiling_json() const {
  // The AICs lowering uses: no more than there are items.
  const int cores = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t_.cores, static_cast<int64_t>(plan_.items.size()))));
  return {{"kv_block", t_.kv_block}, {"head_block", t_.head_block}, {"stages", t_.stages},
          {"gather", t_.gather == GatherBy::Aic ? "aic" : "aiv"}, {"split_kv", t_.split_kv}, {"cores", cores}};
}

nlohmann::json SparseAttentionKernel::details() const {
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0, empty = 0, blocks = 0;
  for (int64_t t = 0; t < s_.tokens; ++t) {
    const int64_t n = plan_.token_rows[static_cast<size_t>(t) + 1] - plan_.token_rows[static_cast<size_t>(t)];
    lo = std::min(lo, n), hi = std::max(hi, n), empty += n == 0;
  }
  for (const auto& it : plan_.items) blocks += it.blocks;
  return {{"indices",
           {{"valid_rows", plan_.rows.size()}, {"distinct_rows", distinct_rows_}, {"per_token_min", s_.tokens ? lo : 0},
            {"per_token_max", hi}, {"tokens_without_valid_index", empty}, {"items", plan_.items.size()}, {"blocks", blocks}}}};
}

double SparseAttentionKernel::flops() const {
  return 2.0 * static_cast<double>(s_.heads) * static_cast<double>(s_.d_qk + s_.d_v) * static_cast<double>(plan_.rows.size());
}

double SparseAttentionKernel::compulsory_bytes() const {
  const double e = sim::dtype_bytes(s_.dtype), T = static_cast<double>(s_.tokens), H = static_cast<double>(s_.heads);
  double idx = 0;
  for (const auto& src : s_.sources) idx += T * static_cast<double>(src.per_query) * 4;
  return T * H * s_.d_qk * e + static_cast<double>(distinct_rows_) * s_.d_qk * e + idx + (s_.sink ? 4.0 * H : 0.0) +
         T * H * s_.d_v * e + T * H * 4;
}

double SparseAttentionKernel::estimated_instructions() const {
  // What lower() emits, counted per block of n rows with the L0 slices of the presets' 64 KB
  // L0A / L0B: the AIC's gathers (a copy per row, or one tile load), 7 per C1 slice and ~13 per
  // C2 chunk plus the hand-offs; per AIV the softmax (~14 + 4 log2 n: the folds and the
  // broadcast), the O update (one per head row, and on the GM path its chunk loads: 1.25 per row
  // and 8 more, between the two paths) and its gathers; per item the Q^T load and the finalisation (one per
  // head row); the merge per 8 rows; an AIV without heads only takes the AIC's hand-offs (~3 per
  // block). Within about 15% on both presets.
  const double A = 2, act = std::max(1, sparse_attention_active_aivs(t_.head_block, 2));
  const double hh = static_cast<double>(t_.head_block) / act, e = sim::dtype_bytes(s_.dtype), half = 32768;
  const int64_t kb16 = round_up(t_.kv_block, 16), hb16 = round_up(t_.head_block, 16);
  const int64_t k0 = std::max<int64_t>(16, std::min<int64_t>({s_.d_qk, static_cast<int64_t>(half / (kb16 * e)) / 16 * 16,
                                                              static_cast<int64_t>(half / (hb16 * e)) / 16 * 16}));
  const int64_t n0 = std::max<int64_t>(16, std::min<int64_t>(s_.d_v, static_cast<int64_t>(half / (kb16 * e)) / 16 * 16));
  const double slices = static_cast<double>(ceil_div(s_.d_qk, k0)), chunks = static_cast<double>(ceil_div(s_.d_v, n0));
  const double aiv_gather = t_.gather == GatherBy::Aiv;
  double total = 0;
  for (const auto& it : plan_.items) {
    total += 6 + act * (hh + 20);
    for (int64_t b = 0; b < it.blocks; ++b) {
      const auto [r0, r1] = plan_.block_rows(it, b);
      const double n = static_cast<double>(r1 - r0), levels = std::ceil(std::log2(std::max(2.0, n)));
      total += (aiv_gather ? 6 : n + 3) + 7 * slices + 10 + chunks * 13 + 8;
      total += act * (22 + 4 * levels + hh * 1.25) + (A - act) * 3 + (aiv_gather ? n + 6 * A * std::ceil(n / (8 * A)) : 0);
    }
  }
  if (t_.split_kv > 1) total += static_cast<double>(s_.tokens * s_.heads) / 8 * (30 + t_.split_kv * 14);
  return total;
}

Status SparseAttentionKernel::can_implement(const sim::HardwareSpec& hw) const {
  const int A = std::max(1, hw.aiv_per_aic);
  if ((s_.dtype != DType::Bf16 && s_.dtype != DType::Fp16) || !hw.aic.cube_k0[static_cast<int>(s_.dtype)])
    return Status::bad("workload.dtype",
                       fmt::format("bf16 or fp16 with a cube for it on {}, found {}", hw.name, sim::dtype_name(s_.dtype)));
  if (s_.sources.empty() || s_.sources.size() > 2)
    return Status::bad("workload.sources", fmt::format("one or two KV sources, found {}", s_.sources.size()));
  for (size_t k = 0; k < s_.sources.size(); ++k) {
    const auto& src = s_.sources[k];
    if (src.rows < 1 || src.per_query < 1 || src.idx.size() != static_cast<size_t>(s_.tokens * src.per_query))
      return Status::bad(fmt::format("workload.sources[{}]", k),
                         fmt::format("needs rows >= 1, per_query >= 1 and tokens x per_query = {} indices, found {}",
                                     s_.tokens * src.per_query, src.idx.size()));
  }
  if (s_.d_qk % 16 || s_.d_v % 16 || s_.d_v > s_.d_qk)
    return Status::bad("workload.d_v", fmt::format("d_qk {} and d_v {} must be multiples of 16 (cube fractals) with d_v <= d_qk "
                                                   "(V is the first d_v values of a KV row)", s_.d_qk, s_.d_v));
  const int64_t hb = t_.head_block;
  const int act = sparse_attention_active_aivs(hb, A);
  if (hb < 1 || s_.heads % hb || act == 0)
    return Status::bad("tiling.head_block", fmt::format("head_block {} must divide heads {} and be a multiple of 8 (whole 32-byte "
                                                        "fp32 vectors of heads per AIV; split over the {} AIVs when a multiple "
                                                        "of {}, else over fewer)", hb, s_.heads, A, 8 * A));
  if (t_.kv_block < 16 || t_.kv_block % 16)
    return Status::bad("tiling.kv_block",
                       fmt::format("kv_block must be a positive multiple of 16 (NZ row bands), found {}", t_.kv_block));
  if (t_.stages < 2 || t_.stages > 4)
    return Status::bad("tiling.stages",
                       fmt::format("stages must be 2..4 (C1 runs a block ahead of C2; event ids 0-3), found {}", t_.stages));
  if (t_.split_kv < 1 || t_.split_kv > plan_.positions)
    return Status::bad("tiling.split_kv", fmt::format("split_kv must be 1..{} (the index positions per token), found {}",
                                                      plan_.positions, t_.split_kv));
  if (t_.cores < 1 || t_.cores > hw.num_aic)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} AICs on {}, found {}", hw.num_aic, hw.name, t_.cores));
  if (hw.sync.event_ids < 8 || hw.sync.cross_flag_ids < 9 + 4 * (A - 1) || hw.sync.cross_max_pending < 2 * A)
    return Status::bad("hardware", fmt::format("the pipeline needs 8 event ids, {} cross-core flags (9, and 4 more per AIV beyond "
                                               "the first) and {} pending sets", 9 + 4 * (A - 1), 2 * A));
  const bool via_ub = hw.path(Path::L0CToUb).available && hw.path(Path::UbToL1).available;
  for (Path p : via_ub ? std::vector<Path>{Path::GmToL1Nd2Nz, Path::GmToUb, Path::UbToGm}
                       : std::vector<Path>{Path::GmToL1Nd2Nz, Path::GmToUb, Path::UbToGm, Path::L0CToGmNz2Nd})
    if (!hw.path(p).available) return Status::bad("hardware", fmt::format("{} lacks the {} path", hw.name, sim::path_name(p)));
  for (VecOp op : {VecOp::Muls, VecOp::Max, VecOp::Sub, VecOp::Exp, VecOp::Add, VecOp::Mul, VecOp::Div, VecOp::Ln, VecOp::Cast,
                   VecOp::Dup})
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(DType::Fp32)] > 0))
      return Status::bad("hardware", fmt::format("{} has no fp32 vector {}", hw.name, sim::vec_op_name(op)));
  if (!(hw.aiv.vec_rate[static_cast<int>(VecOp::Dup)][static_cast<int>(s_.dtype)] > 0))
    return Status::bad("workload.dtype", fmt::format("{} cannot fill {} vectors", hw.name, sim::dtype_name(s_.dtype)));
  const int64_t e = sim::dtype_bytes(s_.dtype), kb16 = round_up(t_.kv_block, 16), hb16 = round_up(hb, 16);
  const SparseL0 l0 = sparse_attention_l0(s_, t_, hw);
  if (l0.k0 < 16 || kb16 * hb16 * e > hw.aic.l0a_bytes / 2)
    return Status::bad("tiling.kv_block", fmt::format("kv_block {} x head_block {} leave no 16-deep C1 slice in half of L0A / L0B "
                                                      "({} / {} B), or P [{} x {}] exceeds half of L0A", t_.kv_block, hb,
                                                      hw.aic.l0a_bytes, hw.aic.l0b_bytes, hb, t_.kv_block));
  if (l0.n0 < 16 || sparse_attention_l0c_bytes(s_, t_, hw) > hw.aic.l0c_bytes)
    return Status::bad("tiling.kv_block", fmt::format("two S^T tiles [{} x {}] and two 16-wide O chunks do not fit L0C ({} B) "
                                                      "and V [{} x 16] half of L0B", t_.kv_block, hb, hw.aic.l0c_bytes, t_.kv_block));
  if (const int64_t l1 = sparse_attention_l1_bytes(s_, t_, hw); l1 > hw.aic.l1_bytes)
    return Status::bad("tiling.stages", fmt::format("2 Q^T tiles [{} x {}], {} K tiles [{} x {}] and 2 P slots need {} B of L1, more "
                                                    "than its {} B", s_.d_qk, hb, t_.stages, t_.kv_block, s_.d_qk, l1, hw.aic.l1_bytes));
  if (const int64_t ub = sparse_attention_ub_bytes(s_, t_, hw); ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.head_block", fmt::format("{} heads per AIV need O and O_blk [{} x {}] fp32 plus kv_block {} score tiles{}: "
                                                        "{} B of UB, more than its {} B", hb / act, hb / act, s_.d_v, t_.kv_block,
                                                        t_.gather == GatherBy::Aiv ? " and the gather staging" : "", ub, hw.aiv.ub_bytes));
  return Status::good();
}

std::vector<TensorInfo> SparseAttentionKernel::tensors() const {
  const int64_t T = s_.tokens, H = s_.heads, e = sim::dtype_bytes(s_.dtype);
  GmAllocator gm;
  std::vector<TensorInfo> v;
  v.push_back({"q", s_.dtype, T, H * s_.d_qk, TensorLayout::RowMajor, gm.alloc(T * H * s_.d_qk * e), false});
  for (size_t k = 0; k < s_.sources.size(); ++k) {
    const auto& src = s_.sources[k];
    v.push_back({fmt::format("kv{}", k), s_.dtype, src.rows, s_.d_qk, TensorLayout::RowMajor, gm.alloc(src.rows * s_.d_qk * e), false});
    v.push_back({fmt::format("idx{}", k), DType::Int32, T, src.per_query, TensorLayout::RowMajor, gm.alloc(T * src.per_query * 4), false});
  }
  if (s_.sink) v.push_back({"sinks", DType::Fp32, 1, H, TensorLayout::RowMajor, gm.alloc(H * 4), false});
  v.push_back({"out", s_.dtype, T, H * s_.d_v, TensorLayout::RowMajor, gm.alloc(T * H * s_.d_v * e), true});
  v.push_back({"lse", DType::Fp32, T, H, TensorLayout::RowMajor, gm.alloc(T * H * 4), true});
  return v;
}

std::vector<double> SparseAttentionKernel::make_input(size_t index, const InputSpec& spec) const {
  const TensorInfo t = tensors().at(index);
  for (size_t k = 0; k < s_.sources.size(); ++k)
    if (t.name == fmt::format("idx{}", k)) return {s_.sources[k].idx.begin(), s_.sources[k].idx.end()};
  return generate_input(spec, t, static_cast<int>(index));
}

sim::Program SparseAttentionKernel::lower(const sim::HardwareSpec& hw, bool functional) const {
  return lower_sparse_attention(s_, t_, plan_, tensors(), hw, functional, name());
}

// ---- references ----

namespace {

// The vector unit's arithmetic: each op computed in double and rounded once to fp32.
float fexp(float x) { return static_cast<float>(std::exp(static_cast<double>(x))); }
float fsub(float a, float b) { return static_cast<float>(static_cast<double>(a) - b); }
float fadd(float a, float b) { return static_cast<float>(static_cast<double>(a) + b); }
float fmul(float a, float b) { return static_cast<float>(static_cast<double>(a) * b); }
float frcp(float a) { return static_cast<float>(1.0 / static_cast<double>(a)); }
float fln(float a) { return static_cast<float>(std::log(static_cast<double>(a))); }

// Emit::fold's pairwise order on one head's values: rows [0, h) with [h, 2h), an odd row into row 0.
float fold(std::vector<float> v, bool max) {
  size_t n = v.size();
  auto op = [max](float a, float b) { return max ? std::max(a, b) : a + b; };
  while (n > 1) {
    const size_t h = n / 2;
    for (size_t i = 0; i < h; ++i) v[i] = op(v[i], v[h + i]);
    if (n % 2) v[0] = op(v[0], v[2 * h]);
    n = h;
  }
  return v[0];
}

// One split of one query head as the kernel computes it: unnormalised O, running max m, sum l.
struct SplitState {
  bool any = false;
  float m = 0, l = 0;
  std::vector<float> o;
};

}  // namespace

std::vector<Golden> SparseAttentionKernel::references(const std::vector<std::vector<double>>& in,
                                                      const std::vector<std::vector<double>>&) const {
  const int64_t T = s_.tokens, H = s_.heads, Dq = s_.d_qk, D = s_.d_v;
  const size_t ns = s_.sources.size();
  const std::vector<double>& q = in[0];
  const std::vector<double>* sinks = s_.sink ? &in[1 + 2 * ns] : nullptr;
  std::vector<Golden> g(2);
  g[0].exact.resize(static_cast<size_t>(T * H * D)), g[1].exact.resize(static_cast<size_t>(T * H));
  // Exact: fp64 over the indices the device was given.
  std::vector<std::vector<int32_t>> idx(ns);
  std::vector<ref::KvSource> src(ns);
  for (size_t k = 0; k < ns; ++k) {
    idx[k].assign(in[2 + 2 * k].begin(), in[2 + 2 * k].end());
    src[k] = {in[1 + 2 * k].data(), s_.sources[k].rows, idx[k].data(), s_.sources[k].per_query};
  }
  ref::sparse_attention(T, H, Dq, D, q.data(), src, sinks ? sinks->data() : nullptr, s_.scale, g[0].exact.data(), g[1].exact.data());

  // Same precision: the kernel's blocks, splits and rounding points (fp32 scores from bf16
  // operands, the pairwise folds, P rounded to the input type for P V, fp32 O updates, the merge).
  g[0].same_precision.resize(g[0].exact.size()), g[1].same_precision.resize(g[1].exact.size());
  const num::Format fmt_in = sim::number_format(s_.dtype);
  const int S = t_.split_kv;
  const float inf = std::numeric_limits<float>::infinity();
  tbb::parallel_for(int64_t{0}, T, [&](int64_t t) {
    std::vector<float> qf(static_cast<size_t>(Dq)), sc, p;
    std::vector<float> pv(static_cast<size_t>(D));
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t d = 0; d < Dq; ++d) qf[d] = static_cast<float>(q[static_cast<size_t>((t * H + h) * Dq + d)]);
      std::vector<SplitState> parts(static_cast<size_t>(S));
      for (int sp = 0; sp < S; ++sp) {
        const SparsePlan::Item& it = plan_.items[static_cast<size_t>((t * (H / t_.head_block)) * S + sp)];
        SplitState& st = parts[static_cast<size_t>(sp)];
        for (int64_t b = 0; b < it.blocks; ++b) {
          const auto [ra, rb] = plan_.block_rows(it, b);
          sc.assign(static_cast<size_t>(rb - ra), 0.0f);
          std::vector<const double*> rows;
          for (int64_t r = ra; r < rb; ++r) {
            const SparsePlan::Row& row = plan_.rows[static_cast<size_t>(r)];
            const double* kv = in[1 + 2 * static_cast<size_t>(row.source)].data() + row.row * Dq;
            rows.push_back(kv);
            float acc = 0;  // the cube's fp32 accumulation (bf16 products are exact in fp32)
            for (int64_t d = 0; d < Dq; ++d) acc = fadd(acc, qf[d] * static_cast<float>(kv[d]));
            sc[static_cast<size_t>(r - ra)] = static_cast<float>(static_cast<double>(acc) * s_.scale);
          }
          const float bm = fold(sc, true);
          float alpha = 0;
          if (!st.any) {
            st.m = bm;
          } else {
            const float mn = std::max(st.m, bm);
            alpha = fexp(fsub(st.m, mn));
            st.m = mn;
          }
          p.resize(sc.size());
          for (size_t j = 0; j < sc.size(); ++j) p[j] = fexp(fsub(sc[j], st.m));
          const float bs = fold(p, false);
          st.l = st.any ? fadd(fmul(st.l, alpha), bs) : bs;
          std::fill(pv.begin(), pv.end(), 0.0f);
          for (size_t j = 0; j < p.size(); ++j) {
            const float pj = static_cast<float>(num::round_to(fmt_in, p[j]));
            for (int64_t d = 0; d < D; ++d) pv[d] = fadd(pv[d], pj * static_cast<float>(rows[j][d]));
          }
          if (!st.any) st.o = pv;
          else
            for (int64_t d = 0; d < D; ++d) st.o[d] = fadd(fmul(st.o[d], alpha), pv[d]);
          st.any = true;
        }
      }
      const float sink = sinks ? static_cast<float>((*sinks)[static_cast<size_t>(h)]) : 0.0f;
      std::vector<float> res(static_cast<size_t>(D), 0.0f);
      float lse = inf;
      auto finish = [&](const std::vector<float>& o, float m, float l) {
        const float den = sinks ? fadd(l, fexp(fsub(sink, m))) : l;
        const float rcp = frcp(den);
        for (int64_t d = 0; d < D; ++d) res[d] = fmul(o[d], rcp);
        lse = fadd(fln(l), m);
      };
      if (S == 1) {
        if (parts[0].any) finish(parts[0].o, parts[0].m, parts[0].l);
      } else {
        // Each split's normalised partial and lse, then the merge over the splits holding rows.
        std::vector<std::vector<float>> os;
        std::vector<float> ls;
        for (auto& st : parts) {
          if (!st.any) continue;
          const float rcp = frcp(st.l);
          for (auto& x : st.o) x = fmul(x, rcp);
          os.push_back(st.o);
          ls.push_back(fadd(fln(st.l), st.m));
        }
        if (!os.empty()) {
          const float mx = *std::max_element(ls.begin(), ls.end());
          std::vector<float> w(ls.size());
          for (size_t i = 0; i < ls.size(); ++i) w[i] = fexp(fsub(ls[i], mx));
          float L = w[0];
          for (size_t i = 1; i < w.size(); ++i) L = fadd(L, w[i]);
          std::vector<float> acc(static_cast<size_t>(D));
          for (int64_t d = 0; d < D; ++d) acc[d] = fmul(os[0][d], w[0]);
          for (size_t i = 1; i < os.size(); ++i)
            for (int64_t d = 0; d < D; ++d) acc[d] = fadd(acc[d], fmul(os[i][d], w[i]));
          finish(acc, mx, L);
        }
      }
      const size_t row = static_cast<size_t>(t * H + h);
      for (int64_t d = 0; d < D; ++d) g[0].same_precision[row * D + d] = num::round_to(fmt_in, res[d]);
      g[1].same_precision[row] = lse;
    }
  });
  if (s_.lse_base2) ref::lse_to_base2(g[1].exact, false), ref::lse_to_base2(g[1].same_precision, true);
  return g;
}

Golden SparseAttentionKernel::reference(const std::vector<std::vector<double>>& inputs) const {
  return references(inputs, {})[0];
}

// ---- default tiling and factory ----

SparseAttentionTiling default_sparse_attention_tiling(const SparseAttentionShape& s, const sim::HardwareSpec& hw) {
  // The largest head block (fewest re-gathers of the same rows; a multiple of 8 dividing heads,
  // split over sparse_attention_active_aivs AIVs: 8 heads run on one AIV of a pair) that fits with a kv_block of at
  // least 64 (else any), and for it the first (stages, kv_block) that fits UB, L1, L0 and L0C: on
  // the UB path (3510) 3 K tiles first (gathers run two blocks ahead of C2, which reads V from
  // them), then the largest kv_block; on the GM path (2201) the largest kv_block first (every
  // block moves O_blk [head_block x d_v] fp32 through the GM workspace), then 3 tiles. Gathers on
  // the AIC (the model's small GM->UB copies are slower than ND->NZ ones into L1 on both). split_kv
  // when the (token, head block) items are fewer than the AICs, so every AIC works (at most one
  // split per kv_block of index positions); every AIC that gets an item.
  SparseAttentionTiling t;
  const int A = std::max(1, hw.aiv_per_aic);
  auto fits = [&](const SparseAttentionTiling& c) {
    const SparseL0 l0 = sparse_attention_l0(s, c, hw);
    return sparse_attention_ub_bytes(s, c, hw) <= hw.aiv.ub_bytes && sparse_attention_l1_bytes(s, c, hw) <= hw.aic.l1_bytes &&
           l0.k0 >= 16 && l0.n0 >= 16 && sparse_attention_l0c_bytes(s, c, hw) <= hw.aic.l0c_bytes &&
           round_up(c.head_block, 16) * c.kv_block * sim::dtype_bytes(s.dtype) <= hw.aic.l0a_bytes / 2;
  };
  // Candidates in order of preference; the first that fits wins.
  const bool gm_path = !(hw.path(Path::L0CToUb).available && hw.path(Path::UbToL1).available);
  std::vector<std::pair<int, int64_t>> steps;  // (stages, kv_block)
  for (int st : {3, 2})
    for (int64_t kb : {128, 64, 32, 16}) steps.push_back({st, kb});
  if (gm_path)  // larger blocks first: each block's O_blk makes a GM round trip
    std::stable_sort(steps.begin(), steps.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  bool found = false;
  for (int64_t min_kb : {64, 16})
    for (int64_t hb = s.heads; hb >= 8 && !found; --hb) {
      if (s.heads % hb || sparse_attention_active_aivs(hb, A) == 0) continue;
      for (const auto& [st, kb] : steps) {
        SparseAttentionTiling c;
        c.head_block = hb, c.kv_block = kb, c.stages = st, c.cores = 1;
        if (!found && kb >= min_kb && fits(c)) t = c, found = true;
      }
    }
  if (!found) t.head_block = s.heads % (8 * A) == 0 ? 8 * A : 8, t.kv_block = 16;
  int64_t positions = 0;
  for (const auto& src : s.sources) positions += src.per_query;
  const int64_t items = s.tokens * std::max<int64_t>(1, s.heads / t.head_block);
  if (items > 0 && items < hw.num_aic)
    t.split_kv = static_cast<int>(std::clamp<int64_t>(ceil_div(hw.num_aic, items), 1, std::max<int64_t>(1, positions / t.kv_block)));
  t.cores = static_cast<int>(std::clamp<int64_t>(items * t.split_kv, 1, hw.num_aic));
  return t;
}

namespace {

// One source of the YAML: its cache rows, list length and how each token's list is formed.
SparseKvSource parse_source(const YamlNode& n, int64_t tokens, int64_t batch) {
  SparseKvSource src;
  src.rows = n.at("rows").as_positive_int();
  src.per_query = n.at("per_query").as_positive_int();
  if (src.rows > (int64_t(1) << 31) - 1) n.at("rows").fail("rows beyond 2^31 - 1 do not fit an int32 index");
  if (src.rows % batch) n.at("rows").fail(fmt::format("rows {} must split evenly over batch {} sequences", src.rows, batch));
  const int64_t per_seq = src.rows / batch;
  const std::string select = n.get("select") ? n.at("select").as_enum({"topk", "window", "all"}) : "topk";
  int64_t visible = per_seq;
  if (auto v = n.get("visible")) {
    visible = v->as_positive_int();
    if (select != "window" && visible > per_seq)
      v->fail(fmt::format("visible {} exceeds the {} rows of a sequence (only a window ring may wrap)", visible, per_seq));
  }
  if (select == "all" && src.per_query < visible)
    n.at("per_query").fail(fmt::format("select: all lists every visible entry: per_query {} must be >= visible {}", src.per_query, visible));
  // A sequence's tokens sit at consecutive positions; the last one sees `visible` entries.
  const int64_t m = tokens / batch;
  std::vector<int64_t> vis(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) vis[static_cast<size_t>(t)] = std::max<int64_t>(0, visible - (m - 1 - t % m));
  std::vector<int32_t> pos;
  if (select == "topk") {
    IndexSpec spec;
    if (auto i = n.get("indices")) spec = parse_index_spec(*i, {"uniform", "recent_biased"});
    pos = draw_indices(spec, vis, src.per_query);
  } else {
    if (n.get("indices")) n.at("indices").fail("'indices' applies to select: topk only");
    pos.assign(static_cast<size_t>(tokens * src.per_query), -1);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t v = vis[static_cast<size_t>(t)], k = std::min(src.per_query, v), first = select == "window" ? v - k : 0;
      for (int64_t j = 0; j < k; ++j) pos[static_cast<size_t>(t * src.per_query + j)] = static_cast<int32_t>(first + j);
    }
  }
  src.idx.resize(pos.size());
  for (size_t i = 0; i < pos.size(); ++i) {
    const int64_t seq = static_cast<int64_t>(i) / src.per_query / m;
    // A window ring holds position p in slot p mod (rows per sequence).
    src.idx[i] = pos[i] < 0 ? -1 : static_cast<int32_t>(seq * per_seq + pos[i] % per_seq);
  }
  return src;
}

}  // namespace

SparseAttentionTiling parse_sparse_attention_tiling(const YamlNode& tiling, SparseAttentionTiling t,
                                                    const SparseAttentionShape& s, const sim::HardwareSpec& hw) {
  if (auto x = tiling.get("kv_block")) t.kv_block = x->as_positive_int();
  if (auto x = tiling.get("head_block")) t.head_block = x->as_positive_int();
  if (auto x = tiling.get("stages")) t.stages = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("gather")) t.gather = x->as_enum({"aic", "aiv"}) == "aic" ? GatherBy::Aic : GatherBy::Aiv;
  if (auto x = tiling.get("split_kv")) t.split_kv = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("cores")) t.cores = static_cast<int>(x->as_positive_int());
  else {  // every AIC that gets an item of this tiling
    const int64_t groups = t.head_block > 0 && s.heads % t.head_block == 0 ? s.heads / t.head_block : 1;
    t.cores = static_cast<int>(std::clamp<int64_t>(s.tokens * groups * std::max(1, t.split_kv), 1, hw.num_aic));
  }
  return t;
}

std::unique_ptr<Kernel> make_sparse_attention(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  SparseAttentionShape s;
  s.tokens = w.at("tokens").as_positive_int();
  s.heads = w.at("heads").as_positive_int();
  s.d_qk = w.at("d_qk").as_positive_int();
  s.d_v = w.at("d_v").as_positive_int();
  if (s.tokens > (int64_t(1) << 24) || s.heads > 1024 || s.d_qk > 4096 || s.d_v > 4096)
    w.fail("tokens beyond 2^24, heads beyond 1024 or head dims beyond 4096 do not fit the instruction fields");
  s.dtype = *sim::dtype_from_name(w.at("dtype").as_enum({"bf16", "fp16"}));
  if (!hw.aic.cube_k0[static_cast<int>(s.dtype)]) w.at("dtype").fail(fmt::format("{} has no {} cube", hw.name, sim::dtype_name(s.dtype)));
  s.scale = w.get("scale") ? w.at("scale").as_positive_double() : 1.0 / std::sqrt(static_cast<double>(s.d_qk));
  if (auto x = w.get("sink")) s.sink = x->as_bool();
  if (auto x = w.get("lse_base")) s.lse_base2 = x->as_enum({"e", "2"}) == "2";
  int64_t batch = 1;
  if (auto b = w.get("batch")) {
    batch = b->as_positive_int();
    if (s.tokens % batch) b->fail(fmt::format("tokens {} must be a whole number of tokens per sequence of batch {}", s.tokens, batch));
  }
  const YamlNode srcs = w.at("sources");
  if (!srcs.is_seq() || srcs.size() < 1 || srcs.size() > 2) srcs.fail("expected a list of one or two sources");
  for (size_t i = 0; i < srcs.size(); ++i) s.sources.push_back(parse_source(srcs[i], s.tokens, batch));
  SparseAttentionTiling t = default_sparse_attention_tiling(s, hw);
  if (tiling) t = parse_sparse_attention_tiling(*tiling, t, s, hw);
  return std::make_unique<SparseAttentionKernel>(std::move(s), t, !tiling.has_value());
}

std::unique_ptr<Kernel> SparseAttentionKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const {
  return std::make_unique<SparseAttentionKernel>(s_, parse_sparse_attention_tiling(tiling, t_, s_, hw), false);
}

}  // namespace npusim::kernels
