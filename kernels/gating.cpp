#include "kernels/gating.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

#include "common/errors.hpp"
#include "common/numerics.hpp"
#include "kernels/gating_impl.hpp"
#include "kernels/reference/reference.hpp"
#include "kernels/rng.hpp"
#include "kernels/tensor_io.hpp"
#include "kernels/validation.hpp"

namespace npusim::kernels {

using namespace gating_impl;

using sim::DType;
using sim::Path;
using sim::Pipe;
using sim::TileLayout;
using sim::VecOp;

namespace {

// UB buffers of one buffer set, then the per-core constants placed after all sets.
enum SetBuf {
  kLogits, kScores, kKeys, kScratch, kRowMax, kRowSum, kTop, kCols, kIds, kGatherIdx, kHashIds, kGathered, kWeights,
  kSums, kTop2, kTop2Keys, kGroupScores, kGroupScoresPadded, kTopGroups, kGroupIds, kPenalty, kNumSetBufs
};
enum ConstBuf { kOnes, kKeyBase, kColumns, kRowOffsets, kExpertOfColumn, kGroupColumns, kGroupRowOffsets, kZeros, kNumConstBufs };

struct Plan {
  std::array<int64_t, kNumSetBufs> set;      // byte offset in a buffer set; -1 when unused
  std::array<int64_t, kNumConstBufs> cst;    // byte offset in the constant area; -1 when unused
  std::array<int64_t, kNumConstBufs> cst_elems{};
  int64_t set_bytes = 0, const_bytes = 0;
};

Plan make_plan(const GatingShape& s, int64_t R) {
  const Dims d = dims(s);
  const int64_t n = R * d.row, K = s.topk, G = s.groups, Gk = s.topk_groups;
  Plan p;
  p.set.fill(-1), p.cst.fill(-1);
  auto put = [&p](SetBuf b, int64_t bytes) { p.set[b] = p.set_bytes, p.set_bytes += round_up(bytes, 32); };
  auto constant = [&p](ConstBuf b, int64_t elems) {
    p.cst[b] = p.const_bytes, p.cst_elems[b] = elems, p.const_bytes += round_up(elems * 4, 32);
  };
  const bool softmax = scoring(s) && s.score == GateScore::Softmax, renorm = normalizing(s) && s.renormalize;
  if (scoring(s)) put(kLogits, n * 4);
  if (s.stage != GateStage::Normalize) put(kScores, n * 4);
  if (separate_keys(s)) put(kKeys, n * 4);
  // Score temporaries and sort pairs share one area: a tile uses them one after the other.
  int64_t scratch = scoring(s) ? (s.score == GateScore::SqrtSoftplus ? 2 : 1) * n * 4 : 0;
  if (sorting(s)) scratch = std::max(scratch, 2 * n * sim::kSortPairBytes);
  if (scratch) put(kScratch, scratch);
  if (softmax) put(kRowMax, R * 4), put(kRowSum, R * 4);
  if (sorting(s)) put(kTop, R * K * sim::kSortPairBytes);
  if (sorting(s) && !d.col_is_expert) put(kCols, R * K * 4);
  if (selecting(s)) put(kIds, R * K * 4), put(kGatherIdx, R * K * 4);
  if (selecting(s) && s.hash_vocab) put(kHashIds, R * K * 4);
  if (normalizing(s)) put(kGathered, R * K * 4);  // fused: the gather's target; normalize: the input
  if (s.stage != GateStage::Score) put(kWeights, R * K * 4);
  if (renorm) put(kSums, R * 4);
  if (sorting(s) && s.grouped()) {
    if (s.group_select == GroupSelect::Top2Sum) put(kTop2, R * G * 2 * sim::kSortPairBytes), put(kTop2Keys, R * G * 2 * 4);
    put(kGroupScores, R * G * 4);
    if (d.gpad != G) put(kGroupScoresPadded, R * d.gpad * 4);
    put(kTopGroups, R * Gk * sim::kSortPairBytes), put(kGroupIds, R * Gk * 4), put(kPenalty, R * G * 4);
  }
  const int64_t ones = std::max(scoring(s) && s.score == GateScore::Sigmoid ? n : 0, softmax || renorm ? R : 0);
  if (ones) constant(kOnes, ones);
  if (separate_keys(s)) constant(kKeyBase, n);
  if (sorting(s)) constant(kColumns, n);
  if (selecting(s)) constant(kRowOffsets, R * K);
  if (sorting(s) && !d.col_is_expert) constant(kExpertOfColumn, d.row);
  if (sorting(s) && s.grouped()) constant(kGroupColumns, R * d.gpad), constant(kGroupRowOffsets, R * Gk), constant(kZeros, R * Gk);
  return p;
}

sim::TileRef flat(uint64_t off, DType d) { return {off, 0, 0, 0, TileLayout::Flat, d}; }
sim::TileRef nd(uint64_t off, int64_t ld, DType d) { return {off, static_cast<uint32_t>(ld), 0, 0, TileLayout::Nd, d}; }

// The vector and copy idioms of the gate on one core's stream. Offsets are UB bytes; fp32 unless
// a dtype is named.
class Emitter {
 public:
  explicit Emitter(sim::CoreBuilder& b) : b_(b) {}

