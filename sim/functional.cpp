#include "sim/functional.hpp"

#include <cblas.h>
#include <tbb/parallel_for.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <type_traits>

#include "common/errors.hpp"
#include "common/numerics.hpp"

namespace npusim::sim {
namespace {

struct Endpoints {
  Buffer src, dst;
};

Endpoints endpoints(Path p) {
  switch (p) {
    case Path::GmToL1: case Path::GmToL1Nd2Nz: return {Buffer::Gm, Buffer::L1};
    case Path::GmToUb: return {Buffer::Gm, Buffer::Ub};
    case Path::GmToL0A: return {Buffer::Gm, Buffer::L0A};
    case Path::GmToL0B: return {Buffer::Gm, Buffer::L0B};
    case Path::L1ToL0A: return {Buffer::L1, Buffer::L0A};
    case Path::L1ToL0B: return {Buffer::L1, Buffer::L0B};
    case Path::L0CToGm: case Path::L0CToGmNz2Nd: return {Buffer::L0C, Buffer::Gm};
    case Path::L0CToL1: return {Buffer::L0C, Buffer::L1};
    case Path::UbToGm: return {Buffer::Ub, Buffer::Gm};
    case Path::UbToUb: return {Buffer::Ub, Buffer::Ub};
    case Path::L0CToUb: return {Buffer::L0C, Buffer::Ub};
    case Path::UbToL1: return {Buffer::Ub, Buffer::L1};
    default: break;
  }
  throw SimError(fmt::format("functional runs do not model path {} yet", path_name(p)));
}

inline uint32_t round16(uint32_t x) { return (x + 15) / 16 * 16; }

// Byte offset of element (r, c) of a tile.
inline uint64_t elem_offset(const TileRef& t, uint64_t r, uint64_t c, uint64_t cols, int esize) {
  const uint64_t R = r + t.row0, C = c + t.col0;
  switch (t.layout) {
    case TileLayout::Nd: return t.offset + (R * t.ld + C) * esize;
    case TileLayout::NdT: return t.offset + (C * t.ld + R) * esize;
    case TileLayout::Nz: return t.offset + (((C / 16) * t.ld + R) * 16 + C % 16) * esize;
    case TileLayout::Flat: return t.offset + (R * cols + C) * esize;
  }
  return 0;
}

// The byte span a tile touches (for bounds checks and buffer access).
uint64_t tile_end(const TileRef& t, uint32_t rows, uint32_t cols, int esize) {
  if (rows == 0 || cols == 0) return t.offset;
  const uint32_t r = t.layout == TileLayout::Nz ? round16(rows) : rows;
  const uint32_t c = t.layout == TileLayout::Nz ? round16(cols) : cols;
  return std::max({elem_offset(t, r - 1, c - 1, cols, esize), elem_offset(t, r - 1, 0, cols, esize),
                   elem_offset(t, 0, c - 1, cols, esize)}) + esize;
}

// Copies `n` elements of `e` bytes. NZ strips move 16 elements at a time: a constant-size copy the
// compiler inlines, where a variable-size memcpy call per strip row would dominate the run time.
inline void copy_run(uint8_t* dst, const uint8_t* src, uint32_t n, int e) {
  if (n == 16) {
    switch (e) {
      case 1: std::memcpy(dst, src, 16); return;
      case 2: std::memcpy(dst, src, 32); return;
      case 4: std::memcpy(dst, src, 64); return;
      default: break;
    }
  }
  std::memcpy(dst, src, static_cast<size_t>(n) * e);
}

// Work staged at a data-phase start, completed at its end.
struct Staged {
  std::vector<uint8_t> raw;  // copies without a cast: the tile row-major in the source dtype
  std::vector<double> d0, d1;  // casts and vector operands, decoded
  std::vector<float> fa, fb;   // MMAD operands
};

class Replay {
 public:
  Replay(const Program& prog, FunctionalMemory& mem) : prog_(prog), mem_(mem) {}
  void start(const WorkRecord& w, Staged& s);
  void finish(const WorkRecord& w, Staged& s);

