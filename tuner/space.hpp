// The valid points of a kernel's search space (kernels/search_space.hpp), enumerated depth-first
// with each constraint checked as soon as the parameters it reads are chosen, so a space of 10^8
// raw points with 10^5 valid ones is listed in well under a second. Pruned points are counted by
// the constraint that removed them (a whole subtree at once).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/search_space.hpp"

namespace npusim::tuner {

struct Pin {
  std::string name;
  int64_t value;
};

class ValidPoints {
 public:
  // Throws ConfigError for a pin naming an unknown parameter or a value outside its domain.
  ValidPoints(const kernels::SearchSpace& space, const std::vector<Pin>& pins = {});

  size_t size() const { return dims_ ? values_.size() / dims_ : 0; }
  size_t dims() const { return dims_; }
  const int64_t* point(size_t i) const { return values_.data() + i * dims_; }
  // Domain index of parameter d in point i (strategies move along domains).
  int domain_index(size_t i, size_t d) const { return idx_[i * dims_ + d]; }
  // The valid point with these domain indices, or -1.
  int64_t find(const std::vector<int>& domain_indices) const;

  double raw_size() const { return raw_; }  // product of the (pinned) domain sizes
  const std::map<std::string, double>& pruned() const { return pruned_; }  // points removed per reason
  const kernels::SearchSpace& space() const { return *space_; }
  int domain_size(size_t d) const { return static_cast<int>(domains_[d].size()); }

 private:
  uint64_t key(const int* domain_indices) const;
  const kernels::SearchSpace* space_;
  size_t dims_ = 0;
  std::vector<std::vector<int64_t>> domains_;  // after pins
  std::vector<int64_t> values_;
  std::vector<int> idx_;
  std::unordered_map<uint64_t, size_t> by_key_;
  std::map<std::string, double> pruned_;
  double raw_ = 0;
};

// "name=value" for --pin.
Pin parse_pin(const std::string& arg);

}  // namespace npusim::tuner