  // Elementwise over n elements (src2: a binary op's second source), at most 255 repeats a time.
  void ew(VecOp op, uint64_t dst, uint64_t src, int64_t n, double scalar = 0, uint64_t src2 = 0, DType dt = DType::Fp32) {
    const int e = sim::dtype_bytes(dt);
    for (int64_t done = 0; done < n; done += kWordsPerInstr) {
      sim::Operands o;
      o.src = flat(src + done * e, dt), o.src2 = flat(src2 + done * e, dt), o.dst = flat(dst + done * e, dt);
      o.scalar = scalar;
      b_.vec(op, dt, static_cast<uint32_t>(std::min(kWordsPerInstr, n - done)), o);
    }
  }
  void dup(uint64_t dst, int64_t n, double value, DType dt = DType::Fp32) { ew(VecOp::Dup, dst, dst, n, value, 0, dt); }
  // Row r of `rows` rows of `len` elements, op'd with the scalar at scalars + 4 r.
  void per_row(VecOp op, uint64_t dst, uint64_t src, uint64_t scalars, int64_t rows, int64_t len) {
    for (int64_t r = 0; r < rows; ++r) {
      sim::Operands o;
      o.src = flat(src + r * len * 4, DType::Fp32), o.dst = flat(dst + r * len * 4, DType::Fp32);
      o.src2 = flat(scalars + r * 4, DType::Fp32), o.scalar_from_src2 = true;
      b_.vec(op, DType::Fp32, static_cast<uint32_t>(len), o);
    }
  }
  // One value per segment of `seg` elements, `units` segments.
  void reduce(VecOp op, uint64_t dst, uint64_t src, int64_t units, int64_t seg) {
    const int64_t per = std::max<int64_t>(1, kWordsPerInstr / seg);
    for (int64_t u = 0; u < units; u += per) {
      sim::Operands o;
      o.src = flat(src + u * seg * 4, DType::Fp32), o.dst = flat(dst + u * 4, DType::Fp32);
      o.cols = static_cast<uint32_t>(seg);
      b_.vec(op, DType::Fp32, static_cast<uint32_t>(std::min(per, units - u) * seg), o);
    }
  }
  // Sorts `units` runs of `len` keys (len a multiple of 32) descending with their int32 payload:
  // sort32, then merge levels of 4x longer chunks, ping-ponging between p1 and p2. Returns where
  // the sorted pairs are.
  uint64_t sort_runs(uint64_t keys, uint64_t payload, int64_t units, int64_t len, uint64_t p1, uint64_t p2) {
    const int64_t n = units * len;
    for (int64_t done = 0; done < n; done += kPairsPerInstr) {
      sim::Operands o;
      o.src = flat(keys + done * 4, DType::Fp32), o.src2 = flat(payload + done * 4, DType::Int32);
      o.dst = flat(p1 + done * sim::kSortPairBytes, DType::Fp32);
      b_.vec(VecOp::Sort32, DType::Fp32, static_cast<uint32_t>(std::min(kPairsPerInstr, n - done)), o);
    }
    uint64_t cur = p1, other = p2;
    for (int64_t run = 32; run < len; run = std::min(run * 4, len)) {
      const int64_t per = std::max<int64_t>(1, kPairsPerInstr / len);
      for (int64_t u = 0; u < units; u += per) {
        sim::Operands o;
        o.src = flat(cur + u * len * sim::kSortPairBytes, DType::Fp32);
        o.dst = flat(other + u * len * sim::kSortPairBytes, DType::Fp32);
        o.rows = static_cast<uint32_t>(len), o.cols = static_cast<uint32_t>(std::min(run * 4, len));
        b_.vec(VecOp::MrgSort, DType::Fp32, static_cast<uint32_t>(std::min(per, units - u) * len), o);
      }
      std::swap(cur, other);
    }
    return cur;
  }
  // Keys (fp32) or indices (int32) of n pairs.
  void extract(uint64_t dst, uint64_t pairs, int64_t n, bool indices) {
    for (int64_t done = 0; done < n; done += kPairsPerInstr) {
      sim::Operands o;
      o.src = flat(pairs + done * sim::kSortPairBytes, DType::Fp32);
      o.dst = flat(dst + done * 4, indices ? DType::Int32 : DType::Fp32), o.scalar = indices ? 1 : 0;
      b_.vec(VecOp::Extract, DType::Fp32, static_cast<uint32_t>(std::min(kPairsPerInstr, n - done)), o);
    }
  }
  // dst[i] = src[idx[i]] (gather) or dst[idx[i]] = src[i] (scatter) over n elements; the region of
  // `region` elements is the source (gather) or the destination (scatter).
  void indexed(VecOp op, DType dt, uint64_t dst, uint64_t src, int64_t region, uint64_t idx, int64_t n) {
    const bool gather = op == VecOp::Gather;
    for (int64_t done = 0; done < n; done += kWordsPerInstr) {
      sim::Operands o;
      o.src = flat(gather ? src : src + done * 4, dt), o.dst = flat(gather ? dst + done * 4 : dst, dt);
      o.src2 = flat(idx + done * 4, DType::Int32), o.cols = static_cast<uint32_t>(region);
      b_.vec(op, dt, static_cast<uint32_t>(std::min(kWordsPerInstr, n - done)), o);
    }
  }
  void arange(uint64_t dst, int64_t n, double start) {
    sim::Operands o;
    o.dst = flat(dst, DType::Int32), o.scalar = start;
    b_.vec(VecOp::Arange, DType::Int32, static_cast<uint32_t>(n), o);
  }
  // rows x cols 4-byte words, `src_ld` / `dst_ld` words apart: a (strided) UB->UB copy.
  void ub_copy(uint64_t dst, int64_t dst_ld, uint64_t src, int64_t src_ld, int64_t rows, int64_t cols) {
    sim::Operands o;
    o.rows = static_cast<uint32_t>(rows), o.cols = static_cast<uint32_t>(cols);
    o.src = nd(src, src_ld, DType::Fp32), o.dst = nd(dst, dst_ld, DType::Fp32);
    b_.copy(Path::UbToUb, static_cast<uint32_t>(rows * cols * 4), {}, o);
  }
  // Row 0 of a `rows`-row table copied into the others, doubling the filled part each copy.
  void replicate(uint64_t base, int64_t row_words, int64_t rows) {
    for (int64_t filled = 1; filled < rows; filled *= 2) {
      const int64_t cnt = std::min(filled, rows - filled);
      ub_copy(base + filled * row_words * 4, cnt * row_words, base, cnt * row_words, 1, cnt * row_words);
    }
  }
  // GM rows of `cols` contiguous 4-byte elements to or from UB rows `ub_ld` elements apart.
  void gm_to_ub(uint64_t ub, int64_t ub_ld, uint64_t gm, int64_t rows, int64_t cols, DType dt) {
    sim::Operands o;
    o.rows = static_cast<uint32_t>(rows), o.cols = static_cast<uint32_t>(cols);
    o.src = nd(gm, cols, dt), o.dst = nd(ub, ub_ld, dt);
    const auto bytes = static_cast<uint32_t>(rows * cols * 4);
    b_.copy(Path::GmToUb, bytes, sim::GmRegion{gm, 1, bytes, bytes}, o);
  }
  void ub_to_gm(uint64_t gm, uint64_t ub, int64_t ub_ld, int64_t rows, int64_t cols, DType dt) {
    sim::Operands o;
    o.rows = static_cast<uint32_t>(rows), o.cols = static_cast<uint32_t>(cols);
    o.src = nd(ub, ub_ld, dt), o.dst = nd(gm, cols, dt);
    const auto bytes = static_cast<uint32_t>(rows * cols * 4);
    b_.copy(Path::UbToGm, bytes, sim::GmRegion{gm, 1, bytes, bytes}, o);
  }