 private:
  uint8_t* at(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols) {
    const int e = dtype_bytes(t.dtype);
    return mem_.buffer(unit, b, 0, tile_end(t, rows, cols, e));
  }
  void read_tile(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols, std::vector<uint8_t>& out);
  void write_tile(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols, const uint8_t* in);
  template <typename T>
  void read_values(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols, std::vector<T>& out);
  template <typename T>
  void write_values(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols, const T* in);
  // The structured vector ops (program.hpp, Operands): sorts, reductions, index moves, scans.
  void start_structured(const WorkRecord& w, const Instr& ins, const Operands& o, Staged& s);
  void finish_structured(const WorkRecord& w, const Instr& ins, const Operands& o, Staged& s);
  uint8_t* ub(uint32_t unit, uint64_t offset, uint64_t bytes) {
    return mem_.buffer(unit, Buffer::Ub, offset, offset + bytes);
  }
  void read_indices(const WorkRecord& w, const TileRef& t, uint32_t n, std::vector<double>& out);
  [[noreturn]] void bad_operand(const WorkRecord& w, const std::string& why) const;

  const Program& prog_;
  FunctionalMemory& mem_;
  std::vector<uint8_t> scratch_;  // reused conversion buffer
};

void Replay::read_tile(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols, std::vector<uint8_t>& out) {
  const int e = dtype_bytes(t.dtype);
  const uint8_t* base = at(unit, b, t, rows, cols);
  out.resize(static_cast<size_t>(rows) * cols * e);
  for (uint32_t r = 0; r < rows; ++r) {
    uint8_t* dst = out.data() + static_cast<size_t>(r) * cols * e;
    if (t.layout == TileLayout::NdT) {
      for (uint32_t c = 0; c < cols; ++c) std::memcpy(dst + c * e, base + elem_offset(t, r, c, cols, e), e);
      continue;
    }
    // ND rows are contiguous; NZ rows are contiguous within each 16-column strip.
    for (uint32_t c = 0; c < cols;) {
      uint32_t run = t.layout == TileLayout::Nz ? std::min(cols - c, 16 - (c + t.col0) % 16) : cols - c;
      copy_run(dst + c * e, base + elem_offset(t, r, c, cols, e), run, e);
      c += run;
    }
  }
}

void Replay::write_tile(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols, const uint8_t* in) {
  const int e = dtype_bytes(t.dtype);
  uint8_t* base = at(unit, b, t, rows, cols);
  for (uint32_t r = 0; r < rows; ++r) {
    const uint8_t* src = in + static_cast<size_t>(r) * cols * e;
    if (t.layout == TileLayout::NdT) {
      for (uint32_t c = 0; c < cols; ++c) std::memcpy(base + elem_offset(t, r, c, cols, e), src + c * e, e);
      continue;
    }
    for (uint32_t c = 0; c < cols;) {
      uint32_t run = t.layout == TileLayout::Nz ? std::min(cols - c, 16 - (c + t.col0) % 16) : cols - c;
      copy_run(base + elem_offset(t, r, c, cols, e), src + c * e, run, e);
      c += run;
    }
  }
  if (t.layout == TileLayout::Nz && t.row0 == 0 && t.col0 == 0) {
    // The fractal padding of a whole NZ matrix holds zeros, so a K tail contributes nothing.
    for (uint32_t r = 0; r < round16(rows); ++r)
      for (uint32_t c = (r < rows ? cols : 0); c < round16(cols); ++c)
        std::memset(base + elem_offset(t, r, c, cols, e), 0, e);
  }
}

template <typename T>
void Replay::read_values(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols, std::vector<T>& out) {
  out.resize(static_cast<size_t>(rows) * cols);
  if constexpr (std::is_same_v<T, float>) {
    if (t.dtype == DType::Fp32) {  // fp32 bytes are floats: no conversion
      std::vector<uint8_t>& raw = scratch_;
      read_tile(unit, b, t, rows, cols, raw);
      std::memcpy(out.data(), raw.data(), raw.size());
      return;
    }
  }
  read_tile(unit, b, t, rows, cols, scratch_);
  num::decode_array(number_format(t.dtype), scratch_.data(), out.size(), out.data());
}

template <typename T>
void Replay::write_values(uint32_t unit, Buffer b, const TileRef& t, uint32_t rows, uint32_t cols, const T* in) {
  const size_t n = static_cast<size_t>(rows) * cols;
  scratch_.resize(n * dtype_bytes(t.dtype));
  if constexpr (std::is_same_v<T, float>) {
    if (t.dtype == DType::Fp32) {
      std::memcpy(scratch_.data(), in, n * sizeof(float));
      write_tile(unit, b, t, rows, cols, scratch_.data());
      return;
    }
  }
  num::encode_array(number_format(t.dtype), in, n, scratch_.data());
  write_tile(unit, b, t, rows, cols, scratch_.data());
}

double apply(VecOp op, double a, double b) {
  switch (op) {
    case VecOp::Muls: return a * b;
    case VecOp::Adds: return a + b;
    case VecOp::Maxs: return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b);
    case VecOp::Mins: return std::isnan(a) || std::isnan(b) ? NAN : std::min(a, b);
    case VecOp::Dup: return b;
    case VecOp::Add: return a + b;
    case VecOp::Sub: return a - b;
    case VecOp::Mul: return a * b;
    case VecOp::Div: return a / b;
    case VecOp::Max: return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b);
    case VecOp::Min: return std::isnan(a) || std::isnan(b) ? NAN : std::min(a, b);
    case VecOp::Exp: return std::exp(a);
    case VecOp::Ln: return std::log(a);
    case VecOp::Sqrt: return std::sqrt(a);
    case VecOp::Relu: return std::isnan(a) ? a : std::max(a, 0.0);
    case VecOp::Cast: return a;
    default: break;
  }
  throw SimError(fmt::format("functional runs do not model vector {}", vec_op_name(op)));
}

