#include "tuner/strategy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/errors.hpp"
#include "common/text.hpp"

namespace npusim::tuner {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A seeded generator whose draws are the same on every platform (std distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t below(uint64_t n) { return g_() % n; }
  double uniform() { return static_cast<double>(g_() >> 11) * 0x1.0p-53; }

 private:
  std::mt19937_64 g_;
};

// What every strategy needs: the points, the evaluated set, and moves along the domains.
class Base : public Strategy {
 public:
  explicit Base(const StrategyContext& ctx) : ctx_(ctx), pts_(*ctx.points), rng_(ctx.seed) {}

 protected:
  bool taken(size_t i) const { return ctx_.evaluated(i); }
  // A random point not yet evaluated (rejection sampling, then a scan), or -1.
  int64_t random_fresh() {
    const size_t n = pts_.size();
    for (int t = 0; t < 64; ++t) {
      size_t i = rng_.below(n);
      if (!taken(i)) return static_cast<int64_t>(i);
    }
    const size_t start = rng_.below(n);
    for (size_t k = 0; k < n; ++k)
      if (!taken((start + k) % n)) return static_cast<int64_t>((start + k) % n);
    return -1;
  }
  std::vector<int> indices_of(size_t i) const {
    std::vector<int> v(pts_.dims());
    for (size_t d = 0; d < v.size(); ++d) v[d] = pts_.domain_index(i, d);
    return v;
  }
  // A valid, fresh point one or two domain steps from `i` in one or two parameters, or -1.
  int64_t neighbour(size_t i) {
    for (int t = 0; t < 32; ++t) {
      std::vector<int> v = indices_of(i);
      const int moves = 1 + static_cast<int>(rng_.below(2));
      for (int m = 0; m < moves; ++m) {
        const size_t d = rng_.below(pts_.dims());
        const int size = pts_.domain_size(d);
        if (size < 2) continue;
        const int step = 1 + static_cast<int>(rng_.below(2));
        v[d] = std::clamp(v[d] + (rng_.below(2) ? step : -step), 0, size - 1);
      }
      const int64_t j = pts_.find(v);
      if (j >= 0 && !taken(static_cast<size_t>(j))) return j;
    }
    return -1;
  }
  std::vector<size_t> fill_random(std::vector<size_t> out, size_t n) {
    while (out.size() < n) {
      int64_t j = random_fresh();
      if (j < 0 || std::find(out.begin(), out.end(), static_cast<size_t>(j)) != out.end()) break;
      out.push_back(static_cast<size_t>(j));
    }
    return out;
  }

  StrategyContext ctx_;
  const ValidPoints& pts_;
  Rng rng_;
};

// Every point, in enumeration order.
class Exhaustive : public Base {
 public:
  using Base::Base;
  std::vector<size_t> propose(size_t n) override {
    std::vector<size_t> out;
    for (; next_ < pts_.size() && out.size() < n; ++next_)
      if (!taken(next_)) out.push_back(next_);
    return out;
  }
  void observe(size_t, double) override {}

 private:
  size_t next_ = 0;
};

// Uniformly at random without repetition.
class Random : public Base {
 public:
  using Base::Base;
  std::vector<size_t> propose(size_t n) override { return fill_random({}, n); }
  void observe(size_t, double) override {}
};

// Simulated annealing on log cost with a geometric temperature schedule over the budget; a
// batch is a set of neighbours of the current point, taken in proposal order by Metropolis.
class Anneal : public Base {
 public:
  using Base::Base;
  std::vector<size_t> propose(size_t n) override {
    std::vector<size_t> out;
    if (current_ < 0) return fill_random({}, n);
    for (size_t t = 0; out.size() < n && t < 4 * n; ++t) {
      int64_t j = neighbour(static_cast<size_t>(current_));
      if (j >= 0 && std::find(out.begin(), out.end(), static_cast<size_t>(j)) == out.end()) out.push_back(static_cast<size_t>(j));
    }
    return fill_random(std::move(out), n);  // a frozen neighbourhood: jump elsewhere
  }
  void observe(size_t point, double cost) override {
    ++seen_;
    const double c = std::log(cost);
    if (cost < best_cost_) best_cost_ = cost, best_ = static_cast<int64_t>(point), stale_ = 0;
    else ++stale_;
    if (current_ < 0 || c < current_cost_) {
      move(point, c);
      return;
    }
    const double frac = std::min(1.0, static_cast<double>(seen_) / static_cast<double>(std::max<size_t>(ctx_.budget, 1)));
    const double temp = kT0 * std::pow(kT1 / kT0, frac);
    if (std::isfinite(c) && rng_.uniform() < std::exp(-(c - current_cost_) / temp)) move(point, c);
    if (stale_ > 48 && best_ >= 0) move(static_cast<size_t>(best_), std::log(best_cost_)), stale_ = 0;  // restart at the best
  }

