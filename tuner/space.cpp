#include "tuner/space.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "common/errors.hpp"
#include "common/text.hpp"

namespace npusim::tuner {

Pin parse_pin(const std::string& arg) {
  const auto eq = arg.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size())
    throw ConfigError(SourceLoc{"--pin " + arg, 0, 0, ""}, "expected --pin name=value");
  try {
    size_t used = 0;
    const std::string text = arg.substr(eq + 1);
    int64_t v = std::stoll(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return {arg.substr(0, eq), v};
  } catch (const std::exception&) {
    throw ConfigError(SourceLoc{"--pin " + arg, 0, 0, arg.substr(0, eq)}, "expected an integer value");
  }
}

ValidPoints::ValidPoints(const kernels::SearchSpace& space, const std::vector<Pin>& pins) : space_(&space) {
  dims_ = space.params.size();
  for (const auto& p : space.params) domains_.push_back(p.values);
  for (const auto& pin : pins) {
    const int d = space.index_of(pin.name);
    if (d < 0) {
      std::vector<std::string> names;
      for (const auto& p : space.params) names.push_back(p.name);
      throw ConfigError(SourceLoc{"--pin", 0, 0, pin.name},
                        fmt::format("no tiling parameter '{}'{}; this kernel's are: {}", pin.name, did_you_mean(pin.name, names),
                                    join(names)));
    }
    auto& dom = domains_[d];
    if (std::find(dom.begin(), dom.end(), pin.value) == dom.end())
      throw ConfigError(SourceLoc{"--pin", 0, 0, pin.name},
                        fmt::format("{} = {} is outside its domain {}", pin.name, pin.value, fmt::join(dom, ", ")));
    dom = {pin.value};
  }
  if (dims_ == 0) return;
  raw_ = 1;
  for (const auto& d : domains_) raw_ *= static_cast<double>(d.size());

  // Constraints by the depth at which their last parameter is chosen.
  std::vector<std::vector<const kernels::SpaceConstraint*>> at(dims_);
  for (const auto& c : space.constraints) {
    int last = 0;
    for (int p : c.params) last = std::max(last, p);
    at[static_cast<size_t>(last)].push_back(&c);
  }
  // Points below depth d: the product of the remaining domain sizes.
  std::vector<double> below(dims_ + 1, 1);
  for (size_t d = dims_; d-- > 0;) below[d] = below[d + 1] * static_cast<double>(domains_[d].size());

  std::vector<int64_t> point(dims_);
  std::vector<int> idx(dims_, 0);
  size_t depth = 0;
  idx[0] = -1;
  while (true) {
    // Advance the parameter at `depth`; backtrack when its domain is exhausted.
    if (++idx[depth] >= static_cast<int>(domains_[depth].size())) {
      if (depth == 0) break;
      --depth;
      continue;
    }
    point[depth] = domains_[depth][static_cast<size_t>(idx[depth])];
    bool ok = true;
    for (const auto* c : at[depth])
      if (!c->ok(point.data())) {
        pruned_[c->reason] += below[depth + 1];
        ok = false;
        break;
      }
    if (!ok) continue;
    if (depth + 1 == dims_) {
      by_key_.emplace(key(idx.data()), size());
      values_.insert(values_.end(), point.begin(), point.end());
      idx_.insert(idx_.end(), idx.begin(), idx.end());
      continue;
    }
    idx[++depth] = -1;
  }
}

uint64_t ValidPoints::key(const int* domain_indices) const {
  uint64_t k = 0;
  for (size_t d = 0; d < dims_; ++d) k = k * domains_[d].size() + static_cast<uint64_t>(domain_indices[d]);
  return k;
}

int64_t ValidPoints::find(const std::vector<int>& domain_indices) const {
  for (size_t d = 0; d < dims_; ++d)
    if (domain_indices[d] < 0 || domain_indices[d] >= domain_size(d)) return -1;
  auto it = by_key_.find(key(domain_indices.data()));
  return it == by_key_.end() ? -1 : static_cast<int64_t>(it->second);
}

}  // namespace npusim::tuner