void Replay::start(const WorkRecord& w, Staged& s) {
  const CoreProgram& cp = prog_.cores[w.unit];
  const Instr& ins = cp.code[w.pc];
  const Operands& o = cp.operands[w.pc];
  switch (ins.op) {
    case Op::Copy: {
      Endpoints ep = endpoints(ins.path);
      if (o.src.dtype == o.dst.dtype && !o.accumulate) read_tile(w.unit, ep.src, o.src, o.rows, o.cols, s.raw);
      else read_values(w.unit, ep.src, o.src, o.rows, o.cols, s.d0);
      break;
    }
    case Op::Mmad:
      if (ins.dtype == DType::Int8) {
        read_values(w.unit, Buffer::L0A, o.src, ins.m, ins.k, s.d0);
        read_values(w.unit, Buffer::L0B, o.src2, ins.k, ins.n, s.d1);
      } else {
        read_values(w.unit, Buffer::L0A, o.src, ins.m, ins.k, s.fa);
        // B stays in its NZ layout: strip j (k x 16) is a row-major matrix with leading dimension 16.
        const uint64_t bytes = static_cast<uint64_t>((ins.n + 15) / 16) * o.src2.ld * 16 * dtype_bytes(o.src2.dtype);
        const uint8_t* raw = mem_.buffer(w.unit, Buffer::L0B, o.src2.offset, o.src2.offset + bytes);
        s.fb.resize(bytes / dtype_bytes(o.src2.dtype));
        num::decode_array(number_format(o.src2.dtype), raw, s.fb.size(), s.fb.data());
      }
      break;
    case Op::Vector:
      if (vec_op_structured(ins.vop)) {
        start_structured(w, ins, o, s);
        break;
      }
      if (vec_op_sources(ins.vop) >= 1) read_values(w.unit, Buffer::Ub, o.src, 1, ins.m, s.d0);
      if (vec_op_sources(ins.vop) == 2) {
        read_values(w.unit, Buffer::Ub, o.src2, 1, ins.m, s.d1);
      } else if (o.scalar_from_src2) {
        read_values(w.unit, Buffer::Ub, o.src2, 1, 1, s.d1);  // the scalar register's value
      } else {
        s.d1.assign(1, o.scalar);
      }
      break;
    default:
      break;
  }
}