 private:
  static constexpr double kT0 = 0.1, kT1 = 0.002;  // 10% worse accepted with p = 1/e at the start
  void move(size_t point, double c) { current_ = static_cast<int64_t>(point), current_cost_ = c; }
  int64_t current_ = -1, best_ = -1;
  double current_cost_ = kInf, best_cost_ = kInf;
  size_t seen_ = 0, stale_ = 0;
};

// An elitist genetic search: tournament selection, uniform crossover over domain indices and a
// one-step mutation; the population keeps the best points seen.
class Genetic : public Base {
 public:
  using Base::Base;
  std::vector<size_t> propose(size_t n) override {
    if (pop_.size() < kPopulation) return fill_random({}, n);
    std::vector<size_t> out;
    for (size_t t = 0; out.size() < n && t < 8 * n; ++t) {
      const size_t a = tournament(), b = tournament();
      std::vector<int> child = indices_of(a), other = indices_of(b);
      for (size_t d = 0; d < child.size(); ++d)
        if (rng_.below(2)) child[d] = other[d];
      for (size_t d = 0; d < child.size(); ++d)
        if (rng_.below(child.size()) == 0 && pts_.domain_size(d) > 1)
          child[d] = std::clamp(child[d] + (rng_.below(2) ? 1 : -1), 0, pts_.domain_size(d) - 1);
      int64_t j = pts_.find(child);
      if (j < 0 || taken(static_cast<size_t>(j))) j = neighbour(a);
      if (j >= 0 && std::find(out.begin(), out.end(), static_cast<size_t>(j)) == out.end()) out.push_back(static_cast<size_t>(j));
    }
    return fill_random(std::move(out), n);
  }
  void observe(size_t point, double cost) override {
    pop_.push_back({cost, point});
    std::stable_sort(pop_.begin(), pop_.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    if (pop_.size() > kPopulation) pop_.resize(kPopulation);
  }

 private:
  static constexpr size_t kPopulation = 16;
  size_t tournament() {
    size_t best = rng_.below(pop_.size());
    for (int k = 0; k < 2; ++k) best = std::min<size_t>(best, rng_.below(pop_.size()));  // sorted: lower is fitter
    return pop_[best].second;
  }
  std::vector<std::pair<double, size_t>> pop_;
};

// Model-guided: the space's analytical estimate screens every point; the simulator evaluates the
// most promising; a nearest-neighbour correction of log(simulated / estimated), fitted on what was
// evaluated, re-ranks the screened pool after every batch. Without an estimate the model is the
// nearest-neighbour average of the evaluated log costs. Each batch is the best-ranked of the pool's
// top points and the neighbours of the best points evaluated; one proposal in eight explores.
class Model : public Base {
 public:
  explicit Model(const StrategyContext& ctx) : Base(ctx) {
    const auto& est = pts_.space().estimate;
    const size_t n = pts_.size();
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    if (est) {
      estimate_.resize(n);
      for (size_t i = 0; i < n; ++i) estimate_[i] = std::log(std::max(1.0, est(pts_.point(i))));
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return estimate_[a] < estimate_[b]; });
    } else {
      for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng_.below(i)]);
    }
    order.resize(std::min(n, kPool));
    pool_ = std::move(order);
    slot_.assign(n, -1);
    for (size_t k = 0; k < pool_.size(); ++k) slot_[pool_[k]] = static_cast<int>(k);
    pool_near_.resize(pool_.size());
    for (auto& near : pool_near_) near.fill({kInf, 0});
    for (size_t d = 0; d < pts_.dims(); ++d) scale_.push_back(1.0 / std::max(1, pts_.domain_size(d) - 1));
  }

  std::vector<size_t> propose(size_t n) override {
    if (!has_estimate() && seen_.size() < kWarmup) return fill_random({}, n);
    // Candidates: the best-predicted fresh points of the screened pool, and every one- and
    // two-step neighbour of the best points evaluated so far; the model ranks them all.
    std::vector<size_t> cand;
    std::vector<char> in(pts_.size(), 0);
    auto add = [&](size_t i) {
      if (!taken(i) && !in[i]) in[i] = 1, cand.push_back(i);
    };
    std::vector<std::pair<double, size_t>> pool;
    for (size_t i : pool_)
      if (!taken(i)) pool.push_back({predict(i), i});
    const size_t top = std::min<size_t>(pool.size(), 64);
    std::partial_sort(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(top), pool.end());
    for (size_t k = 0; k < top; ++k) add(pool[k].second);
    std::vector<std::pair<double, size_t>> best(seen_cost_.begin(), seen_cost_.end());
    std::sort(best.begin(), best.end());
    for (size_t b = 0; b < std::min<size_t>(best.size(), 4); ++b) {
      const std::vector<int> at = indices_of(best[b].second);
      for (size_t d = 0; d < at.size(); ++d)
        for (int step : {-2, -1, 1, 2}) {
          std::vector<int> v = at;
          v[d] += step;
          if (int64_t j = pts_.find(v); j >= 0) add(static_cast<size_t>(j));
        }
    }
    std::vector<std::pair<double, size_t>> ranked;
    for (size_t i : cand) ranked.push_back({predict(i), i});
    std::stable_sort(ranked.begin(), ranked.end());
    std::vector<size_t> out;
    size_t r = 0;
    while (out.size() < n && r < ranked.size()) {
      if (rng_.below(8) == 0) {  // explore
        int64_t j = random_fresh();
        if (j >= 0 && std::find(out.begin(), out.end(), static_cast<size_t>(j)) == out.end()) {
          out.push_back(static_cast<size_t>(j));
          continue;
        }
      }
      out.push_back(ranked[r++].second);
    }
    return fill_random(std::move(out), n);
  }

  void observe(size_t point, double cost) override {
    const double logc = std::isfinite(cost) ? std::log(std::max(1.0, cost)) : kPenalty;
    const double v = has_estimate() ? logc - estimate_[point] : logc;
    seen_.push_back({point, v});
    seen_cost_.push_back({logc, point});
    for (size_t k = 0; k < pool_.size(); ++k) insert(pool_near_[k], distance(pool_[k], point), v);
  }

 private:
  static constexpr size_t kPool = 4096, kWarmup = 16, kNeighbours = 5;
  static constexpr double kPenalty = 60;  // log cost of a failed candidate
  bool has_estimate() const { return !estimate_.empty(); }
  double distance(size_t a, size_t b) const {
    double s = 0;
    for (size_t d = 0; d < pts_.dims(); ++d) {
      const double x = (pts_.domain_index(a, d) - pts_.domain_index(b, d)) * scale_[d];
      s += x * x;
    }
    return s;
  }
  using Near = std::array<std::pair<double, double>, kNeighbours>;  // (distance, value), nearest first
  static void insert(Near& near, double dist, double v) {
    if (dist >= near.back().first) return;
    near.back() = {dist, v};
    for (size_t k = near.size() - 1; k > 0 && near[k].first < near[k - 1].first; --k) std::swap(near[k], near[k - 1]);
  }
  Near nearest(size_t i) const {
    Near near;
    near.fill({kInf, 0});
    for (const auto& [p, v] : seen_) insert(near, distance(i, p), v);
    return near;
  }
  // The estimate plus the inverse-distance-weighted mean of the k nearest evaluated residuals (or,
  // without an estimate, of their log costs). Pool points keep their neighbours up to date as
  // evaluations arrive; other points are computed from scratch.
  double predict(size_t i) const {
    const double base = has_estimate() ? estimate_[i] : 0;
    if (seen_.empty()) return base;
    const Near near = slot_[i] >= 0 ? pool_near_[static_cast<size_t>(slot_[i])] : nearest(i);
    double w = 0, s = 0;
    for (const auto& [dist, v] : near) {
      if (!std::isfinite(dist)) break;
      const double wi = 1.0 / (dist + 1e-3);
      w += wi, s += wi * v;
    }
    return base + s / w;
  }
  std::vector<double> estimate_, scale_;
  std::vector<size_t> pool_;
  std::vector<int> slot_;         // point -> index in pool_, or -1
  std::vector<Near> pool_near_;   // per pool point: its nearest evaluated points
  std::vector<std::pair<size_t, double>> seen_;       // point, residual (or log cost)
  std::vector<std::pair<double, size_t>> seen_cost_;  // log cost, point
};