 private:
  sim::CoreBuilder& b_;
};

// One core's part of the lowering: per-core constants, then per tile the stage's loads, vector
// work and stores.
class GateLowering {
 public:
  GateLowering(const GatingShape& s, const GatingTiling& t, const std::vector<TensorInfo>& ts,
               const std::vector<int32_t>& hash_ids)
      : s_(s), d_(dims(s)), p_(make_plan(s, t.rows_per_tile)), R_(t.rows_per_tile), nb_(t.buffers), ts_(ts),
        hash_ids_(hash_ids) {}

  void core(sim::CoreBuilder& b, int64_t first_tile, int64_t last_tile) const;

 private:
  uint64_t buf(int q, SetBuf k) const { return static_cast<uint64_t>(q) * p_.set_bytes + p_.set[k]; }
  uint64_t cst(ConstBuf k) const { return static_cast<uint64_t>(nb_) * p_.set_bytes + p_.cst[k]; }
  uint64_t gm(std::string_view name) const {
    for (const auto& t : ts_)
      if (t.name == name) return t.addr;
    throw InternalError(fmt::format("gating: no tensor '{}'", name));
  }
  void constants(sim::CoreBuilder& b, Emitter& em) const;
  void scores(Emitter& em, int q, int64_t rows) const;
  void select(Emitter& em, int q, int64_t rows) const;
  void mask_groups(Emitter& em, int q, int64_t rows, uint64_t keys) const;
  void normalize(Emitter& em, int q, int64_t rows) const;