void Replay::finish(const WorkRecord& w, Staged& s) {
  const CoreProgram& cp = prog_.cores[w.unit];
  const Instr& ins = cp.code[w.pc];
  const Operands& o = cp.operands[w.pc];
  switch (ins.op) {
    case Op::Copy: {
      Endpoints ep = endpoints(ins.path);
      const uint32_t dst_unit = ins.path == Path::L0CToUb ? mem_.sibling_unit(w.unit, o.sibling)
                                : ins.path == Path::UbToL1  ? mem_.parent_unit(w.unit)
                                                            : w.unit;
      if (o.accumulate) {  // atomic add: read, add, round once, at the write's time
        if (ep.dst != Buffer::Gm) bad_operand(w, "only copies into GM can accumulate (atomic add)");
        read_values(dst_unit, ep.dst, o.dst, o.rows, o.cols, s.d1);
        for (size_t i = 0; i < s.d1.size(); ++i) s.d1[i] += s.d0[i];
        write_values(dst_unit, ep.dst, o.dst, o.rows, o.cols, s.d1.data());
      } else if (o.src.dtype == o.dst.dtype) {
        write_tile(dst_unit, ep.dst, o.dst, o.rows, o.cols, s.raw.data());
      } else {
        write_values(dst_unit, ep.dst, o.dst, o.rows, o.cols, s.d0.data());
      }
      break;
    }
    case Op::Mmad: {
      const int m = ins.m, n = ins.n, k = ins.k;
      if (ins.dtype == DType::Int8) {
        std::vector<double> c(static_cast<size_t>(m) * n, 0.0);
        if (o.accumulate) read_values(w.unit, Buffer::L0C, o.dst, m, n, c);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0, s.d0.data(), k, s.d1.data(), n, 1.0,
                    c.data(), n);
        write_values(w.unit, Buffer::L0C, o.dst, m, n, c.data());
      } else {
        // Accumulate in place, one 16-column strip of the NZ accumulator at a time (ld 16).
        const TileRef& ct = o.dst;
        const uint64_t end = ((static_cast<uint64_t>(ct.col0 + n + 15) / 16) * ct.ld) * 16 * sizeof(float);
        float* acc = reinterpret_cast<float*>(mem_.buffer(w.unit, Buffer::L0C, 0, ct.offset + end) + ct.offset);
        for (int j = 0; j * 16 < n; ++j) {
          const int nj = std::min(16, n - j * 16);
          float* cs = acc + (static_cast<size_t>(ct.col0 / 16 + j) * ct.ld + ct.row0) * 16;
          const float* bs = s.fb.data() + static_cast<size_t>(j) * o.src2.ld * 16;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, nj, k, 1.0f, s.fa.data(), k, bs, 16,
                      o.accumulate ? 1.0f : 0.0f, cs, 16);
        }
      }
      break;
    }
    case Op::Vector: {
      if (vec_op_structured(ins.vop)) {
        finish_structured(w, ins, o, s);
        break;
      }
      const size_t n = ins.m;
      std::vector<double> out(n);
      const num::Format f = number_format(ins.dtype);
      const bool scalar = vec_op_sources(ins.vop) < 2;
      for (size_t i = 0; i < n; ++i) {
        double v = apply(ins.vop, s.d0.empty() ? 0.0 : s.d0[i], scalar ? s.d1[0] : s.d1[i]);
        // The unit computes in the instruction's dtype; a cast rounds once, to the destination.
        out[i] = ins.vop == VecOp::Cast ? v : num::round_to(f, v);
      }
      write_values(w.unit, Buffer::Ub, o.dst, 1, ins.m, out.data());
      break;
    }
    default:
      break;
  }
}

// One sort element as the sort instructions store it.
struct SortPair {
  float key;
  uint32_t index;
};
static_assert(sizeof(SortPair) == kSortPairBytes);

// Descending by key; NaN keys after every other key (-inf included). Equal keys (and -0 / +0) are
// equivalent, so a stable sort keeps them in input order.
inline bool sorts_before(const SortPair& a, const SortPair& b) {
  return !std::isnan(a.key) && (std::isnan(b.key) || a.key > b.key);
}

void Replay::bad_operand(const WorkRecord& w, const std::string& why) const {
  const CoreProgram& cp = prog_.cores[w.unit];
  const Instr& ins = cp.code[w.pc];
  throw SimError(fmt::format("program '{}': {}{} instruction #{} 'vector {} {} x{}': {}", prog_.name,
                             core_kind_name(cp.kind), cp.index, w.pc, vec_op_name(ins.vop), dtype_name(ins.dtype), ins.m,
                             why));
}

