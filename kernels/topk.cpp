#include "kernels/topk.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "kernels/reference/indexer.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/validation.hpp"

namespace npusim::kernels {

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kRepeatBytes = 255 * 256;                      // one vector instruction: 255 repeats of 256 B
constexpr int64_t kPairsPerInstr = kRepeatBytes / sim::kSortPairBytes;
constexpr int kBarrier = 0;                                      // the all-AIV barrier before stage 2

sim::TileRef flat(uint64_t off, DType d) { return {off, 0, 0, 0, TileLayout::Flat, d}; }
sim::TileRef nd(uint64_t off, int64_t ld, DType d) { return {off, static_cast<uint32_t>(ld), 0, 0, TileLayout::Nd, d}; }
uint64_t align32(uint64_t bytes) { return (bytes + 31) / 32 * 32; }

}  // namespace

// ---- The running top-k machinery ----

int TopkEmitter::levels(int64_t fill) {
  int l = 0;
  for (int64_t run = 32; run < fill; run *= 4) ++l;
  return l;
}

void TopkEmitter::ew(VecOp op, uint64_t dst, uint64_t src, int64_t n, double scalar, uint64_t src2, DType dt) const {
  const int e = sim::dtype_bytes(dt);
  const int64_t per = kRepeatBytes / e;
  for (int64_t done = 0; done < n; done += per) {
    sim::Operands o;
    o.src = flat(src + done * e, dt), o.src2 = flat(src2 + done * e, dt), o.dst = flat(dst + done * e, dt);
    o.scalar = scalar;
    b_.vec(op, dt, static_cast<uint32_t>(std::min(per, n - done)), o);
  }
}

void TopkEmitter::arange(uint64_t dst, int64_t n, double start) const {
  sim::Operands o;
  o.dst = flat(dst, DType::Int32), o.scalar = start;
  b_.vec(VecOp::Arange, DType::Int32, static_cast<uint32_t>(n), o);
}

void TopkEmitter::sort32(uint64_t dst, uint64_t keys, uint64_t idx, int64_t n) const {
  for (int64_t done = 0; done < n; done += kPairsPerInstr) {
    sim::Operands o;
    o.src = flat(keys + done * 4, DType::Fp32), o.src2 = flat(idx + done * 4, DType::Int32);
    o.dst = flat(dst + done * sim::kSortPairBytes, DType::Fp32);
    b_.vec(VecOp::Sort32, DType::Fp32, static_cast<uint32_t>(std::min(kPairsPerInstr, n - done)), o);
  }
}

void TopkEmitter::mrgsort(uint64_t dst, uint64_t src, int64_t n, int64_t chunk) const {
  // One instruction merges up to four queues; whole chunks of a level share an instruction up to
  // the repeat limit (a chunk longer than that is one instruction of its own).
  const int64_t c = chunk <= 0 || chunk >= n ? n : chunk;
  const int64_t per = std::max<int64_t>(1, kPairsPerInstr / c) * c;
  for (int64_t done = 0; done < n; done += per) {
    sim::Operands o;
    o.src = flat(src + done * sim::kSortPairBytes, DType::Fp32), o.dst = flat(dst + done * sim::kSortPairBytes, DType::Fp32);
    o.cols = static_cast<uint32_t>(c);
    b_.vec(VecOp::MrgSort, DType::Fp32, static_cast<uint32_t>(std::min(per, n - done)), o);
  }
}

void TopkEmitter::extract(uint64_t dst, uint64_t pairs, int64_t n, bool indices) const {
  for (int64_t done = 0; done < n; done += kPairsPerInstr) {
    sim::Operands o;
    o.src = flat(pairs + done * sim::kSortPairBytes, DType::Fp32);
    o.dst = flat(dst + done * 4, indices ? DType::Int32 : DType::Fp32), o.scalar = indices ? 1 : 0;
    b_.vec(VecOp::Extract, DType::Fp32, static_cast<uint32_t>(std::min(kPairsPerInstr, n - done)), o);
  }
}