  const GatingShape& s_;
  const Dims d_;
  const Plan p_;
  const int64_t R_;
  const int nb_;
  const std::vector<TensorInfo>& ts_;
  const std::vector<int32_t>& hash_ids_;
};

void GateLowering::constants(sim::CoreBuilder& b, Emitter& em) const {
  const int64_t n = R_ * d_.row, K = s_.topk, G = s_.groups, Gk = s_.topk_groups;
  for (int q = 0; q < nb_; ++q) {
    // MTE2 writes only expert columns, so pads set here stay: -inf logits score 0; loaded scores
    // need finite pads under the key base's -inf.
    if (scoring(s_)) em.dup(buf(q, kLogits), n, -kInf);
    else if (s_.stage == GateStage::Select) em.dup(buf(q, kScores), n, 0.0);
    if (p_.set[kGroupScoresPadded] >= 0) em.dup(buf(q, kGroupScoresPadded), R_ * d_.gpad, -kInf);
  }
  if (p_.cst[kOnes] >= 0) em.dup(cst(kOnes), p_.cst_elems[kOnes], 1.0);
  if (p_.cst[kKeyBase] >= 0) {
    em.dup(cst(kKeyBase), n, -kInf);
    if (s_.bias) {
      b.set_flag(Pipe::V, Pipe::Mte2, 0);
      b.wait_flag(Pipe::V, Pipe::Mte2, 0);
      em.gm_to_ub(cst(kKeyBase), d_.seg_pad, gm("bias"), d_.seg, d_.seg_len, DType::Fp32);
      b.set_flag(Pipe::Mte2, Pipe::V, 0);
      b.wait_flag(Pipe::Mte2, Pipe::V, 0);
    } else {
      for (int64_t g = 0; g < d_.seg; ++g) em.dup(cst(kKeyBase) + g * d_.seg_pad * 4, d_.seg_len, 0.0);
    }
    em.replicate(cst(kKeyBase), d_.row, R_);
  }
  if (p_.cst[kColumns] >= 0) {
    em.arange(cst(kColumns), d_.row, 0);
    em.replicate(cst(kColumns), d_.row, R_);
  }
  if (p_.cst[kRowOffsets] >= 0)
    for (int64_t r = 0; r < R_; ++r) em.dup(cst(kRowOffsets) + r * K * 4, K, static_cast<double>(r * d_.row), DType::Int32);
  if (p_.cst[kExpertOfColumn] >= 0)
    for (int64_t g = 0; g < d_.seg; ++g) em.arange(cst(kExpertOfColumn) + g * d_.seg_pad * 4, d_.seg_len, g * d_.seg_len);
  if (p_.cst[kGroupColumns] >= 0) {
    em.arange(cst(kGroupColumns), d_.gpad, 0);
    em.replicate(cst(kGroupColumns), d_.gpad, R_);
    for (int64_t r = 0; r < R_; ++r) em.dup(cst(kGroupRowOffsets) + r * Gk * 4, Gk, static_cast<double>(r * G), DType::Int32);
    em.dup(cst(kZeros), R_ * Gk, 0.0);
  }
}

void GateLowering::scores(Emitter& em, int q, int64_t rows) const {
  const int64_t n = rows * d_.row;
  const uint64_t x = buf(q, kLogits), s = buf(q, kScores), t1 = buf(q, kScratch), t2 = t1 + R_ * d_.row * 4;
  switch (s_.score) {
    case GateScore::Sigmoid:  // 1 / (1 + exp(-x))
      em.ew(VecOp::Muls, t1, x, n, -1.0);
      em.ew(VecOp::Exp, t1, t1, n);
      em.ew(VecOp::Adds, t1, t1, n, 1.0);
      em.ew(VecOp::Div, s, cst(kOnes), n, 0, t1);
      break;
    case GateScore::SqrtSoftplus:  // sqrt(ln(1 + exp(min(x, 20))) + max(x - 20, 0))
      em.ew(VecOp::Mins, t1, x, n, kSoftplusLinear);
      em.ew(VecOp::Exp, t1, t1, n);
      em.ew(VecOp::Adds, t1, t1, n, 1.0);
      em.ew(VecOp::Ln, t1, t1, n);
      em.ew(VecOp::Adds, t2, x, n, -kSoftplusLinear);
      em.ew(VecOp::Maxs, t2, t2, n, 0.0);
      em.ew(VecOp::Add, t1, t1, n, 0, t2);
      em.ew(VecOp::Sqrt, s, t1, n);
      break;
    case GateScore::Softmax: {  // exp(x - max) * (1 / sum)
      const uint64_t mx = buf(q, kRowMax), sum = buf(q, kRowSum);
      em.reduce(VecOp::ReduceMax, mx, x, rows, d_.row);
      em.ew(VecOp::Muls, mx, mx, rows, -1.0);
      em.per_row(VecOp::Adds, t1, x, mx, rows, d_.row);
      em.ew(VecOp::Exp, t1, t1, n);
      em.reduce(VecOp::ReduceSum, sum, t1, rows, d_.row);
      em.ew(VecOp::Div, sum, cst(kOnes), rows, 0, sum);
      em.per_row(VecOp::Muls, s, t1, sum, rows, d_.row);
      break;
    }
  }
}

void GateLowering::select(Emitter& em, int q, int64_t rows) const {
  const int64_t nk = rows * s_.topk;
  const uint64_t s = buf(q, kScores), ids = buf(q, kIds), gidx = buf(q, kGatherIdx);
  uint64_t cols = ids;  // where the chosen columns are
  if (s_.hash_vocab) {
    em.ub_copy(ids, nk, buf(q, kHashIds), nk, 1, nk);  // the output buffer is V's to write, not MTE2's
  } else {
    uint64_t keys = s;
    if (separate_keys(s_)) {
      keys = buf(q, kKeys);
      em.ew(VecOp::Add, keys, s, rows * d_.row, 0, cst(kKeyBase));
    }
    if (s_.grouped()) mask_groups(em, q, rows, keys);
    const uint64_t p1 = buf(q, kScratch), p2 = p1 + R_ * d_.row * sim::kSortPairBytes;
    const uint64_t sorted = em.sort_runs(keys, cst(kColumns), rows, d_.row, p1, p2);
    em.ub_copy(buf(q, kTop), 2 * s_.topk, sorted, 2 * d_.row, rows, 2 * s_.topk);  // each row's first K pairs
    if (!d_.col_is_expert) cols = buf(q, kCols);
    em.extract(cols, buf(q, kTop), nk, true);
    if (!d_.col_is_expert) em.indexed(VecOp::Gather, DType::Int32, ids, cst(kExpertOfColumn), d_.row, cols, nk);
  }
  em.ew(VecOp::Add, gidx, cols, nk, 0, cst(kRowOffsets), DType::Int32);
  em.indexed(VecOp::Gather, DType::Fp32, buf(q, normalizing(s_) ? kGathered : kWeights), s, rows * d_.row, gidx, nk);
}

void GateLowering::mask_groups(Emitter& em, int q, int64_t rows, uint64_t keys) const {
  const int64_t G = s_.groups, Gk = s_.topk_groups, ng = rows * G;
  const uint64_t gs = buf(q, kGroupScores), p1 = buf(q, kScratch), p2 = p1 + R_ * d_.row * sim::kSortPairBytes;
  const uint64_t padded = p_.set[kGroupScoresPadded] >= 0 ? buf(q, kGroupScoresPadded) : gs;
  if (s_.group_select == GroupSelect::Top2Sum) {
    const uint64_t sorted = em.sort_runs(keys, cst(kColumns), ng, d_.seg_pad, p1, p2);  // each group on its own
    em.ub_copy(buf(q, kTop2), 4, sorted, 2 * d_.seg_pad, ng, 4);                        // its best two pairs
    em.extract(buf(q, kTop2Keys), buf(q, kTop2), 2 * ng, false);
    em.reduce(VecOp::ReduceSum, gs, buf(q, kTop2Keys), ng, 2);
  } else {
    em.reduce(VecOp::ReduceMax, gs, keys, ng, d_.seg_pad);
  }
  if (padded != gs) em.ub_copy(padded, d_.gpad, gs, G, rows, G);
  const uint64_t sorted = em.sort_runs(padded, cst(kGroupColumns), rows, d_.gpad, p1, p2);
  em.ub_copy(buf(q, kTopGroups), 2 * Gk, sorted, 2 * d_.gpad, rows, 2 * Gk);
  const uint64_t chosen = buf(q, kGroupIds), penalty = buf(q, kPenalty);
  em.extract(chosen, buf(q, kTopGroups), rows * Gk, true);
  em.ew(VecOp::Add, chosen, chosen, rows * Gk, 0, cst(kGroupRowOffsets), DType::Int32);
  em.dup(penalty, ng, -kInf);
  em.indexed(VecOp::Scatter, DType::Fp32, penalty, cst(kZeros), ng, chosen, rows * Gk);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < G; ++g) {
      const uint64_t at = keys + (r * d_.row + g * d_.seg_pad) * 4;
      em.per_row(VecOp::Adds, at, at, penalty + (r * G + g) * 4, 1, d_.seg_len);
    }
}

void GateLowering::normalize(Emitter& em, int q, int64_t rows) const {
  const int64_t K = s_.topk;
  const uint64_t w = buf(q, kGathered), out = buf(q, kWeights);
  if (!s_.renormalize) {
    em.ew(VecOp::Muls, out, w, rows * K, s_.route_scale);
    return;
  }
  // route_scale / (sum + eps) per row, then one muls per row.
  const uint64_t sum = buf(q, kSums);
  em.reduce(VecOp::ReduceSum, sum, w, rows, K);
  em.ew(VecOp::Adds, sum, sum, rows, s_.eps);
  em.ew(VecOp::Div, sum, cst(kOnes), rows, 0, sum);
  em.ew(VecOp::Muls, sum, sum, rows, s_.route_scale);
  em.per_row(VecOp::Muls, out, w, sum, rows, K);
}

void GateLowering::core(sim::CoreBuilder& b, int64_t first, int64_t last) const {
  const int64_t E = s_.experts, K = s_.topk;
  Emitter em(b);
  constants(b, em);
  for (int q = 0; q < nb_; ++q) {
    b.set_flag(Pipe::V, Pipe::Mte2, q);
    b.set_flag(Pipe::Mte3, Pipe::V, q);
  }
  for (int64_t t = first; t < last; ++t) {
    const int q = static_cast<int>((t - first) % nb_);
    const int64_t row0 = t * R_, rows = std::min(R_, s_.tokens - row0);
    b.wait_flag(Pipe::V, Pipe::Mte2, q);
    if (scoring(s_)) em.gm_to_ub(buf(q, kLogits), d_.seg_pad, gm("logits") + row0 * E * 4, rows * d_.seg, d_.seg_len, DType::Fp32);
    if (s_.stage == GateStage::Select)
      em.gm_to_ub(buf(q, kScores), d_.seg_pad, gm("scores") + row0 * E * 4, rows * d_.seg, d_.seg_len, DType::Fp32);
    if (s_.stage == GateStage::Normalize) em.gm_to_ub(buf(q, kGathered), K, gm("raw_weights") + row0 * K * 4, rows, K, DType::Fp32);
    if (selecting(s_) && s_.hash_vocab)
      for (int64_t r = 0; r < rows; ++r) {
        b.scalar(1);  // the scalar unit reads input_ids[t] from GM to address the token's table row
        em.gm_to_ub(buf(q, kHashIds) + r * K * 4, K, gm("tid2eid") + hash_ids_[row0 + r] * K * 4, 1, K, DType::Int32);
      }
    b.set_flag(Pipe::Mte2, Pipe::V, q);
    b.wait_flag(Pipe::Mte2, Pipe::V, q);
    b.wait_flag(Pipe::Mte3, Pipe::V, q);
    if (scoring(s_)) scores(em, q, rows);
    if (selecting(s_)) select(em, q, rows);
    if (normalizing(s_)) normalize(em, q, rows);
    b.set_flag(Pipe::V, Pipe::Mte2, q);
    b.set_flag(Pipe::V, Pipe::Mte3, q);
    b.wait_flag(Pipe::V, Pipe::Mte3, q);
    if (s_.stage == GateStage::Score) {
      em.ub_to_gm(gm("scores") + row0 * E * 4, buf(q, kScores), d_.seg_pad, rows * d_.seg, d_.seg_len, DType::Fp32);
    } else {
      const char* weights = s_.stage == GateStage::Select ? "raw_weights" : "weights";
      em.ub_to_gm(gm(weights) + row0 * K * 4, buf(q, kWeights), K, rows, K, DType::Fp32);
      if (selecting(s_)) em.ub_to_gm(gm("ids") + row0 * K * 4, buf(q, kIds), K, rows, K, DType::Int32);
    }
    b.set_flag(Pipe::Mte3, Pipe::V, q);
  }
  for (int q = 0; q < nb_; ++q) {
    b.wait_flag(Pipe::V, Pipe::Mte2, q);
    b.wait_flag(Pipe::Mte3, Pipe::V, q);
  }
}


const char* score_name(GateScore f) {
  return f == GateScore::Sigmoid ? "sigmoid" : f == GateScore::Softmax ? "softmax" : "sqrtsoftplus";
}
const char* stage_name(GateStage st) {
  return st == GateStage::Fused ? "fused" : st == GateStage::Score ? "score" : st == GateStage::Select ? "select" : "normalize";
}

}  // namespace