void Replay::read_indices(const WorkRecord& w, const TileRef& t, uint32_t n, std::vector<double>& out) {
  if (t.dtype != DType::Int32) bad_operand(w, fmt::format("indices must be int32, found {}", dtype_name(t.dtype)));
  read_values(w.unit, Buffer::Ub, t, 1, n, out);
}

void Replay::start_structured(const WorkRecord& w, const Instr& ins, const Operands& o, Staged& s) {
  const uint32_t m = ins.m;
  switch (ins.vop) {
    case VecOp::ReduceSum: case VecOp::ReduceMax: case VecOp::Histogram: case VecOp::Cumsum:
      read_values(w.unit, Buffer::Ub, o.src, 1, m, s.d0);
      break;
    case VecOp::Sort32:
      // Keys, then indices, as raw words: the index is carried, never interpreted.
      if (o.src.dtype != DType::Fp32 || o.src2.dtype != DType::Int32) bad_operand(w, "sort32 takes fp32 keys and int32 indices");
      s.raw.resize(static_cast<size_t>(m) * kSortPairBytes);
      std::memcpy(s.raw.data(), ub(w.unit, o.src.offset, 4ull * m), 4ull * m);
      std::memcpy(s.raw.data() + 4ull * m, ub(w.unit, o.src2.offset, 4ull * m), 4ull * m);
      break;
    case VecOp::MrgSort: case VecOp::Extract: {
      const uint64_t bytes = static_cast<uint64_t>(m) * kSortPairBytes;
      if (ins.vop == VecOp::MrgSort && o.src.offset < o.dst.offset + bytes && o.dst.offset < o.src.offset + bytes)
        bad_operand(w, "mrgsort source and destination overlap");
      const uint8_t* p = ub(w.unit, o.src.offset, bytes);
      s.raw.assign(p, p + bytes);
      break;
    }
    case VecOp::Gather: case VecOp::Scatter: {
      // A gather reads the whole region its indices may address: its footprint does not depend on data.
      if (o.src.dtype != o.dst.dtype) bad_operand(w, "source and destination dtypes differ (the op moves elements)");
      const uint32_t n = ins.vop == VecOp::Gather && o.cols ? o.cols : m;
      const uint64_t bytes = static_cast<uint64_t>(n) * dtype_bytes(o.src.dtype);
      const uint8_t* p = ub(w.unit, o.src.offset, bytes);
      s.raw.assign(p, p + bytes);
      read_indices(w, o.src2, m, s.d1);
      break;
    }
    default:  // arange reads nothing
      break;
  }
}