void TopkEmitter::reset(State& s) const {
  s.cur = 0;
  dup(s.area[0], 2 * k_, kPadIndex, DType::Int32);  // the words of (-inf, kPadIndex), k times
}

void TopkEmitter::merge_batch(State& s, uint64_t keys, uint64_t idx, int64_t n) const {
  if (n <= 0) return;
  const int l = levels(n);
  const uint64_t cand = static_cast<uint64_t>(k_) * sim::kSortPairBytes;
  int at = l % 2 == 0 ? s.cur : 1 - s.cur;  // an even number of hand-overs ends in the current area
  sort32(s.area[at] + cand, keys, idx, n);
  for (int j = 1; j <= l; ++j, at = 1 - at) mrgsort(s.area[1 - at] + cand, s.area[at] + cand, n, int64_t{32} << (2 * j));
  mrgsort(s.area[1 - s.cur], s.area[s.cur], k_ + n, 0);  // list + run: the first k are the new list
  s.cur = 1 - s.cur;
}

void TopkEmitter::extract_list(uint64_t vals, uint64_t ids, uint64_t pairs) const {
  extract(vals, pairs, k_, false);
  extract(ids, pairs, k_, true);
  ew(VecOp::Maxs, ids, ids, k_, -1, 0, DType::Int32);  // the padding's index becomes -1
}

void copy_gm_to_ub(sim::CoreBuilder& b, uint64_t ub, int64_t ub_ld, uint64_t gm, int64_t gm_ld, int64_t rows, int64_t cols,
                   DType dt) {
  const int64_t e = sim::dtype_bytes(dt);
  sim::Operands o;
  o.rows = static_cast<uint32_t>(rows), o.cols = static_cast<uint32_t>(cols), o.src = nd(gm, gm_ld, dt), o.dst = nd(ub, ub_ld, dt);
  b.copy(Path::GmToUb, static_cast<uint32_t>(rows * cols * e),
         sim::GmRegion{gm, static_cast<uint32_t>(rows), static_cast<uint32_t>(cols * e), static_cast<uint64_t>(gm_ld * e)}, o);
}

void copy_ub_to_gm(sim::CoreBuilder& b, uint64_t gm, int64_t gm_ld, uint64_t ub, int64_t ub_ld, int64_t rows, int64_t cols,
                   DType dt) {
  const int64_t e = sim::dtype_bytes(dt);
  sim::Operands o;
  o.rows = static_cast<uint32_t>(rows), o.cols = static_cast<uint32_t>(cols), o.src = nd(ub, ub_ld, dt), o.dst = nd(gm, gm_ld, dt);
  b.copy(Path::UbToGm, static_cast<uint32_t>(rows * cols * e),
         sim::GmRegion{gm, static_cast<uint32_t>(rows), static_cast<uint32_t>(cols * e), static_cast<uint64_t>(gm_ld * e)}, o);
}

uint64_t TopkStage2::ub_bytes(int64_t k, int max_splits) {
  return 2 * align32(static_cast<uint64_t>(max_splits * k) * sim::kSortPairBytes) + 2 * align32(static_cast<uint64_t>(k) * 4);
}

