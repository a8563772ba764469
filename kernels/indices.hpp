// Sparse-attention index sets drawn from a seeded distribution, for timing a sparse attention
// without running its indexer (the attention graph's `indices:`; from_indexer runs the real one).
// Query q sees `visible[q]` cache entries, positions 0 .. visible[q] - 1 (the newest last), and
// picks min(k, visible[q]) distinct ones:
//   uniform        every visible position equally likely;
//   recent_biased  position p at distance d = visible - 1 - p weighs 1 / (1 + d / tau) (a
//                  power law in the distance, tau = recent_tau), and the first `sink_tokens`
//                  positions weigh as much as the newest (attention sinks). An estimate of what
//                  learned indexers pick (many recent entries, a long tail, the first tokens),
//                  not a measured distribution.
// Output per query: the picked positions ascending, then -1 up to k (Ascend SFA's layout: valid
// entries first). The same spec and visibility give the same sets on every platform.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/yaml_reader.hpp"

namespace npusim::kernels {

struct IndexSpec {
  std::string distribution = "recent_biased";  // uniform | recent_biased
  double recent_tau = 128;                     // recent_biased: distance scale of the power law
  int64_t sink_tokens = 4;                     // recent_biased: leading positions weighted as the newest
  uint64_t seed = 1;
  SourceLoc where;  // the config's `distribution` key, for errors about the choice (empty: none given)
};

// Parses {distribution, tau, sink_tokens, seed}; `allowed` lists the distribution names the caller
// accepts (a graph also accepts from_indexer, which it handles itself).
IndexSpec parse_index_spec(const YamlNode& node, const std::vector<std::string>& allowed);

// visible.size() queries x k indices, query-major.
std::vector<int32_t> draw_indices(const IndexSpec& spec, const std::vector<int64_t>& visible, int64_t k);

}  // namespace npusim::kernels
