#include "kernels/tensor_io.hpp"

#include <cmath>

#include "common/numerics.hpp"
#include "kernels/rng.hpp"

namespace npusim::kernels {
namespace {

uint64_t element_index(const TensorInfo& t, int64_t r, int64_t c) {
  switch (t.layout) {
    case TensorLayout::RowMajor: return static_cast<uint64_t>(r * t.cols + c);
    case TensorLayout::ColMajor: return static_cast<uint64_t>(c * t.rows + r);
    case TensorLayout::Nz: {
      const int64_t rows_p = round_up(t.rows, 16);
      return static_cast<uint64_t>(((c / 16) * rows_p + r) * 16 + c % 16);
    }
  }
  return 0;
}

}  // namespace

InputSpec parse_inputs(const std::optional<YamlNode>& node) {
  InputSpec s;
  if (!node) return s;
  if (auto d = node->get("distribution")) s.distribution = d->as_enum({"normal", "uniform", "ones", "ties"});
  if (auto sc = node->get("scale")) s.scale = sc->as_positive_double();
  if (auto seed = node->get("seed")) {
    int64_t v = seed->as_int();
    if (v < 0) seed->fail("expected an integer >= 0");
    s.seed = static_cast<uint64_t>(v);
  }
  return s;
}

std::vector<double> generate_input(const InputSpec& spec, const TensorInfo& t, int index) {
  Rng rng(spec.seed * 0x100000001B3ull + static_cast<uint64_t>(index) + 1);
  const size_t n = static_cast<size_t>(t.rows * t.cols);
  std::vector<double> v(n);
  for (auto& x : v) {
    if (spec.distribution == "normal") x = rng.normal();
    else if (spec.distribution == "uniform") x = 2.0 * rng.uniform01() - 1.0;
    else if (spec.distribution == "ones") x = 1.0;
    else x = static_cast<double>(static_cast<int>(rng.next() % 5) - 2);  // ties: few distinct values
    x = num::round_to(sim::number_format(t.dtype), x * spec.scale);
  }
  return v;
}

std::vector<double> Kernel::make_input(size_t index, const InputSpec& spec) const {
  return generate_input(spec, tensors().at(index), static_cast<int>(index));
}

void write_tensor(std::vector<uint8_t>& gm, const TensorInfo& t, const std::vector<double>& values) {
  const num::Format f = sim::number_format(t.dtype);
  const int e = sim::dtype_bytes(t.dtype);
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t c = 0; c < t.cols; ++c)
      num::encode_array(f, &values[static_cast<size_t>(r * t.cols + c)], 1, gm.data() + t.addr + element_index(t, r, c) * e);
}

std::vector<double> read_tensor(const std::vector<uint8_t>& gm, const TensorInfo& t) {
  const num::Format f = sim::number_format(t.dtype);
  const int e = sim::dtype_bytes(t.dtype);
  std::vector<double> out(static_cast<size_t>(t.rows * t.cols));
  if (t.layout == TensorLayout::RowMajor) {
    num::decode_array(f, gm.data() + t.addr, out.size(), out.data());
    return out;
  }
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t c = 0; c < t.cols; ++c)
      num::decode_array(f, gm.data() + t.addr + element_index(t, r, c) * e, 1, &out[static_cast<size_t>(r * t.cols + c)]);
  return out;
}

}  // namespace npusim::kernels