void emit_topk_stage2(sim::CoreBuilder& b, const TopkStage2& s2, const std::vector<std::pair<int64_t, int>>& rows) {
  const TopkEmitter em(b, s2.k);
  const int64_t K = s2.k;
  const uint64_t ids = s2.out + align32(static_cast<uint64_t>(K) * 4);
  b.set_flag(Pipe::V, Pipe::Mte3, s2.sync);  // MTE3 follows every V instruction of stage 1, the barrier MTE3
  b.wait_flag(Pipe::V, Pipe::Mte3, s2.sync);
  b.cross_set(Pipe::Mte3, 0, s2.barrier);
  b.cross_wait(Pipe::Mte2, s2.barrier);
  for (auto [t, sp] : rows) {
    const int64_t m = sp * K;
    b.wait_flag(Pipe::V, Pipe::Mte2, 0);
    copy_gm_to_ub(b, s2.area[0], 2 * m, s2.lists + static_cast<uint64_t>(t * s2.max_splits * K) * sim::kSortPairBytes, 2 * m, 1,
                  2 * m, DType::Fp32);
    b.set_flag(Pipe::Mte2, Pipe::V, 0);
    b.wait_flag(Pipe::Mte2, Pipe::V, 0);
    int at = 0;
    for (int64_t run = K; run < m; run *= 4, at = 1 - at) em.mrgsort(s2.area[1 - at], s2.area[at], m, 4 * run);
    b.wait_flag(Pipe::Mte3, Pipe::V, s2.out_event);
    em.extract_list(s2.out, ids, s2.area[at]);
    b.set_flag(Pipe::V, Pipe::Mte2, 0);
    b.set_flag(Pipe::V, Pipe::Mte3, s2.out_event);
    b.wait_flag(Pipe::V, Pipe::Mte3, s2.out_event);
    copy_ub_to_gm(b, s2.values + static_cast<uint64_t>(t * K * 4), K, s2.out, K, 1, K, DType::Fp32);
    copy_ub_to_gm(b, s2.indices + static_cast<uint64_t>(t * K * 4), K, ids, K, 1, K, DType::Int32);
    b.set_flag(Pipe::Mte3, Pipe::V, s2.out_event);
  }
}

int choose_splits(int64_t rows, int64_t blocks, int workers, double stage2_cost) {
  int best = 1;
  double best_cost = kInf;
  for (int s = 1; s <= std::min<int64_t>(16, std::max<int64_t>(1, blocks)); ++s) {
    const double cost = static_cast<double>(ceil_div(rows * s, workers) * ceil_div(blocks, s)) +
                        (s > 1 ? static_cast<double>(ceil_div(rows, workers)) * s * stage2_cost : 0.0);
    if (cost < best_cost - 1e-9) best = s, best_cost = cost;
  }
  return best;
}

// ---- Tie-aware goldens ----

namespace {

// Device row D against the stable reference row R under scores `sc` (KERNELS.md 5.4).
bool tie_equivalent(const std::vector<int32_t>& D, const std::vector<int32_t>& R, const double* sc, int64_t cols) {
  const auto padding = [](const std::vector<int32_t>& v) { return std::count(v.begin(), v.end(), -1); };
  if (padding(D) != padding(R)) return false;
  const size_t valid = D.size() - static_cast<size_t>(padding(D));
  std::set<int32_t> seen;
  for (size_t j = 0; j < D.size(); ++j) {
    if (j >= valid) {
      if (D[j] != -1) return false;  // the padding is the tail
      continue;
    }
    if (D[j] < 0 || D[j] >= cols || !seen.insert(D[j]).second || std::isnan(sc[D[j]]) || sc[D[j]] == -kInf) return false;
  }
  double sq = 0;
  int64_t finite = 0;
  for (int64_t c = 0; c < cols; ++c)
    if (std::isfinite(sc[c])) sq += sc[c] * sc[c], ++finite;
  const Tolerance tol = tolerance_for(DType::Fp32);
  const double atol = tol.atol_rms * (finite ? std::sqrt(sq / finite) : 1.0);
  const std::vector<int32_t> d(D.begin(), D.begin() + static_cast<long>(valid)), r(R.begin(), R.begin() + static_cast<long>(valid));
  if (valid == 0) return true;
  if (!topk_sets_agree(d, r, std::vector<double>(sc, sc + cols), tol.rtol, atol)) return false;
  const double delta = tol.rtol * std::fabs(sc[r.back()]) + atol;
  for (size_t j = 1; j < valid; ++j)
    if (sc[d[j]] > sc[d[j - 1]] + delta) return false;
  return true;
}

}  // namespace

