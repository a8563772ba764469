// The tiling search space a kernel template declares for the tuner: named integer parameters with
// their domains, constraints over them (buffer capacity, alignment, divisibility) that are checked
// as soon as the parameters they read are chosen, and how a point becomes the template's `tiling:`
// section. A template may add a cheap analytical cost estimate for the tuner's `model` strategy.
// Checking a point here costs nanoseconds; can_implement() on the built kernel stays the final word.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace npusim::kernels {

struct SpaceParam {
  std::string name;             // e.g. "m1"; what --pin name=value refers to
  std::vector<int64_t> values;  // the domain, ascending
  std::vector<std::string> labels;  // enum parameters: the text of each value (else empty)
};

struct SpaceConstraint {
  std::string reason;       // counted per pruned candidate, e.g. "L1 capacity"
  std::vector<int> params;  // indices of the parameters it reads
  std::function<bool(const int64_t* point)> ok;  // point[i] is parameter i's value
};

struct SearchSpace {
  std::vector<SpaceParam> params;
  std::vector<SpaceConstraint> constraints;
  std::function<nlohmann::json(const int64_t* point)> tiling;  // the `tiling:` section of a point
  std::function<double(const int64_t* point)> estimate;        // analytical cycles; may be empty

  int index_of(const std::string& name) const {
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].name == name) return static_cast<int>(i);
    return -1;
  }
  // Adds a parameter and returns its index.
  int add(std::string name, std::vector<int64_t> values, std::vector<std::string> labels = {}) {
    params.push_back({std::move(name), std::move(values), std::move(labels)});
    return static_cast<int>(params.size()) - 1;
  }
  void require(std::string reason, std::vector<int> reads, std::function<bool(const int64_t*)> ok) {
    constraints.push_back({std::move(reason), std::move(reads), std::move(ok)});
  }
};

}  // namespace npusim::kernels