GatingKernel::GatingKernel(GatingShape s, GatingTiling t, bool is_default) : s_(s), t_(t), default_(is_default) {
  if (s_.hash_vocab && !s_.input_ids.empty()) {
    hash_ids_ = s_.input_ids;
  } else if (s_.hash_vocab) {
    Rng rng(s_.hash_seed);
    hash_ids_.resize(s_.tokens);
    for (auto& id : hash_ids_) id = static_cast<int32_t>(rng.next() % static_cast<uint64_t>(s_.hash_vocab));
  }
}

int64_t GatingKernel::ub_bytes(const GatingShape& s, int64_t rows, int buffers) {
  const Plan p = make_plan(s, rows);
  return buffers * p.set_bytes + p.const_bytes;
}

std::string GatingKernel::name() const {
  std::string n = fmt::format("gating_{}_{}x{}_top{}_{}", stage_name(s_.stage), s_.tokens, s_.experts, s_.topk, score_name(s_.score));
  if (s_.grouped()) n += fmt::format("_g{}k{}", s_.groups, s_.topk_groups);
  if (s_.hash_vocab) n += "_hash";
  return n;
}

nlohmann::json GatingKernel::tiling_json() const {
  return {{"rows_per_tile", t_.rows_per_tile}, {"buffers", t_.buffers}, {"cores", t_.cores}};
}