std::pair<Golden, Golden> topk_goldens(int64_t rows, int64_t cols, int64_t k, const std::vector<double>& exact,
                                       const std::vector<double>& device, const std::vector<double>* device_idx) {
  std::vector<int32_t> ref(static_cast<size_t>(rows * k));
  ref::topk_padded(rows, cols, exact.data(), k, ref.data(), nullptr);
  Golden idx{std::vector<double>(ref.begin(), ref.end()), {}}, val;
  val.exact.resize(ref.size()), val.same_precision.resize(ref.size());
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int32_t> R(ref.begin() + r * k, ref.begin() + (r + 1) * k), pick = R;
    if (device_idx && !device_idx->empty()) {
      std::vector<int32_t> D(static_cast<size_t>(k));
      for (int64_t j = 0; j < k; ++j) D[j] = static_cast<int32_t>((*device_idx)[r * k + j]);
      if (tie_equivalent(D, R, &exact[r * cols], cols))
        for (int64_t j = 0; j < k; ++j) idx.exact[r * k + j] = D[j];
      if (std::all_of(D.begin(), D.end(), [cols](int32_t c) { return c >= -1 && c < cols; })) pick = D;
    }
    for (int64_t j = 0; j < k; ++j) {
      const int32_t c = pick[j];
      val.exact[r * k + j] = c < 0 ? -kInf : exact[r * cols + c];
      val.same_precision[r * k + j] = c < 0 ? -kInf : device[r * cols + c];
    }
  }
  return {idx, val};
}

// ---- The topk kernel ----

namespace {

// UB plan of one AIV in stage 1: two chunk buffers, the column indices, the two list areas, the
// outputs. Stage 2 (after the barrier) reuses the UB from 0 (TopkStage2).
struct TopkUb {
  uint64_t buf[2], idx, area[2], vals, ids, bytes;
};

TopkUb topk_ub(const TopkShape& s, const TopkTiling& t) {
  TopkUb u{};
  uint64_t at = 0;
  auto put = [&at](uint64_t bytes) {
    const uint64_t off = at;
    at += align32(bytes);
    return off;
  };
  const uint64_t k = static_cast<uint64_t>(s.k), chunk = static_cast<uint64_t>(t.chunk);
  u.buf[0] = put(chunk * 4), u.buf[1] = put(chunk * 4), u.idx = put(chunk * 4);
  u.area[0] = put(TopkEmitter::area_bytes(s.k, t.chunk)), u.area[1] = put(TopkEmitter::area_bytes(s.k, t.chunk));
  u.vals = put(k * 4), u.ids = put(k * 4);
  u.bytes = at;
  return u;
}

int64_t split_begin(int64_t cols, int splits, int j) { return cols * j / splits; }

}  // namespace

int64_t TopkKernel::ub_bytes(const TopkShape& s, const TopkTiling& t) {
  const uint64_t s2 = t.splits > 1 ? TopkStage2::ub_bytes(s.k, t.splits) : 0;
  return static_cast<int64_t>(std::max(topk_ub(s, t).bytes, s2));
}

std::string TopkKernel::name() const { return fmt::format("topk_{}x{}_k{}", s_.rows, s_.cols, s_.k); }

nlohmann::json TopkKernel::tiling_json() const { return {{"chunk", t_.chunk}, {"splits", t_.splits}, {"cores", t_.cores}}; }

std::vector<TensorInfo> TopkKernel::tensors() const {
  GmAllocator gm;
  const int64_t T = s_.rows, S = s_.cols, K = s_.k;
  std::vector<TensorInfo> out;
  out.push_back({"scores", DType::Fp32, T, S, TensorLayout::RowMajor, gm.alloc(T * S * 4), false});
  out.push_back({"indices", DType::Int32, T, K, TensorLayout::RowMajor, gm.alloc(T * K * 4), true});
  out.push_back({"values", DType::Fp32, T, K, TensorLayout::RowMajor, gm.alloc(T * K * 4), true});
  return out;
}

double TopkKernel::compulsory_bytes() const { return 4.0 * s_.rows * s_.cols + 8.0 * s_.rows * s_.k; }

