// The sweep report's point metrics and writers (JSON, CSV, HDF5 for pandas). Its reader, and the
// run report's JSON reader, are in report_reader.cpp.
// Layouts: docs/report-schema.md, "Sweep reports".
#include "reports/sweep_report.hpp"

#include <fmt/format.h>
#include <hdf5.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>

#include "common/errors.hpp"
#include "reports/writers.hpp"

namespace npusim::reports {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

constexpr size_t kNumMetrics = 17;
using MetricValues = std::array<double, kNumMetrics>;

// point_metrics() without the names: the HDF5 writer calls it once per point.
MetricValues metric_values(const RunReport& r) {
  double cycles = 0, kernel_us = 0, flops = 0, hbm_read = 0, hbm_write = 0, gm_read = 0,
         hit_bytes = 0;
  Utilization busy_us;  // utilization x kernel time, summed
  int validated = 0, passed = 0;
  for (const auto& k : r.kernels) {
    cycles += static_cast<double>(k.cycles);
    kernel_us += k.time_us;
    flops += k.flops;
    hbm_read += static_cast<double>(k.bytes.hbm_read);
    hbm_write += static_cast<double>(k.bytes.hbm_write);
    gm_read += static_cast<double>(k.bytes.gm_read);
    hit_bytes += k.bytes.l2_hit_rate * static_cast<double>(k.bytes.gm_read);
    for (const auto& [name, field] : kUtilizationFields)
      busy_us.*field += k.utilization.*field * k.time_us;
    if (k.validation) {
      ++validated;
      passed += k.validation->passed ? 1 : 0;
    }
  }
  // A graph's time includes its launch gaps; its utilization stays over the kernels' own time.
  const double time_us = r.graph ? r.graph->total_us : kernel_us;
  const double critical_us = r.graph ? r.graph->critical_path_us : time_us;
  auto over_time = [&](double v) { return kernel_us > 0 ? v / kernel_us : 0.0; };
  MetricValues m{};
  size_t i = 0;
  m[i++] = cycles;
  m[i++] = time_us;
  m[i++] = critical_us;
  m[i++] = static_cast<double>(r.kernels.size());
  m[i++] = flops;
  m[i++] = time_us > 0 ? flops / (time_us * 1e6) : 0.0;
  for (const auto& [name, field] : kUtilizationFields) m[i++] = over_time(busy_us.*field);
  m[i++] = hbm_read;
  m[i++] = hbm_write;
  m[i++] = gm_read > 0 ? hit_bytes / gm_read : 0.0;
  m[i++] = validated == 0 ? kNaN : (passed == validated ? 1.0 : 0.0);
  return m;
}

// NaN (and infinities) as null, so a report read back compares equal to the one written.
nlohmann::json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

void check_sweep(const SweepReport& s) {
  for (const auto& p : s.points)
    if (p.keys.size() != s.key_columns.size())
      throw std::runtime_error(fmt::format("sweep point '{}' has {} key values for {} key columns",
                                           p.id, p.keys.size(), s.key_columns.size()));
}

// ---- CSV ----

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// ---- HDF5 ----

// The innermost message on HDF5's error stack (e.g. the errno text of a failed open).
std::string h5_error_text() {
  std::string text;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
        if (n == 0 && e->desc) *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &text);
  H5Eclear2(H5E_DEFAULT);
  return text;
}

[[noreturn]] void h5_fail(const char* what) {
  const std::string why = h5_error_text();
  throw std::runtime_error(why.empty() ? fmt::format("HDF5 could not {}", what)
                                       : fmt::format("HDF5 could not {}: {}", what, why));
}

void h5_check(herr_t status, const char* what) {
  if (status < 0) h5_fail(what);
}

