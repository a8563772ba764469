// Search strategies, ask/tell style: a strategy proposes batches of valid points (indices into
// ValidPoints) not yet evaluated, and is told each one's cost (simulated cycles; +inf when the
// candidate failed). Every strategy is seeded: the same seed and the same costs give the same
// proposals, whatever the number of threads evaluating them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tuner/space.hpp"

namespace npusim::tuner {

struct StrategyContext {
  const ValidPoints* points;
  uint64_t seed = 1;
  size_t budget = 256;                     // evaluations the run may spend
  std::function<bool(size_t)> evaluated;   // already evaluated (or in flight)
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  // Up to n points not yet evaluated; fewer (or none) when the strategy has nothing left to try.
  virtual std::vector<size_t> propose(size_t n) = 0;
  virtual void observe(size_t point, double cost) = 0;
};

struct StrategyEntry {
  std::string name;
  std::string description;
  std::function<std::unique_ptr<Strategy>(const StrategyContext&)> make;
};
const std::vector<StrategyEntry>& strategy_registry();

// A ConfigError naming the known strategies (and the nearest) unless `name` is one.
void require_known_strategy(const std::string& name);

// Builds the named strategy; an unknown name is a ConfigError listing the known ones. `auto`
// resolves to a concrete strategy, whose name is returned in `resolved`.
std::unique_ptr<Strategy> make_strategy(const std::string& name, const StrategyContext& ctx, std::string* resolved = nullptr);

}  // namespace npusim::tuner