double TopkKernel::peak_flops_per_cycle(const sim::HardwareSpec& hw) const {
  return hw.aiv.vec_rate[static_cast<int>(VecOp::Add)][static_cast<int>(DType::Fp32)] * hw.num_aiv;
}

double TopkKernel::estimated_instructions() const {
  const double chunks = static_cast<double>(s_.rows) * (ceil_div(s_.cols, t_.chunk) + t_.splits);
  const double per_chunk = 10 + TopkEmitter::levels(t_.chunk);
  const double stage2 = t_.splits > 1 ? static_cast<double>(s_.rows) * (10 + std::ceil(std::log(t_.splits) / std::log(4.0))) : 0;
  return chunks * per_chunk + static_cast<double>(s_.rows) * t_.splits * 12 + stage2 + t_.cores * 16.0;
}

Status TopkKernel::can_implement(const sim::HardwareSpec& hw) const {
  if (s_.k < 1 || s_.k > s_.cols)
    return Status::bad("workload.topk", fmt::format("topk {} must lie in 1..{} (the columns of a row)", s_.k, s_.cols));
  if (s_.k > kMaxTopk)
    return Status::bad("workload.topk", fmt::format("topk {} exceeds {}: the list must fit three MrgSort queues of {} pairs",
                                                    s_.k, kMaxTopk, kMaxMergeQueue));
  if (t_.chunk < 32 || t_.chunk % 32 || t_.chunk > kMaxTopkCap)
    return Status::bad("tiling.chunk", fmt::format("chunk {} must be a multiple of 32 (sort32 blocks) in 32..{} (one MrgSort queue)",
                                                   t_.chunk, kMaxTopkCap));
  if (t_.splits < 1 || t_.splits > 64)
    return Status::bad("tiling.splits", fmt::format("splits must be 1..64, found {}", t_.splits));
  if (t_.splits > 1 && s_.k > kMaxMergeQueue)
    return Status::bad("tiling.splits", fmt::format("two stages merge whole lists as MrgSort queues: topk {} exceeds {}; use splits: 1",
                                                    s_.k, kMaxMergeQueue));
  if (t_.cores < 1 || t_.cores > hw.num_aiv)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} AIVs on {}, found {}", hw.num_aiv, hw.name, t_.cores));
  for (auto [op, dt] : {std::pair{VecOp::Dup, DType::Fp32}, {VecOp::Dup, DType::Int32}, {VecOp::Arange, DType::Int32},
                        {VecOp::Maxs, DType::Int32}, {VecOp::Sort32, DType::Fp32}, {VecOp::MrgSort, DType::Fp32}, {VecOp::Extract, DType::Fp32}})
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(dt)] > 0))
      return Status::bad("hardware", fmt::format("{} has no {} vector {}", hw.name, sim::dtype_name(dt), sim::vec_op_name(op)));
  if (!hw.path(Path::UbToUb).available) return Status::bad("hardware", fmt::format("{} has no UB->UB copy", hw.name));
  const int64_t ub = ub_bytes(s_, t_);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.chunk", fmt::format("chunk {} with topk {} (and {} splits) needs {} B of UB, more than its {} B",
                                                   t_.chunk, s_.k, t_.splits, ub, hw.aiv.ub_bytes));
  return Status::good();
}