// An HDF5 identifier closed on scope exit.
class H5Id {
 public:
  H5Id(hid_t id, herr_t (*close)(hid_t), const char* what) : id_(id), close_(close) {
    if (id_ < 0) h5_fail(what);
  }
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() {
    if (id_ >= 0) close_(id_);
  }
  hid_t get() const { return id_; }
  // Closes now and reports a failure.
  void close(const char* what) {
    const hid_t id = std::exchange(id_, -1);
    h5_check(close_(id), what);
  }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

H5Id utf8_string_type(size_t size) {
  H5Id t(H5Tcopy(H5T_C_S1), H5Tclose, "make a string type");
  h5_check(H5Tset_size(t.get(), size), "size a string type");
  h5_check(H5Tset_cset(t.get(), H5T_CSET_UTF8), "make a UTF-8 string type");
  h5_check(H5Tset_strpad(t.get(), H5T_STR_NULLPAD), "pad a string type");
  return t;
}

// Fixed-length, like the table columns: variable-length strings live in HDF5's global heap, which
// has no checksum, and a damaged one can hang HDF5's reader (report_reader.cpp refuses them).
void write_attribute(hid_t file, const char* name, const std::string& value) {
  H5Id type = utf8_string_type(std::max<size_t>(value.size(), 1));
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose, "make a scalar space");
  H5Id attr(H5Acreate2(file, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
            "create an attribute");
  std::string text = value;
  text.resize(std::max<size_t>(value.size(), 1), '\0');
  h5_check(H5Awrite(attr.get(), type.get(), text.data()), "write an attribute");
}

void write_attribute(hid_t file, const char* name, int value) {
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose, "make a scalar space");
  H5Id attr(H5Acreate2(file, name, H5T_NATIVE_INT, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
            "create an attribute");
  h5_check(H5Awrite(attr.get(), H5T_NATIVE_INT, &value), "write an attribute");
}

// A 1-D table of packed compound rows (int64, float64, fixed-length UTF-8 string columns) built in
// one buffer and written with one H5Dwrite per slab of at most kSlabBytes: no per-row calls, and
// the memory type is the file type, so HDF5 copies without converting.
class Table {
 public:
  enum class Kind { kInt64, kFloat64, kString };
  static constexpr size_t kSlabBytes = size_t{256} << 20;

  size_t column(std::string name, Kind kind, size_t width = 0) {
    if (std::any_of(cols_.begin(), cols_.end(), [&](const Column& c) { return c.name == name; }))
      throw std::runtime_error(fmt::format("two columns named '{}'", name));
    const size_t size = kind == Kind::kString ? std::max<size_t>(width, 1) : 8;
    cols_.push_back({std::move(name), kind, row_size_, size});
    row_size_ += size;
    return cols_.size() - 1;
  }
  void resize(size_t rows) {
    rows_ = rows;
    data_.assign(rows * row_size_, 0);
  }
  void set(size_t row, size_t col, int64_t v) { std::memcpy(at(row, col), &v, sizeof v); }
  void set(size_t row, size_t col, double v) { std::memcpy(at(row, col), &v, sizeof v); }
  void set(size_t row, size_t col, const std::string& v) {
    std::memcpy(at(row, col), v.data(), std::min(v.size(), cols_[col].size));
  }

  void write(hid_t file, const char* name) const {
    H5Id type(H5Tcreate(H5T_COMPOUND, row_size_), H5Tclose, "make a compound type");
    for (const auto& c : cols_) {
      if (c.kind == Kind::kString) {
        H5Id s = utf8_string_type(c.size);
        h5_check(H5Tinsert(type.get(), c.name.c_str(), c.offset, s.get()), "add a string column");
      } else {
        const hid_t t = c.kind == Kind::kInt64 ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE;
        h5_check(H5Tinsert(type.get(), c.name.c_str(), c.offset, t), "add a column");
      }
    }
    const hsize_t dims[1] = {rows_};
    H5Id space(H5Screate_simple(1, dims, nullptr), H5Sclose, "make a dataspace");
    H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "make a dataset property list");
    h5_check(H5Pset_obj_track_times(dcpl.get(), false), "turn off dataset timestamps");
    H5Id set(H5Dcreate2(file, name, type.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
             H5Dclose, "create a dataset");
    const size_t slab = std::max<size_t>(1, kSlabBytes / row_size_);
    for (size_t first = 0; first < rows_; first += slab) {
      const hsize_t start[1] = {first}, count[1] = {std::min(slab, rows_ - first)};
      h5_check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
               "select rows");
      H5Id mem(H5Screate_simple(1, count, nullptr), H5Sclose, "make a dataspace");
      h5_check(H5Dwrite(set.get(), type.get(), mem.get(), space.get(), H5P_DEFAULT,
                        data_.data() + first * row_size_),
               "write rows");
    }
  }