nlohmann::json GatingKernel::details() const {
  nlohmann::json j = {{"stage", stage_name(s_.stage)}, {"score", score_name(s_.score)}, {"bias", s_.bias},
                      {"renormalize", s_.renormalize}, {"route_scale", s_.route_scale}, {"eps", s_.eps}};
  if (s_.grouped())
    j["groups"] = {{"groups", s_.groups}, {"topk_groups", s_.topk_groups},
                   {"group_select", s_.group_select == GroupSelect::Top2Sum ? "top2sum" : "max"}};
  if (s_.hash_vocab) j["hash"] = {{"vocab", s_.hash_vocab}, {"seed", s_.hash_seed}};
  return {{"gating", j}};
}

std::vector<TensorInfo> GatingKernel::tensors() const {
  const int64_t T = s_.tokens, E = s_.experts, K = s_.topk;
  GmAllocator gm;
  std::vector<TensorInfo> out;
  auto add = [&](const char* name, DType dt, int64_t rows, int64_t cols, bool output) {
    out.push_back({name, dt, rows, cols, TensorLayout::RowMajor, gm.alloc(rows * cols * 4), output});
  };
  if (scoring(s_)) add("logits", DType::Fp32, T, E, false);
  if (s_.stage == GateStage::Select) add("scores", DType::Fp32, T, E, false);
  if (selecting(s_) && s_.bias && !s_.hash_vocab) add("bias", DType::Fp32, 1, E, false);
  if (selecting(s_) && s_.hash_vocab) add("input_ids", DType::Int32, 1, T, false), add("tid2eid", DType::Int32, s_.hash_vocab, K, false);
  if (s_.stage == GateStage::Normalize) add("raw_weights", DType::Fp32, T, K, false);
  if (s_.stage == GateStage::Score) add("scores", DType::Fp32, T, E, true);
  if (s_.stage == GateStage::Select) add("raw_weights", DType::Fp32, T, K, true);
  if (normalizing(s_)) add("weights", DType::Fp32, T, K, true);
  if (selecting(s_)) add("ids", DType::Int32, T, K, true);
  return out;
}

double GatingKernel::flops() const {
  // Score arithmetic per logit, the bias add, and the weights' normalization; sorting is data movement.
  const double per_logit = s_.score == GateScore::Sigmoid ? 4 : s_.score == GateScore::Softmax ? 5 : 8;
  double f = 0;
  if (scoring(s_)) f += per_logit * s_.tokens * s_.experts;
  if (selecting(s_) && s_.bias) f += static_cast<double>(s_.tokens) * s_.experts;
  if (normalizing(s_)) f += (s_.renormalize ? 2.0 : 1.0) * s_.tokens * s_.topk;
  return f;
}

