#include "kernels/routing.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/rng.hpp"

namespace npusim::kernels {

RoutingSpec parse_routing(const YamlNode& n) {
  RoutingSpec r;
  r.experts = n.at("experts").as_positive_int();
  r.tokens = n.at("tokens").as_positive_int();
  YamlNode k = n.at("topk");
  r.topk = k.as_positive_int();
  if (r.topk > r.experts) k.fail(fmt::format("top-k {} is larger than the {} experts available", r.topk, r.experts));
  if (r.experts > 65536) n.at("experts").fail("at most 65536 experts are supported");
  if (r.tokens * r.topk > (int64_t(1) << 31)) n.at("tokens").fail("tokens x topk must stay below 2^31 rows");
  if (auto d = n.get("distribution")) r.distribution = d->as_enum({"uniform", "zipf", "hot_expert"});
  if (auto s = n.get("s")) {
    r.s = s->as_positive_double();
    if (r.distribution != "zipf") s->fail("'s' applies to distribution: zipf only");
  }
  if (auto h = n.get("hot_fraction")) {
    r.hot_fraction = h->as_fraction();
    if (r.distribution != "hot_expert") h->fail("'hot_fraction' applies to distribution: hot_expert only");
  }
  if (auto seed = n.get("seed")) {
    int64_t v = seed->as_int();
    if (v < 0) seed->fail("expected an integer >= 0");
    r.seed = static_cast<uint64_t>(v);
  }
  return r;
}

std::vector<int32_t> draw_routing(const RoutingSpec& spec) {
  Rng rng(spec.seed * 0x9E3779B97F4A7C15ull + 0x5EED);
  const int64_t E = spec.experts;
  std::vector<double> weight(static_cast<size_t>(E), 1.0);
  // A seeded order of the experts gives zipf ranks and picks the hot expert.
  std::vector<int64_t> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = E - 1; i > 0; --i) std::swap(order[i], order[rng.next() % static_cast<uint64_t>(i + 1)]);
  if (spec.distribution == "zipf") {
    for (int64_t r = 0; r < E; ++r) weight[order[r]] = 1.0 / std::pow(static_cast<double>(r + 1), spec.s);
  } else if (spec.distribution == "hot_expert") {
    const double f = spec.hot_fraction;
    weight[order[0]] = f >= 1.0 ? INFINITY : f * static_cast<double>(E - 1) / (1.0 - f);
  }
  std::vector<int32_t> ids(static_cast<size_t>(spec.tokens * spec.topk));
  std::vector<double> w(weight.size());
  for (int64_t t = 0; t < spec.tokens; ++t) {
    w = weight;
    for (int64_t j = 0; j < spec.topk; ++j) {
      int64_t pick = -1;
      if (std::isinf(w[order[0]])) {
        pick = order[0];  // every token's first choice goes to the hot expert
      } else {
        double total = std::accumulate(w.begin(), w.end(), 0.0), x = rng.uniform01() * total;
        for (int64_t e = 0; e < E; ++e) {
          if (w[e] <= 0) continue;
          pick = e;
          if ((x -= w[e]) < 0) break;
        }
      }
      ids[static_cast<size_t>(t * spec.topk + j)] = static_cast<int32_t>(pick);
      w[pick] = 0;  // distinct experts within a token
    }
  }
  return ids;
}

std::vector<int64_t> tokens_per_expert(const std::vector<int32_t>& ids, int64_t experts) {
  std::vector<int64_t> c(static_cast<size_t>(experts), 0);
  for (int32_t e : ids) ++c[static_cast<size_t>(e)];
  return c;
}

double imbalance(const std::vector<int64_t>& counts) {
  if (counts.empty()) return 0;
  const double total = std::accumulate(counts.begin(), counts.end(), 0.0);
  if (total == 0) return 0;
  return static_cast<double>(*std::max_element(counts.begin(), counts.end())) / (total / counts.size());
}

}  // namespace npusim::kernels