 private:
  struct Column {
    std::string name;
    Kind kind;
    size_t offset, size;
  };
  char* at(size_t row, size_t col) { return data_.data() + row * row_size_ + cols_[col].offset; }

  std::vector<Column> cols_;
  size_t row_size_ = 0, rows_ = 0;
  std::vector<char> data_;
};

template <class F>
size_t longest(const SweepReport& s, F&& text_of) {
  size_t n = 0;
  for (const auto& p : s.points) n = std::max(n, text_of(p));
  return n;
}

void write_points(const SweepReport& s, const std::vector<MetricValues>& metrics, hid_t file) {
  Table t;
  const size_t point = t.column("point", Table::Kind::kInt64);
  const size_t id = t.column("id", Table::Kind::kString,
                             longest(s, [](const SweepPoint& p) { return p.id.size(); }));
  std::vector<size_t> keys;
  for (size_t c = 0; c < s.key_columns.size(); ++c)
    keys.push_back(t.column(s.key_columns[c], Table::Kind::kString,
                            longest(s, [c](const SweepPoint& p) { return p.keys[c].size(); })));
  std::vector<size_t> cols;
  for (const auto& name : point_metric_names())
    cols.push_back(t.column(name, Table::Kind::kFloat64));
  t.resize(s.points.size());
  for (size_t i = 0; i < s.points.size(); ++i) {
    const SweepPoint& p = s.points[i];
    t.set(i, point, static_cast<int64_t>(i));
    t.set(i, id, p.id);
    for (size_t c = 0; c < keys.size(); ++c) t.set(i, keys[c], p.keys[c]);
    for (size_t m = 0; m < kNumMetrics; ++m) t.set(i, cols[m], metrics[i][m]);
  }
  t.write(file, "points");
}