void Replay::finish_structured(const WorkRecord& w, const Instr& ins, const Operands& o, Staged& s) {
  const uint32_t m = ins.m;
  const num::Format f = number_format(ins.dtype);
  std::vector<double> out;
  switch (ins.vop) {
    case VecOp::ReduceSum: case VecOp::ReduceMax: {
      const uint32_t seg = o.cols ? o.cols : m;
      if (m % seg) bad_operand(w, fmt::format("{} elements are not a whole number of {}-element segments", m, seg));
      out.resize(m / seg);
      for (uint32_t i = 0; i < m / seg; ++i) {
        const double* x = s.d0.data() + static_cast<size_t>(i) * seg;
        double acc = x[0];
        for (uint32_t j = 1; j < seg; ++j)
          acc = ins.vop == VecOp::ReduceSum ? acc + x[j] : (std::isnan(acc) || std::isnan(x[j]) ? NAN : std::max(acc, x[j]));
        out[i] = num::round_to(f, acc);
      }
      write_values(w.unit, Buffer::Ub, o.dst, 1, static_cast<uint32_t>(out.size()), out.data());
      break;
    }
    case VecOp::Cumsum: {
      out.resize(m);
      double acc = 0;
      for (uint32_t i = 0; i < m; ++i) out[i] = num::round_to(f, acc += s.d0[i]);
      write_values(w.unit, Buffer::Ub, o.dst, 1, m, out.data());
      break;
    }
    case VecOp::Arange:
      out.resize(m);
      for (uint32_t i = 0; i < m; ++i) out[i] = num::round_to(f, o.scalar + i);
      write_values(w.unit, Buffer::Ub, o.dst, 1, m, out.data());
      break;
    case VecOp::Histogram:
      if (o.cols == 0) bad_operand(w, "histogram needs cols > 0 bins");
      out.assign(o.cols, 0.0);
      for (double v : s.d0)
        if (v >= 0 && v < o.cols) out[static_cast<size_t>(v)] += 1;
      write_values(w.unit, Buffer::Ub, o.dst, 1, o.cols, out.data());
      break;
    case VecOp::Sort32: case VecOp::MrgSort: {
      std::vector<SortPair> pairs(m);
      if (ins.vop == VecOp::Sort32) {
        for (uint32_t i = 0; i < m; ++i) {
          std::memcpy(&pairs[i].key, s.raw.data() + 4ull * i, 4);
          std::memcpy(&pairs[i].index, s.raw.data() + 4ull * (m + i), 4);
        }
      } else {
        std::memcpy(pairs.data(), s.raw.data(), s.raw.size());
      }
      // Sort32 sorts blocks of 32; MrgSort chunks of `cols` inside rows of `rows` pairs.
      const uint32_t row = ins.vop == VecOp::Sort32 ? 32 : (o.rows ? o.rows : m);
      const uint32_t chunk = ins.vop == VecOp::Sort32 ? 32 : (o.cols ? o.cols : row);
      for (uint32_t r0 = 0; r0 < m; r0 += row)
        for (uint32_t c0 = r0; c0 < std::min(m, r0 + row); c0 += chunk)
          std::stable_sort(pairs.begin() + c0, pairs.begin() + std::min({m, r0 + row, c0 + chunk}), sorts_before);
      std::memcpy(ub(w.unit, o.dst.offset, static_cast<uint64_t>(m) * kSortPairBytes), pairs.data(),
                  static_cast<size_t>(m) * kSortPairBytes);
      break;
    }
    case VecOp::Extract: {
      if (o.scalar != 0 && o.scalar != 1) bad_operand(w, "extract takes scalar 0 (keys) or 1 (indices)");
      const bool keys = o.scalar == 0;
      if (o.dst.dtype != (keys ? DType::Fp32 : DType::Int32))
        bad_operand(w, fmt::format("extract of {} writes {}, not {}", keys ? "keys" : "indices", keys ? "fp32" : "int32",
                                   dtype_name(o.dst.dtype)));
      uint8_t* dst = ub(w.unit, o.dst.offset, 4ull * m);
      for (uint32_t i = 0; i < m; ++i) std::memcpy(dst + 4ull * i, s.raw.data() + kSortPairBytes * i + (keys ? 0 : 4), 4);
      break;
    }
    case VecOp::Gather: case VecOp::Scatter: {
      const bool gather = ins.vop == VecOp::Gather;
      const int e = dtype_bytes(o.src.dtype);
      const uint32_t region = o.cols ? o.cols : m;
      uint8_t* dst = ub(w.unit, o.dst.offset, static_cast<uint64_t>(gather ? m : region) * e);
      for (uint32_t i = 0; i < m; ++i) {
        const double at = s.d1[i];
        if (!(at >= 0 && at < region))
          bad_operand(w, fmt::format("index {} (element {}) lies outside the {}-element {} region", at, i, region,
                                     gather ? "source" : "destination"));
        const size_t j = static_cast<size_t>(at);
        if (gather) std::memcpy(dst + static_cast<size_t>(i) * e, s.raw.data() + j * e, e);
        else std::memcpy(dst + j * e, s.raw.data() + static_cast<size_t>(i) * e, e);
      }
      break;
    }
    default:
      throw InternalError(fmt::format("vector {} is not a structured op", vec_op_name(ins.vop)));
  }
}

}  // namespace