double GatingKernel::compulsory_bytes() const {
  double bytes = 0;
  for (const auto& t : tensors()) bytes += t.name == "tid2eid" ? 4.0 * s_.tokens * s_.topk : 4.0 * t.rows * t.cols;
  return bytes;
}

double GatingKernel::peak_flops_per_cycle(const sim::HardwareSpec& hw) const {
  return hw.aiv.vec_rate[static_cast<int>(VecOp::Add)][static_cast<int>(DType::Fp32)] * hw.num_aiv;
}

double GatingKernel::estimated_instructions() const {
  const Dims d = dims(s_);
  const double R = static_cast<double>(t_.rows_per_tile), levels = std::ceil(std::log(d.row / 32.0) / std::log(4.0));
  double per_tile = 40 + 4 * levels;
  if (scoring(s_) && s_.score == GateScore::Softmax) per_tile += 2 * R;
  if (sorting(s_) && s_.grouped()) per_tile += R * s_.groups + 20 + 2 * levels;
  if (normalizing(s_) && s_.renormalize) per_tile += R;
  if (selecting(s_) && s_.hash_vocab) per_tile += 2 * R;
  const double per_core = 30 + 3 * R + s_.groups;
  return per_core * t_.cores + per_tile * static_cast<double>(ceil_div(s_.tokens, t_.rows_per_tile));
}

Status GatingKernel::can_implement(const sim::HardwareSpec& hw) const {
  // Every (op, dtype) the lowering may emit for this configuration.
  std::vector<std::pair<VecOp, DType>> used{{VecOp::Dup, DType::Fp32}};
  auto use = [&](std::initializer_list<VecOp> ops, DType dt = DType::Fp32) {
    for (VecOp op : ops) used.emplace_back(op, dt);
  };
  if (scoring(s_)) {
    if (s_.score == GateScore::Sigmoid) use({VecOp::Muls, VecOp::Exp, VecOp::Adds, VecOp::Div});
    if (s_.score == GateScore::SqrtSoftplus) use({VecOp::Mins, VecOp::Exp, VecOp::Adds, VecOp::Ln, VecOp::Maxs, VecOp::Add, VecOp::Sqrt});
    if (s_.score == GateScore::Softmax) use({VecOp::ReduceMax, VecOp::Muls, VecOp::Adds, VecOp::Exp, VecOp::ReduceSum, VecOp::Div});
  }
  if (selecting(s_)) use({VecOp::Gather}), use({VecOp::Add, VecOp::Dup}, DType::Int32);
  if (sorting(s_)) use({VecOp::Add, VecOp::Sort32, VecOp::MrgSort, VecOp::Extract}), use({VecOp::Arange}, DType::Int32);
  if (sorting(s_) && !dims(s_).col_is_expert) use({VecOp::Gather}, DType::Int32);
  if (sorting(s_) && s_.grouped()) use({VecOp::ReduceSum, VecOp::ReduceMax, VecOp::Scatter, VecOp::Adds});
  if (normalizing(s_)) use({VecOp::ReduceSum, VecOp::Adds, VecOp::Div, VecOp::Muls});
  for (auto [op, dt] : used)
    if (!(hw.aiv.vec_rate[static_cast<int>(op)][static_cast<int>(dt)] > 0))
      return Status::bad("hardware", fmt::format("{} has no {} vector {}", hw.name, sim::dtype_name(dt), sim::vec_op_name(op)));
  if (!hw.path(Path::UbToUb).available) return Status::bad("hardware", fmt::format("{} has no UB->UB copy", hw.name));
  if (t_.buffers < 1 || t_.buffers > hw.sync.event_ids)
    return Status::bad("tiling.buffers", fmt::format("buffers must be 1..{}, found {}", hw.sync.event_ids, t_.buffers));
  const int64_t ub = ub_bytes(s_, t_.rows_per_tile, t_.buffers);
  if (ub > hw.aiv.ub_bytes)
    return Status::bad("tiling.rows_per_tile", fmt::format("{} buffers x {} rows need {} B of UB, more than its {} B",
                                                           t_.buffers, t_.rows_per_tile, ub, hw.aiv.ub_bytes));
  if (t_.cores < 1 || t_.cores > hw.num_aiv)
    return Status::bad("tiling.cores", fmt::format("cores must be 1..{} AIVs on {}, found {}", hw.num_aiv, hw.name, t_.cores));
  return Status::good();
}

sim::Program GatingKernel::lower(const sim::HardwareSpec&, bool functional) const {
  const auto ts = tensors();
  sim::Program prog;
  prog.name = name();
  prog.gm_footprint_bytes = ts.back().addr + static_cast<uint64_t>(ts.back().rows * ts.back().cols * 4);
  const GateLowering lowering(s_, t_, ts, hash_ids_);
  const int64_t tiles = ceil_div(s_.tokens, t_.rows_per_tile);
  const int cores = static_cast<int>(std::min<int64_t>(t_.cores, tiles));
  for (int c = 0; c < cores; ++c) {
    sim::CoreProgram cp{sim::CoreKind::Aiv, c, {}, {}};
    sim::CoreBuilder b(cp, functional);
    lowering.core(b, tiles * c / cores, tiles * (c + 1) / cores);
    prog.cores.push_back(std::move(cp));
  }
  return prog;
}

// ---- Config ----