void write_kernels(const SweepReport& s, hid_t file) {
  size_t rows = 0, name_width = 0, op_width = 0;
  for (const auto& p : s.points)
    for (const auto& k : p.report.kernels) {
      ++rows;
      name_width = std::max(name_width, k.name.size());
      op_width = std::max(op_width, k.op.size());
    }
  using K = Table::Kind;
  Table t;
  const size_t point = t.column("point", K::kInt64);
  const size_t id =
      t.column("id", K::kString, longest(s, [](const SweepPoint& p) { return p.id.size(); }));
  const size_t kernel = t.column("kernel", K::kInt64);
  const size_t name = t.column("name", K::kString, name_width);
  const size_t op = t.column("op", K::kString, op_width);
  const size_t cycles = t.column("cycles", K::kInt64);
  const size_t time_us = t.column("time_us", K::kFloat64);
  const size_t flops = t.column("flops", K::kFloat64);
  const size_t tflops = t.column("tflops", K::kFloat64);
  const size_t peak = t.column("peak_fraction", K::kFloat64);
  const size_t instructions = t.column("instructions", K::kInt64);
  const size_t hbm_read = t.column("hbm_read", K::kInt64);
  const size_t hbm_write = t.column("hbm_write", K::kInt64);
  const size_t l2 = t.column("l2_hit_rate", K::kFloat64);
  std::array<size_t, kUtilizationFields.size()> units{};
  for (size_t u = 0; u < kUtilizationFields.size(); ++u)
    units[u] = t.column(kUtilizationFields[u].first, K::kFloat64);
  const size_t passed = t.column("validation_passed", K::kFloat64);
  t.resize(rows);
  size_t row = 0;
  for (size_t i = 0; i < s.points.size(); ++i) {
    const SweepPoint& p = s.points[i];
    for (size_t j = 0; j < p.report.kernels.size(); ++j, ++row) {
      const KernelReport& k = p.report.kernels[j];
      t.set(row, point, static_cast<int64_t>(i));
      t.set(row, id, p.id);
      t.set(row, kernel, static_cast<int64_t>(j));
      t.set(row, name, k.name);
      t.set(row, op, k.op);
      t.set(row, cycles, static_cast<int64_t>(k.cycles));
      t.set(row, time_us, k.time_us);
      t.set(row, flops, k.flops);
      t.set(row, tflops, k.tflops);
      t.set(row, peak, k.peak_fraction);
      t.set(row, instructions, static_cast<int64_t>(k.instructions));
      t.set(row, hbm_read, static_cast<int64_t>(k.bytes.hbm_read));
      t.set(row, hbm_write, static_cast<int64_t>(k.bytes.hbm_write));
      t.set(row, l2, k.bytes.l2_hit_rate);
      for (size_t u = 0; u < kUtilizationFields.size(); ++u)
        t.set(row, units[u], k.utilization.*kUtilizationFields[u].second);
      t.set(row, passed, k.validation ? (k.validation->passed ? 1.0 : 0.0) : kNaN);
    }
  }
  t.write(file, "kernels");
}

void write_units(const SweepReport& s, hid_t file) {
  size_t kernels = 0;
  for (const auto& p : s.points) kernels += p.report.kernels.size();
  Table t;
  const size_t point = t.column("point", Table::Kind::kInt64);
  const size_t kernel = t.column("kernel", Table::Kind::kInt64);
  size_t width = 0;
  for (const auto& [name, field] : kUtilizationFields) width = std::max(width, std::strlen(name));
  const size_t unit = t.column("unit", Table::Kind::kString, width);
  const size_t util = t.column("utilization", Table::Kind::kFloat64);
  t.resize(kernels * kUtilizationFields.size());
  const std::array<std::string, kUtilizationFields.size()> names = [] {
    std::array<std::string, kUtilizationFields.size()> n;
    for (size_t u = 0; u < kUtilizationFields.size(); ++u) n[u] = kUtilizationFields[u].first;
    return n;
  }();
  size_t row = 0;
  for (size_t i = 0; i < s.points.size(); ++i)
    for (size_t j = 0; j < s.points[i].report.kernels.size(); ++j)
      for (size_t u = 0; u < kUtilizationFields.size(); ++u, ++row) {
        t.set(row, point, static_cast<int64_t>(i));
        t.set(row, kernel, static_cast<int64_t>(j));
        t.set(row, unit, names[u]);
        t.set(row, util, s.points[i].report.kernels[j].utilization.*kUtilizationFields[u].second);
      }
  t.write(file, "units");
}