FunctionalMemory::FunctionalMemory(const HardwareSpec& hw, const Program& prog) : gm_(prog.gm_footprint_bytes, 0) {
  local_.resize(prog.cores.size());
  aiv_unit_.assign(static_cast<size_t>(hw.num_aiv), -1);
  aic_unit_.assign(static_cast<size_t>(hw.num_aic), -1);
  aiv_per_aic_ = hw.aiv_per_aic;
  for (size_t u = 0; u < prog.cores.size(); ++u) {
    core_index_.push_back(prog.cores[u].index);
    if (prog.cores[u].kind == CoreKind::Aiv && prog.cores[u].index < hw.num_aiv)
      aiv_unit_[static_cast<size_t>(prog.cores[u].index)] = static_cast<int>(u);
    if (prog.cores[u].kind == CoreKind::Aic && prog.cores[u].index < hw.num_aic)
      aic_unit_[static_cast<size_t>(prog.cores[u].index)] = static_cast<int>(u);
    auto& b = local_[u];
    if (prog.cores[u].kind == CoreKind::Aic) {
      b[static_cast<int>(Buffer::L1)].assign(hw.aic.l1_bytes, 0);
      b[static_cast<int>(Buffer::L0A)].assign(hw.aic.l0a_bytes, 0);
      b[static_cast<int>(Buffer::L0B)].assign(hw.aic.l0b_bytes, 0);
      b[static_cast<int>(Buffer::L0C)].assign(hw.aic.l0c_bytes, 0);
    } else {
      b[static_cast<int>(Buffer::Ub)].assign(hw.aiv.ub_bytes, 0);
    }
  }
}

uint64_t FunctionalMemory::bytes_needed(const HardwareSpec& hw, const Program& prog) {
  uint64_t n = prog.gm_footprint_bytes;
  for (const auto& c : prog.cores)
    n += c.kind == CoreKind::Aic ? hw.aic.l1_bytes + hw.aic.l0a_bytes + hw.aic.l0b_bytes + hw.aic.l0c_bytes
                                 : hw.aiv.ub_bytes;
  return n;
}

uint32_t FunctionalMemory::sibling_unit(uint32_t aic_unit, int sibling) const {
  const int64_t aiv = int64_t(core_index_[aic_unit]) * aiv_per_aic_ + sibling;
  if (sibling >= aiv_per_aic_ || aiv >= static_cast<int64_t>(aiv_unit_.size()) || aiv_unit_[aiv] < 0)
    throw SimError(fmt::format("functional run: L0C->UB names AIV {} (sibling {} of AIC {}), which is not in the program",
                               aiv, sibling, core_index_[aic_unit]));
  return static_cast<uint32_t>(aiv_unit_[aiv]);
}

uint32_t FunctionalMemory::parent_unit(uint32_t aiv_unit) const {
  const int64_t aic = core_index_[aiv_unit] / std::max(1, aiv_per_aic_);
  if (aic >= static_cast<int64_t>(aic_unit_.size()) || aic_unit_[aic] < 0)
    throw SimError(fmt::format("functional run: UB->L1 of AIV {} names AIC {}, which is not in the program",
                               core_index_[aiv_unit], aic));
  return static_cast<uint32_t>(aic_unit_[aic]);
}

uint8_t* FunctionalMemory::buffer(uint32_t unit, Buffer b, uint64_t offset, uint64_t end) {
  std::vector<uint8_t>& v = b == Buffer::Gm ? gm_ : local_[unit][static_cast<int>(b)];
  static const char* kNames[] = {"GM", "L1", "L0A", "L0B", "L0C", "UB"};
  if (end > v.size())
    throw SimError(fmt::format("functional run: an operand reaches byte {} of {} ({} bytes)", end,
                               kNames[static_cast<int>(b)], v.size()));
  return v.data() + offset;
}

