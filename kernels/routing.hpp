// Token-to-expert routing drawn from a seeded distribution, for MoE kernels whose time depends on
// how many rows each expert receives. Each token picks `topk` distinct experts by weighted draws
// without replacement:
//   uniform     every expert weighs the same;
//   zipf        the expert of rank r (a seeded random order) weighs 1 / r^s;
//   hot_expert  one expert (seeded) gets `hot_fraction` of the first choices, the rest share evenly.
// (Routing computed from real gate outputs belongs to the MoE graph, which runs the gating kernel.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/yaml_reader.hpp"

namespace npusim::kernels {

struct RoutingSpec {
  int64_t experts = 0, tokens = 0, topk = 0;
  std::string distribution = "uniform";
  double s = 1.2;             // zipf exponent
  double hot_fraction = 0.5;  // hot_expert: share of first choices
  uint64_t seed = 1;
};

RoutingSpec parse_routing(const YamlNode& node);

// Expert ids, token-major: tokens x topk, distinct within a token.
std::vector<int32_t> draw_routing(const RoutingSpec& spec);
std::vector<int64_t> tokens_per_expert(const std::vector<int32_t>& ids, int64_t experts);
double imbalance(const std::vector<int64_t>& counts);  // max / mean (1 = perfectly even)

}  // namespace npusim::kernels
