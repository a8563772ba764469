#include "kernels/indices.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "kernels/rng.hpp"

namespace npusim::kernels {

IndexSpec parse_index_spec(const YamlNode& n, const std::vector<std::string>& allowed) {
  IndexSpec s;
  if (auto d = n.get("distribution")) s.distribution = d->as_enum(allowed), s.where = d->loc();
  if (auto t = n.get("tau")) {
    s.recent_tau = t->as_positive_double();
    if (s.distribution != "recent_biased") t->fail("'tau' applies to distribution: recent_biased only");
  }
  if (auto k = n.get("sink_tokens")) {
    const int64_t v = k->as_int();
    if (v < 0) k->fail("expected an integer >= 0");
    if (s.distribution != "recent_biased") k->fail("'sink_tokens' applies to distribution: recent_biased only");
    s.sink_tokens = v;
  }
  if (auto seed = n.get("seed")) {
    const int64_t v = seed->as_int();
    if (v < 0) seed->fail("expected an integer >= 0");
    s.seed = static_cast<uint64_t>(v);
  }
  return s;
}

namespace {

// One draw from the recent-biased weights over v positions, by inverting the weights' integral:
// a sink position with probability sinks / (sinks + tau ln(1 + v / tau)), else a distance d with
// density 1 / (1 + d / tau) on [0, v).
int64_t recent_biased_draw(Rng& rng, int64_t v, double tau, int64_t sinks) {
  const double tail = tau * std::log1p(static_cast<double>(v) / tau);
  const int64_t s = std::min(sinks, v);
  if (s > 0 && rng.uniform01() * (static_cast<double>(s) + tail) < static_cast<double>(s))
    return static_cast<int64_t>(rng.next() % static_cast<uint64_t>(s));
  const double d = tau * std::expm1(rng.uniform01() * tail / tau);
  return v - 1 - std::min<int64_t>(v - 1, static_cast<int64_t>(d));
}

}  // namespace

std::vector<int32_t> draw_indices(const IndexSpec& spec, const std::vector<int64_t>& visible, int64_t k) {
  std::vector<int32_t> out(visible.size() * static_cast<size_t>(k), -1);
  std::unordered_set<int64_t> picked;
  std::vector<int64_t> sorted;
  for (size_t q = 0; q < visible.size(); ++q) {
    // One stream per query: the sets do not depend on how many queries are drawn.
    Rng rng(spec.seed * 0x9E3779B97F4A7C15ull + 0xD1CE * (q + 1));
    const int64_t v = visible[q], n = std::min(k, v);
    sorted.clear();
    if (n == v) {  // everything visible is picked
      for (int64_t p = 0; p < v; ++p) sorted.push_back(p);
    } else if (spec.distribution == "uniform") {
      // Floyd's algorithm: n distinct positions in O(n).
      picked.clear();
      for (int64_t j = v - n; j < v; ++j) {
        const int64_t t = static_cast<int64_t>(rng.next() % static_cast<uint64_t>(j + 1));
        picked.insert(picked.count(t) ? j : t);
      }
      sorted.assign(picked.begin(), picked.end());
    } else {
      // Weighted draws without replacement by rejecting repeats. When more than half of the
      // positions are wanted the repeats would dominate, so the positions left out are drawn
      // instead, uniformly among the older half past the sinks (the least likely ones); the
      // sinks and the newest of the rest make up the set.
      picked.clear();
      if (2 * n <= v) {
        while (static_cast<int64_t>(picked.size()) < n)
          picked.insert(recent_biased_draw(rng, v, spec.recent_tau, spec.sink_tokens));
        sorted.assign(picked.begin(), picked.end());
      } else {
        const int64_t lo = std::min(spec.sink_tokens, n), span = std::max<int64_t>(1, (v - lo) / 2);
        const int64_t skip = std::min(v - n, span);
        while (static_cast<int64_t>(picked.size()) < skip)
          picked.insert(lo + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(span)));
        for (int64_t p = 0; p < lo; ++p) sorted.push_back(p);
        for (int64_t p = v - 1; p >= lo && static_cast<int64_t>(sorted.size()) < n; --p)
          if (!picked.count(p)) sorted.push_back(p);
      }
    }
    std::sort(sorted.begin(), sorted.end());
    for (size_t j = 0; j < sorted.size(); ++j) out[q * static_cast<size_t>(k) + j] = static_cast<int32_t>(sorted[j]);
  }
  return out;
}

}  // namespace npusim::kernels