sim::Program TopkKernel::lower(const sim::HardwareSpec&, bool functional) const {
  const auto ts = tensors();
  const uint64_t g_scores = ts[0].addr, g_idx = ts[1].addr, g_vals = ts[2].addr;
  const int64_t T = s_.rows, S = s_.cols, K = s_.k, C = t_.chunk;
  GmAllocator gm;
  gm.alloc(ts.back().addr + static_cast<uint64_t>(T * K * 4));
  const uint64_t ws = gm.alloc(t_.splits > 1 ? static_cast<uint64_t>(T * t_.splits * K) * sim::kSortPairBytes : 0);
  sim::Program prog;
  prog.name = name();
  prog.gm_footprint_bytes = gm.footprint();
  const TopkUb u = topk_ub(s_, t_);
  const int64_t units = T * t_.splits;
  const int cores = static_cast<int>(std::min<int64_t>(t_.cores, units));
  for (int v = 0; v < cores; ++v) {
    sim::CoreProgram cp{sim::CoreKind::Aiv, v, {}, {}};
    sim::CoreBuilder b(cp, functional);
    const TopkEmitter em(b, K);
    for (int q = 0; q < 2; ++q) b.set_flag(Pipe::V, Pipe::Mte2, q);
    b.set_flag(Pipe::Mte3, Pipe::V, 0);
    TopkEmitter::State st;
    st.area[0] = u.area[0], st.area[1] = u.area[1];
    int64_t n = 0;  // chunks so far (buffer parity)
    for (int64_t unit = units * v / cores; unit < units * (v + 1) / cores; ++unit) {
      const int64_t row = unit / t_.splits;
      const int j = static_cast<int>(unit % t_.splits);
      const int64_t c0 = split_begin(S, t_.splits, j), c1 = split_begin(S, t_.splits, j + 1);
      b.wait_flag(Pipe::Mte3, Pipe::V, 0);  // the last unit's outputs have left the areas
      em.reset(st);
      for (int64_t c = c0; c < c1; c += C, ++n) {
        const int q = static_cast<int>(n % 2);
        const int64_t len = std::min(C, c1 - c), padded = round_up(len, 32);
        b.wait_flag(Pipe::V, Pipe::Mte2, q);
        copy_gm_to_ub(b, u.buf[q], len, g_scores + static_cast<uint64_t>((row * S + c) * 4), len, 1, len, DType::Fp32);
        b.set_flag(Pipe::Mte2, Pipe::V, q);
        b.wait_flag(Pipe::Mte2, Pipe::V, q);
        if (padded > len) em.dup(u.buf[q] + static_cast<uint64_t>(len * 4), padded - len, -kInf);
        em.arange(u.idx, padded, static_cast<double>(c));
        em.merge_batch(st, u.buf[q], u.idx, padded);
        b.set_flag(Pipe::V, Pipe::Mte2, q);
      }
      if (t_.splits == 1) em.extract_list(u.vals, u.ids, em.list(st));
      b.set_flag(Pipe::V, Pipe::Mte3, 0);
      b.wait_flag(Pipe::V, Pipe::Mte3, 0);
      if (t_.splits == 1) {
        copy_ub_to_gm(b, g_vals + static_cast<uint64_t>(row * K * 4), K, u.vals, K, 1, K, DType::Fp32);
        copy_ub_to_gm(b, g_idx + static_cast<uint64_t>(row * K * 4), K, u.ids, K, 1, K, DType::Int32);
      } else {  // the sorted list, as pairs, into the row's slot of the workspace
        copy_ub_to_gm(b, ws + static_cast<uint64_t>(unit * K) * sim::kSortPairBytes, 2 * K, em.list(st), 2 * K, 1, 2 * K, DType::Fp32);
      }
      b.set_flag(Pipe::Mte3, Pipe::V, 0);
    }
    if (t_.splits > 1) {  // stage 2 over this AIV's rows; the UB is reused from 0
      std::vector<std::pair<int64_t, int>> rows;
      for (int64_t row = T * v / cores; row < T * (v + 1) / cores; ++row) rows.push_back({row, t_.splits});
      TopkStage2 s2;
      s2.lists = ws, s2.values = g_vals, s2.indices = g_idx, s2.k = K, s2.max_splits = t_.splits, s2.barrier = kBarrier;
      s2.sync = 1, s2.out_event = 0;
      s2.area[0] = 0, s2.area[1] = align32(static_cast<uint64_t>(t_.splits * K) * sim::kSortPairBytes), s2.out = 2 * s2.area[1];
      emit_topk_stage2(b, s2, rows);
    }
    for (int q = 0; q < 2; ++q) b.wait_flag(Pipe::V, Pipe::Mte2, q);
    b.wait_flag(Pipe::Mte3, Pipe::V, 0);
    prog.cores.push_back(std::move(cp));
  }
  return prog;
}