template <class S>
std::unique_ptr<Strategy> make(const StrategyContext& c) {
  return std::make_unique<S>(c);
}

}  // namespace

const std::vector<StrategyEntry>& strategy_registry() {
  static const std::vector<StrategyEntry> r{
      {"auto", "exhaustive when the budget covers the space, else model", nullptr},
      {"exhaustive", "every valid point in order (the ground truth)", make<Exhaustive>},
      {"random", "uniform sampling without repetition", make<Random>},
      {"anneal", "simulated annealing on log cycles over domain-step neighbours", make<Anneal>},
      {"genetic", "elitist evolution: tournament, uniform crossover, one-step mutation", make<Genetic>},
      {"model", "analytical screen of the whole space; the simulator evaluates the best predicted; "
                "a nearest-neighbour correction learns from each batch", make<Model>},
  };
  return r;
}

void require_known_strategy(const std::string& name) {
  std::vector<std::string> names;
  for (const auto& e : strategy_registry()) {
    if (e.name == name) return;
    names.push_back(e.name);
  }
  throw ConfigError(SourceLoc{"--strategy", 0, 0, "strategy"},
                    fmt::format("unknown strategy '{}'{}; known: {}", name, did_you_mean(name, names), join(names)));
}

std::unique_ptr<Strategy> make_strategy(const std::string& name, const StrategyContext& ctx, std::string* resolved) {
  require_known_strategy(name);
  const std::string pick = name != "auto" ? name : ctx.points->size() <= ctx.budget ? "exhaustive" : "model";
  if (resolved) *resolved = pick;
  for (const auto& e : strategy_registry())
    if (e.name == pick) return e.make(ctx);
  throw InternalError("strategy '" + pick + "' has no implementation");
}

}  // namespace npusim::tuner