namespace {

// Replays `records` (indices into timed.work) in time order. At equal times writes land before
// reads, except the write of an instruction with no data phase, which follows its own read.
void replay_in_order(const Program& prog, const SimResult& timed, FunctionalMemory& mem,
                     const std::vector<uint32_t>& records) {
  struct Ev {
    double t;
    int phase;  // 0 write, 1 read, 2 write of a zero-length instruction
    uint32_t rec;
    bool is_start;
  };
  std::vector<Ev> evs;
  evs.reserve(records.size() * 2);
  for (uint32_t i : records) {
    const auto& w = timed.work[i];
    evs.push_back({w.start, 1, i, true});
    evs.push_back({w.end, w.end > w.start ? 0 : 2, i, false});
  }
  std::stable_sort(evs.begin(), evs.end(), [](const Ev& a, const Ev& b) {
    return a.t != b.t ? a.t < b.t : a.phase < b.phase;
  });
  Replay replay(prog, mem);
  std::map<uint32_t, Staged> staged;
  for (const auto& e : evs) {
    const WorkRecord& w = timed.work[e.rec];
    if (e.is_start) {
      replay.start(w, staged[e.rec]);
    } else {
      auto it = staged.find(e.rec);
      replay.finish(w, it->second);
      staged.erase(it);
    }
  }
}

// True when some core reads GM bytes that another core writes during the program (or two cores
// write the same bytes): then only the global time order gives the right answer. Otherwise each
// core can be replayed on its own. Writes are taken row by row (tiles of different cores share
// rows); reads by their bounding interval (conservative).
bool cores_share_gm(const Program& prog) {
  // A core that writes another core's buffer (L0C->UB, UB->L1) is ordered only by the global time.
  for (const auto& c : prog.cores)
    for (const Instr& ins : c.code)
      if (ins.op == Op::Copy && (ins.path == Path::L0CToUb || ins.path == Path::UbToL1)) return true;
  struct Span {
    uint64_t begin, end;
    uint32_t unit;
  };
  std::vector<Span> writes, reads;
  for (uint32_t u = 0; u < prog.cores.size(); ++u) {
    const auto& c = prog.cores[u];
    for (size_t i = 0; i < c.code.size(); ++i) {
      const Instr& ins = c.code[i];
      if (ins.op != Op::Copy || !(path_reads_gm(ins.path) || path_writes_gm(ins.path))) continue;
      const Operands& o = c.operands[i];
      const bool write = path_writes_gm(ins.path);
      const TileRef& t = write ? o.dst : o.src;
      const int e = dtype_bytes(t.dtype);
      if (write && t.layout == TileLayout::Nd) {
        for (uint32_t r = 0; r < o.rows; ++r) {
          uint64_t b = elem_offset(t, r, 0, o.cols, e);
          writes.push_back({b, b + static_cast<uint64_t>(o.cols) * e, u});
        }
      } else {
        Span sp{std::min(elem_offset(t, 0, 0, o.cols, e), t.offset), tile_end(t, o.rows, o.cols, e), u};
        (write ? writes : reads).push_back(sp);
      }
    }
  }
  auto by_begin = [](const Span& a, const Span& b) { return a.begin < b.begin; };
  std::sort(writes.begin(), writes.end(), by_begin);
  for (size_t i = 1; i < writes.size(); ++i)
    if (writes[i].begin < writes[i - 1].end && writes[i].unit != writes[i - 1].unit) return true;
  // With no cross-core write overlap, the write spans of each core are disjoint from others'; a
  // read conflicts when it meets a write of another core.
  uint64_t reach = 0;  // running max of write ends, to find writes that started earlier
  std::vector<uint64_t> max_end(writes.size());
  for (size_t i = 0; i < writes.size(); ++i) max_end[i] = reach = std::max(reach, writes[i].end);
  for (const Span& r : reads) {
    // Writes with begin < r.end, scanned back while they may still reach into r.
    size_t hi = std::lower_bound(writes.begin(), writes.end(), Span{r.end, 0, 0}, by_begin) - writes.begin();
    for (size_t i = hi; i-- > 0 && max_end[i] > r.begin;)
      if (writes[i].end > r.begin && writes[i].unit != r.unit) return true;
  }
  return false;
}

}  // namespace

void run_functional(const Program& prog, const SimResult& timed, FunctionalMemory& mem) {
  for (const auto& c : prog.cores)
    if (c.operands.size() != c.code.size()) throw InternalError("run_functional needs a program lowered with operands");
  // One OpenBLAS thread: its threaded kernels change the summation order, and a functional run
  // must give the same bytes whatever ran before it.
  openblas_set_num_threads(1);
  std::vector<std::vector<uint32_t>> per_unit(prog.cores.size());
  for (uint32_t i = 0; i < timed.work.size(); ++i) per_unit[timed.work[i].unit].push_back(i);
  if (cores_share_gm(prog)) {
    std::vector<uint32_t> all(timed.work.size());
    for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
    replay_in_order(prog, timed, mem, all);
    return;
  }
  // Cores touch disjoint GM outputs and private buffers: replay them in parallel, each in its own
  // time order, which gives exactly the bytes of the global order.
  tbb::parallel_for(size_t{0}, per_unit.size(), [&](size_t u) { replay_in_order(prog, timed, mem, per_unit[u]); });
}

}  // namespace npusim::sim