GatingTiling default_gating_tiling(const GatingShape& s, const sim::HardwareSpec& hw) {
  GatingTiling t;
  t.rows_per_tile = std::min<int64_t>(64, ceil_div(s.tokens, hw.num_aiv));
  while (t.rows_per_tile > 1 && GatingKernel::ub_bytes(s, t.rows_per_tile, 2) > hw.aiv.ub_bytes) --t.rows_per_tile;
  t.cores = static_cast<int>(std::clamp<int64_t>(ceil_div(s.tokens, t.rows_per_tile), 1, hw.num_aiv));
  return t;
}

GatingTiling parse_gating_tiling(const YamlNode& tiling, GatingTiling t) {
  if (auto r = tiling.get("rows_per_tile")) t.rows_per_tile = r->as_positive_int();
  if (auto bu = tiling.get("buffers")) t.buffers = static_cast<int>(bu->as_positive_int());
  if (auto c = tiling.get("cores")) t.cores = static_cast<int>(c->as_positive_int());
  return t;
}

std::unique_ptr<Kernel> make_gating(const YamlNode& w, const std::optional<YamlNode>& tiling, const sim::HardwareSpec& hw) {
  GatingShape s;
  s.tokens = w.at("tokens").as_positive_int();
  s.experts = w.at("experts").as_positive_int();
  s.topk = w.at("topk").as_positive_int();
  if (s.tokens > (int64_t(1) << 24)) w.at("tokens").fail("more than 2^24 tokens do not fit the instruction fields");
  if (auto x = w.get("score")) {
    const std::string f = x->as_enum({"sigmoid", "softmax", "sqrtsoftplus"});
    s.score = f == "sigmoid" ? GateScore::Sigmoid : f == "softmax" ? GateScore::Softmax : GateScore::SqrtSoftplus;
  }
  if (auto x = w.get("bias")) s.bias = x->as_bool();
  if (auto x = w.get("groups")) s.groups = x->as_positive_int();
  s.topk_groups = s.groups;
  if (auto x = w.get("topk_groups")) s.topk_groups = x->as_positive_int();
  // Without bias the official rule scores a group by its max (KERNELS.md 1.2).
  s.group_select = s.bias ? GroupSelect::Top2Sum : GroupSelect::Max;
  if (auto x = w.get("group_select")) s.group_select = x->as_enum({"top2sum", "max"}) == "top2sum" ? GroupSelect::Top2Sum : GroupSelect::Max;
  if (auto x = w.get("route_scale")) s.route_scale = x->as_positive_double();
  if (auto x = w.get("eps")) {
    s.eps = x->as_double();
    if (!(s.eps >= 0)) x->fail(fmt::format("expected a number >= 0, found {}", s.eps));
  }
  s.renormalize = s.score != GateScore::Softmax;  // softmax weights are not renormalized (KERNELS.md 1.2)
  if (auto x = w.get("renormalize")) s.renormalize = x->as_bool();
  if (auto x = w.get("stage")) {
    const std::string st = x->as_enum({"fused", "score", "select", "normalize"});
    s.stage = st == "fused" ? GateStage::Fused : st == "score" ? GateStage::Score : st == "select" ? GateStage::Select : GateStage::Normalize;
  }
  if (auto h = w.get("hash")) {
    s.hash_vocab = h->at("vocab").as_positive_int();
    if (auto x = h->get("seed")) {
      const int64_t v = x->as_int();
      if (v < 0) x->fail("expected an integer >= 0");
      s.hash_seed = static_cast<uint64_t>(v);
    }
    if (s.groups > 1) w.at("groups").fail("hash routing takes its experts from tid2eid: groups must be 1");
    if (s.bias) w.at("bias").fail("hash routing does not choose, so a bias (used only for choosing) has no effect");
  }
  if (s.topk > s.experts) w.at("topk").fail(fmt::format("topk {} exceeds the {} experts", s.topk, s.experts));
  if (s.experts % s.groups)
    w.at("groups").fail(fmt::format("{} experts do not split into {} equal groups", s.experts, s.groups));
  if (s.topk_groups > s.groups)
    w.at("topk_groups").fail(fmt::format("topk_groups {} exceeds the {} groups", s.topk_groups, s.groups));
  if (s.grouped() && s.topk > s.topk_groups * (s.experts / s.groups))
    w.at("topk").fail(fmt::format("topk {} exceeds the {} experts of {} groups of {}", s.topk,
                                  s.topk_groups * (s.experts / s.groups), s.topk_groups, s.experts / s.groups));
  if (s.grouped() && s.group_select == GroupSelect::Top2Sum && s.experts / s.groups < 2)
    w.at("groups").fail("top2sum group scores need at least 2 experts per group");
  if (dims(s).row > kMaxPaddedRow)
    w.at("experts").fail(fmt::format("a row padded to Sort32 blocks holds {} keys, above the {} MoeGatingTopK handles",
                                     dims(s).row, kMaxPaddedRow));
  GatingTiling t = default_gating_tiling(s, hw);
  if (tiling) t = parse_gating_tiling(*tiling, t);
  return std::make_unique<GatingKernel>(s, t, !tiling.has_value());
}

std::unique_ptr<Kernel> GatingKernel::with_tiling(const YamlNode& tiling, const sim::HardwareSpec&) const {
  return std::make_unique<GatingKernel>(s_, parse_gating_tiling(tiling, t_), false);
}

}  // namespace npusim::kernels