// Bob Jenkins' lookup3 hash ("hashlittle", public domain) over bytes: HDF5's metadata checksum
// (H5_checksum_lookup3 with seed 0).
uint32_t lookup3(const unsigned char* k, size_t length) {
  auto rot = [](uint32_t x, int n) { return (x << n) | (x >> (32 - n)); };
  uint32_t a = 0xdeadbeef + static_cast<uint32_t>(length), b = a, c = a;
  auto word = [&k](size_t i) {
    return uint32_t{k[i]} | uint32_t{k[i + 1]} << 8 | uint32_t{k[i + 2]} << 16 |
           uint32_t{k[i + 3]} << 24;
  };
  for (; length > 12; length -= 12, k += 12) {
    a += word(0), b += word(4), c += word(8);
    a -= c, a ^= rot(c, 4), c += b;
    b -= a, b ^= rot(a, 6), a += c;
    c -= b, c ^= rot(b, 8), b += a;
    a -= c, a ^= rot(c, 16), c += b;
    b -= a, b ^= rot(a, 19), a += c;
    c -= b, c ^= rot(b, 4), b += a;
  }
  if (length == 0) return c;
  uint32_t last[3] = {0, 0, 0};  // the 1..12 bytes left, little-endian, zero-padded
  for (size_t i = 0; i < length; ++i) last[i / 4] += uint32_t{k[i]} << (8 * (i % 4));
  a += last[0], b += last[1], c += last[2];
  c ^= b, c -= rot(b, 14);
  a ^= c, a -= rot(c, 11);
  b ^= a, b -= rot(a, 25);
  c ^= b, c -= rot(b, 16);
  a ^= c, a -= rot(c, 4);
  b ^= a, b -= rot(a, 14);
  c ^= b, c -= rot(b, 24);
  return c;
}

// HDF5 1.10's H5Fget_file_image copies a version 2 or 3 superblock (the checksummed formats) with
// the checksum it had while the file was open, not the one the closed file gets: HDF5 then refuses
// the image ("incorrect metadata checksum"). Recomputing it makes the image the very bytes the
// library writes to disk when it closes the file (checked against HDF5's own output).
void repair_superblock_checksum(std::string& image) {
  const auto* p = reinterpret_cast<const unsigned char*>(image.data());
  if (image.size() < 12 || p[8] < 2) return;     // version 0 and 1 superblocks have no checksum
  const size_t covered = 12 + 4 * size_t{p[9]};  // signature, versions and sizes, 4 addresses
  if (image.size() < covered + 4) return;
  const uint32_t sum = lookup3(p, covered);
  for (int i = 0; i < 4; ++i) image[covered + i] = static_cast<char>(sum >> (8 * i));
}

// The report as the bytes of an HDF5 file, built in memory (the core driver, no backing store):
// the file itself is then written like any other report, so a full disk or an unwritable folder
// fails in write_file_atomic with the system's reason, never halfway through HDF5's own I/O (whose
// failed close leaves the library holding a broken file). `name` only labels the in-memory file.
std::string hdf5_image(const SweepReport& s, const std::string& name) {
  std::vector<MetricValues> metrics;
  metrics.reserve(s.points.size());
  for (const auto& p : s.points) metrics.push_back(metric_values(p.report));
  for (const auto& c : s.key_columns)
    if (c.find(',') != std::string::npos)
      throw std::runtime_error(
          fmt::format("key column '{}' has a comma (the key_columns attribute is "
                      "comma-separated)",
                      c));

  // No object timestamps (HDF5 stamps every object header with the time by default): the same
  // report gives the same bytes, whenever and wherever (single process, --jobs, MPI) it is written.
  H5Id fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose, "make a file creation property list");
  h5_check(H5Pset_obj_track_times(fcpl.get(), false), "turn off group timestamps");
  H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "make a file access property list");
  h5_check(H5Pset_fapl_core(fapl.get(), size_t{1} << 20, false), "build the file in memory");
  // The newest file format: superblock and object headers carry checksums, so the reader can leave
  // a damaged file to HDF5's checksum test instead of to its parser (report_reader.cpp).
  h5_check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_LATEST, H5F_LIBVER_LATEST),
           "pick the checksummed file format");
  H5Id f(H5Fcreate(name.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), H5Fclose,
         "create the file");
  write_attribute(f.get(), "schema_version", kSchemaVersion);
  write_attribute(f.get(), "kind", std::string("sweep"));
  write_attribute(f.get(), "tool_version", s.tool_version);
  write_attribute(f.get(), "git_revision", s.git_revision);
  write_attribute(f.get(), "command_line", s.command_line);
  write_attribute(f.get(), "sweep_yaml", s.sweep_yaml);
  std::string keys;
  for (size_t c = 0; c < s.key_columns.size(); ++c) keys += (c ? "," : "") + s.key_columns[c];
  write_attribute(f.get(), "key_columns", keys);
  write_points(s, metrics, f.get());
  write_kernels(s, f.get());
  write_units(s, f.get());
  // Every object is closed; the flush puts the metadata cache into the image (without it
  // H5Fget_file_image returns a file HDF5 cannot open).
  h5_check(H5Fflush(f.get(), H5F_SCOPE_GLOBAL), "flush the file");
  const ssize_t size = H5Fget_file_image(f.get(), nullptr, 0);
  if (size < 0) h5_fail("size the file image");
  std::string image(static_cast<size_t>(size), '\0');
  if (H5Fget_file_image(f.get(), image.data(), image.size()) != size)
    h5_fail("copy the file image");
  f.close("close the file");
  repair_superblock_checksum(image);
  return image;
}

}  // namespace