std::vector<double> TopkKernel::make_input(size_t index, const InputSpec& spec) const {
  std::vector<double> v = Kernel::make_input(index, spec);
  if (index == 0 && s_.causal_from >= 0)
    for (int64_t r = 0; r < s_.rows; ++r)
      for (int64_t c = s_.causal_from + r + 1; c < s_.cols; ++c) v[r * s_.cols + c] = -kInf;
  return v;
}

Golden TopkKernel::reference(const std::vector<std::vector<double>>& inputs) const { return references(inputs, {})[0]; }

std::vector<Golden> TopkKernel::references(const std::vector<std::vector<double>>& in,
                                           const std::vector<std::vector<double>>& device) const {
  auto [idx, val] = topk_goldens(s_.rows, s_.cols, s_.k, in[0], in[0], device.empty() ? nullptr : &device[0]);
  return {idx, val};
}

TopkTiling default_topk_tiling(const TopkShape& s, const sim::HardwareSpec& hw) {
  TopkTiling t;
  t.chunk = std::min<int64_t>(round_up(std::max<int64_t>(s.cols, 1), 32), 2048);
  const int64_t blocks = ceil_div(s.cols, t.chunk);
  // One split's list through stage 2, in units of one chunk's stage-1 sort and merge.
  const double chunk_work = static_cast<double>(t.chunk * (1 + TopkEmitter::levels(t.chunk)) + s.k + t.chunk);
  t.splits = s.k > kMaxMergeQueue ? 1 : choose_splits(s.rows, blocks, hw.num_aiv, (s.k + 1.0) / chunk_work);
  while (t.splits > 1 && static_cast<int64_t>(TopkStage2::ub_bytes(s.k, t.splits)) > hw.aiv.ub_bytes) --t.splits;
  while (t.chunk > 32 && TopkKernel::ub_bytes(s, t) > hw.aiv.ub_bytes) t.chunk = round_up(t.chunk / 2, 32);
  t.cores = static_cast<int>(std::clamp<int64_t>(s.rows * t.splits, 1, hw.num_aiv));
  return t;
}

TopkTiling parse_topk_tiling(const YamlNode& tiling, TopkTiling t, const TopkShape& s, const sim::HardwareSpec& hw) {
  if (auto x = tiling.get("chunk")) t.chunk = x->as_positive_int();
  if (auto x = tiling.get("splits")) t.splits = static_cast<int>(x->as_positive_int());
  if (auto x = tiling.get("cores")) t.cores = static_cast<int>(x->as_positive_int());
  else t.cores = static_cast<int>(std::clamp<int64_t>(s.rows * t.splits, 1, hw.num_aiv));
  return t;
}

std::unique_ptr<Kernel> make_topk(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  TopkShape s;
  s.rows = w.at("tokens").as_positive_int();
  s.cols = w.at("cols").as_positive_int();
  s.k = w.at("topk").as_positive_int();
  if (auto x = w.get("causal_from")) {
    s.causal_from = x->as_int();
    if (s.causal_from < 0) x->fail("expected an integer >= 0");
  }
  if (s.rows > (int64_t(1) << 24) || s.cols > (int64_t(1) << 26)) w.fail("tokens beyond 2^24 or cols beyond 2^26 do not fit the instruction fields");
  if (s.k > s.cols) w.at("topk").fail(fmt::format("topk {} exceeds the {} columns of a row", s.k, s.cols));
  if (s.k > kMaxTopk) w.at("topk").fail(fmt::format("topk {} exceeds {} (three MrgSort queues)", s.k, kMaxTopk));
  TopkTiling t = default_topk_tiling(s, hw);
  if (tiling) t = parse_topk_tiling(*tiling, t, s, hw);
  return std::make_unique<TopkKernel>(s, t, !tiling.has_value());
}

std::unique_ptr<Kernel> TopkKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const {
  return std::make_unique<TopkKernel>(s_, parse_topk_tiling(tiling, t_, s_, hw), false);
}

}  // namespace npusim::kernels
