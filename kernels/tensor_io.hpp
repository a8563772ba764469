// Test inputs and GM tensor images for functional runs: seeded input generation (the values are
// rounded to the tensor's dtype, so they are exactly what the device sees), and encoding /
// decoding a tensor to and from its GM layout (row-major, column-major, zN fractal).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/yaml_reader.hpp"
#include "kernels/kernel.hpp"

namespace npusim::kernels {

struct InputSpec {
  std::string distribution = "normal";  // normal | uniform | ones | ties
  double scale = 1.0;
  uint64_t seed = 1;
};

// Parses the optional `inputs:` section of a run config.
InputSpec parse_inputs(const std::optional<YamlNode>& node);

// rows*cols values, row-major, rounded to t.dtype. Tensor `index` gets its own stream of the seed.
std::vector<double> generate_input(const InputSpec& spec, const TensorInfo& t, int index);

void write_tensor(std::vector<uint8_t>& gm, const TensorInfo& t, const std::vector<double>& values);
std::vector<double> read_tensor(const std::vector<uint8_t>& gm, const TensorInfo& t);

}  // namespace npusim::kernels