const std::vector<std::string>& point_metric_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n = {"cycles",  "time_us", "critical_path_us",
                                  "kernels", "flops",   "tflops"};
    for (const auto& [name, field] : kUtilizationFields) n.push_back(name);
    for (const char* m : {"hbm_read_bytes", "hbm_write_bytes", "l2_hit_rate", "validation_passed"})
      n.push_back(m);
    return n;
  }();
  return names;
}

std::vector<std::pair<std::string, double>> point_metrics(const RunReport& r) {
  const MetricValues v = metric_values(r);
  const auto& names = point_metric_names();
  static_assert(kNumMetrics == 17);
  std::vector<std::pair<std::string, double>> out;
  out.reserve(kNumMetrics);
  for (size_t i = 0; i < kNumMetrics; ++i) out.emplace_back(names[i], v[i]);
  return out;
}

nlohmann::json to_json(const SweepReport& s) {
  check_sweep(s);
  nlohmann::json points = nlohmann::json::array();
  for (const auto& p : s.points) {
    nlohmann::json keys = nlohmann::json::object(), metrics = nlohmann::json::object();
    for (size_t c = 0; c < s.key_columns.size(); ++c) keys[s.key_columns[c]] = p.keys[c];
    for (const auto& [name, value] : point_metrics(p.report)) metrics[name] = number_or_null(value);
    points.push_back(
        {{"id", p.id}, {"keys", keys}, {"metrics", metrics}, {"report", to_json(p.report)}});
  }
  return {{"schema_version", kSchemaVersion}, {"kind", "sweep"},
          {"tool_version", s.tool_version},   {"git_revision", s.git_revision},
          {"command_line", s.command_line},   {"sweep_yaml", s.sweep_yaml},
          {"key_columns", s.key_columns},     {"points", points}};
}

std::string to_csv(const SweepReport& s) {
  check_sweep(s);
  std::string out = "id";
  auto add_field = [&out](const std::string& text) {
    out += ',';
    out += csv_field(text);
  };
  for (const auto& c : s.key_columns) add_field(c);
  for (const auto& m : point_metric_names()) add_field(m);
  out += '\n';
  for (const auto& p : s.points) {
    out += csv_field(p.id);
    for (const auto& k : p.keys) add_field(k);
    for (double v : metric_values(p.report)) {
      out += ',';
      if (!std::isnan(v)) fmt::format_to(std::back_inserter(out), "{}", v);
    }
    out += '\n';
  }
  return out;
}

void write_hdf5(const SweepReport& s, const std::string& path) {
  check_sweep(s);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors become exceptions, not stderr dumps
  std::string image;
  try {
    image = hdf5_image(s, path);
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("cannot write '{}': {}", path, e.what()));
  }
  write_file_atomic(path, image);
}

}  // namespace npusim::reports
