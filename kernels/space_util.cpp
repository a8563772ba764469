#include "kernels/space_util.hpp"

#include <algorithm>

namespace npusim::kernels::space {

std::vector<int64_t> ladder(int64_t lo, int64_t hi, int64_t align) {
  std::vector<int64_t> v;
  for (int64_t x = align; x <= hi; x *= 2) {
    if (x >= lo) v.push_back(x);
    const int64_t mid = x + x / 2;
    if (x % 2 == 0 && mid % align == 0 && mid >= lo && mid <= hi) v.push_back(mid);
  }
  if (hi >= lo && hi % align == 0) v.push_back(hi);
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

std::vector<int64_t> with(std::vector<int64_t> values, int64_t x) {
  if (x > 0) values.push_back(x);
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  return values;
}

std::vector<int64_t> core_counts(int64_t hw_cores, int64_t max_work) {
  const int64_t top = std::max<int64_t>(1, std::min(hw_cores, max_work));
  return ladder(std::max<int64_t>(1, top / 8), top);
}

bool within_reach(const std::vector<int64_t>& domain, int64_t v, int64_t need) {
  if (v <= need) return true;
  const auto it = std::lower_bound(domain.begin(), domain.end(), v);
  return it == domain.begin() || *(it - 1) < need;
}

std::function<nlohmann::json(const int64_t*)> tiling_by_name(const SearchSpace& sp) {
  return [params = sp.params](const int64_t* p) {
    nlohmann::json j = nlohmann::json::object();
    for (size_t i = 0; i < params.size(); ++i) {
      const SpaceParam& par = params[i];
      if (par.labels.empty()) {
        j[par.name] = p[i];
      } else {
        const auto at = std::find(par.values.begin(), par.values.end(), p[i]) - par.values.begin();
        j[par.name] = par.labels[static_cast<size_t>(at)];
      }
    }
    return j;
  };
}

}  // namespace npusim::kernels::space
