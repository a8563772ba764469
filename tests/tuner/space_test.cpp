// The tiling search spaces of the kernel templates (Kernel::search_space, with_tiling): for each
// template, on a small config, the default tiling lies inside the declared domains, at least 95%
// of the points the constraints accept pass can_implement on the kernel built from them, a point's
// `tiling:` section round-trips through with_tiling (every key consumed, tiling_json reporting the
// values), and candidates lower and simulate. The spaces are enumerated here by brute force (every
// raw point when few, else seeded random descents that check each constraint once its parameters
// are chosen), independently of the tuner's enumerator.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>

#include "app/session.hpp"
#include "common/yaml_reader.hpp"
#include "kernels/kernel.hpp"
#include "sim/engine.hpp"

namespace npusim {
namespace {

using kernels::SearchSpace;
using Point = std::vector<int64_t>;

app::LoadedRun load(const std::string& hw, const std::string& workload) {
  static int n = 0;
  const std::string file = ::testing::TempDir() + "/space_" + std::to_string(::getpid()) + "_" +
                           std::to_string(n++) + ".yaml";
  std::ofstream(file) << "hardware: " << hw << "\nworkload: " << workload << "\n";
  return app::load_run(file);
}

// Where a parameter's value sits in tiling_json(): its own key, or a GEMM tile entry.
const nlohmann::json* value_in(const nlohmann::json& tiling, const std::string& name) {
  static const std::map<std::string, std::pair<std::string, std::string>> gemm = {
      {"m1", {"l1", "0"}},
      {"n1", {"l1", "1"}},
      {"k1", {"l1", "2"}},
      {"m0", {"l0", "0"}},
      {"n0", {"l0", "1"}},
      {"k0", {"l0", "2"}},
      {"swizzle_offset", {"swizzle", "offset"}},
      {"swizzle_direction", {"swizzle", "direction"}}};
  if (auto it = gemm.find(name); it != gemm.end()) {
    if (!tiling.contains(it->second.first)) return nullptr;
    const nlohmann::json& outer = tiling.at(it->second.first);
    return outer.is_array() ? &outer.at(std::stoul(it->second.second))
                            : &outer.at(it->second.second);
  }
  return tiling.contains(name) ? &tiling.at(name) : nullptr;
}

bool in_domain(const kernels::SpaceParam& par, const nlohmann::json& v) {
  if (!par.labels.empty())
    return v.is_string() &&
           std::count(par.labels.begin(), par.labels.end(), v.get<std::string>()) == 1;
  return v.is_number_integer() &&
         std::count(par.values.begin(), par.values.end(), v.get<int64_t>()) == 1;
}

// Constraints by the last parameter they read: checked once the descent has chosen it.
std::vector<std::vector<size_t>> constraints_by_depth(const SearchSpace& sp) {
  std::vector<std::vector<size_t>> at(sp.params.size());
  for (size_t c = 0; c < sp.constraints.size(); ++c) {
    const auto& reads = sp.constraints[c].params;
    const int last = reads.empty() ? 0 : *std::max_element(reads.begin(), reads.end());
    at[static_cast<size_t>(last)].push_back(c);
  }
  return at;
}

bool accepted(const SearchSpace& sp, const Point& p, std::string* why = nullptr) {
  for (const auto& c : sp.constraints)
    if (!c.ok(p.data())) {
      if (why) *why = c.reason;
      return false;
    }
  return true;
}

double raw_size(const SearchSpace& sp) {
  double raw = 1;
  for (const auto& par : sp.params) raw *= static_cast<double>(par.values.size());
  return raw;
}

// A depth-first descent trying each parameter's values in random order: the first valid point.
bool descend(const SearchSpace& sp, const std::vector<std::vector<size_t>>& at, size_t d, Point& p,
             std::mt19937_64& rng) {
  if (d == sp.params.size()) return true;
  std::vector<int64_t> order = sp.params[d].values;
  std::shuffle(order.begin(), order.end(), rng);
  for (int64_t v : order) {
    p[d] = v;
    bool ok = true;
    for (size_t c : at[d]) ok = ok && sp.constraints[c].ok(p.data());
    if (ok && descend(sp, at, d + 1, p, rng)) return true;
  }
  return false;
}

// Every valid point when the raw space is small, else `samples` seeded random valid ones.
std::vector<Point> valid_points(const SearchSpace& sp, size_t samples) {
  std::vector<Point> out;
  std::mt19937_64 rng(20240607);
  if (raw_size(sp) <= 20000) {
    Point p(sp.params.size());
    std::vector<size_t> idx(sp.params.size(), 0);
    while (true) {
      for (size_t d = 0; d < p.size(); ++d) p[d] = sp.params[d].values[idx[d]];
      if (accepted(sp, p)) out.push_back(p);
      size_t d = 0;
      while (d < idx.size() && ++idx[d] == sp.params[d].values.size()) idx[d++] = 0;
      if (d == idx.size()) break;
    }
    if (out.size() > samples) {
      std::shuffle(out.begin(), out.end(), rng);
      out.resize(samples);
    }
    return out;
  }
  const auto at = constraints_by_depth(sp);
  for (size_t i = 0; i < samples; ++i) {
    Point p(sp.params.size());
    if (!descend(sp, at, 0, p, rng)) break;
    out.push_back(p);
  }
  return out;
}

// Valid points, counted depth first with early pruning (stops at `cap`).
double count_valid(const SearchSpace& sp, double cap) {
  const auto at = constraints_by_depth(sp);
  Point p(sp.params.size());
  double n = 0;
  std::function<void(size_t)> walk = [&](size_t d) {
    if (n >= cap) return;
    if (d == p.size()) {
      n += 1;
      return;
    }
    for (int64_t v : sp.params[d].values) {
      p[d] = v;
      bool ok = true;
      for (size_t c : at[d]) ok = ok && sp.constraints[c].ok(p.data());
      if (ok) walk(d + 1);
    }
  };
  walk(0);
  return n;
}

std::unique_ptr<kernels::Kernel> build(const kernels::Kernel& k, const nlohmann::json& tiling,
                                       const sim::HardwareSpec& hw) {
  auto doc = YamlDoc::from_string(tiling.dump(), "space point", "tiling");
  auto candidate = k.with_tiling(doc->root(), hw);
  doc->finish();  // every key the space emits is one the template reads
  return candidate;
}

// (a) the default inside the domains, (b) >= 95% of the accepted points implementable, (c) the
// round trip of every point and two simulations; with `own_estimate` (the grouped GEMM family's
// estimate is gemm_search_space's, checked with the GEMM) a finite positive estimate.
void check_space(const std::string& what, const app::LoadedRun& run, bool own_estimate = true,
                 size_t samples = 2000) {
  const kernels::Kernel& k = *run.kernel;
  const sim::HardwareSpec& hw = run.hw;
  const SearchSpace sp = k.search_space(hw);
  EXPECT_FALSE(sp.params.empty()) << what;
  EXPECT_TRUE(static_cast<bool>(sp.tiling)) << what;
  if (sp.params.empty() || !sp.tiling) return;
  EXPECT_TRUE(k.tiling_is_default()) << what;

  const nlohmann::json def = k.tiling_json();
  Point def_point;
  std::string sizes;
  for (const auto& par : sp.params) {
    const nlohmann::json* v = value_in(def, par.name);
    EXPECT_NE(v, nullptr) << what << ": the default tiling has no " << par.name;
    if (!v) return;
    EXPECT_TRUE(in_domain(par, *v))
        << what << ": the default " << par.name << " = " << v->dump() << " is off the domain";
    EXPECT_TRUE(std::is_sorted(par.values.begin(), par.values.end()))
        << what << ": " << par.name << " unsorted";
    def_point.push_back(par.labels.empty() ? v->get<int64_t>()
                                           : std::find(par.labels.begin(), par.labels.end(),
                                                       v->get<std::string>()) -
                                                 par.labels.begin());
    sizes += " " + par.name + ":" + std::to_string(par.values.size());
  }
  std::string why_default;
  const bool default_valid = accepted(sp, def_point, &why_default);

  const std::vector<Point> points = valid_points(sp, samples);
  EXPECT_FALSE(points.empty()) << what << ": no valid point";
  std::map<std::string, int> misses;
  std::vector<size_t> good;
  for (size_t i = 0; i < points.size(); ++i) {
    const nlohmann::json tiling = sp.tiling(points[i].data());
    std::unique_ptr<kernels::Kernel> c;
    try {
      c = build(k, tiling, hw);
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": " << tiling.dump() << " does not parse: " << e.what();
      continue;
    }
    EXPECT_FALSE(c->tiling_is_default()) << what;
    const nlohmann::json got = c->tiling_json();
    for (const auto& [key, value] : tiling.items())
      EXPECT_TRUE(got.contains(key) && got.at(key) == value)
          << what << ": " << key << " = " << value.dump() << " came back as "
          << (got.contains(key) ? got.at(key).dump() : "nothing");
    const kernels::Status st = c->can_implement(hw);
    if (st.ok)
      good.push_back(i);
    else
      ++misses[st.key + ": " + st.reason.substr(0, 100)];
  }
  const double implemented = static_cast<double>(good.size()) / std::max<size_t>(1, points.size());
  std::string miss_list;
  for (const auto& [m, n] : misses) miss_list += "\n  " + std::to_string(n) + " x " + m;
  EXPECT_GE(implemented, 0.95) << what << ": of " << points.size() << " accepted points "
                               << good.size() << " pass can_implement" << miss_list;

  // Two candidates lower and simulate.
  for (size_t i : {size_t{0}, good.size() / 2}) {
    if (i >= good.size()) break;
    auto c = build(k, sp.tiling(points[good[i]].data()), hw);
    const sim::SimResult r = sim::simulate(hw, c->lower(hw));
    EXPECT_GT(r.cycles, 0) << what;
  }
  const double valid = count_valid(sp, 2e5);
  std::cout << "[space] " << what << " params" << sizes << " | raw " << raw_size(sp) << " valid "
            << valid << (valid >= 2e5 ? "+" : "") << " | checked " << points.size()
            << ", implementable " << 100 * implemented << "% | default "
            << (default_valid ? "valid" : "pruned (" + why_default + ")")
            << (sp.estimate ? " | estimate" : "") << miss_list << "\n";
  if (sp.estimate && own_estimate) {
    const double e0 = sp.estimate(points.front().data());
    EXPECT_TRUE(e0 > 0 && std::isfinite(e0)) << what << ": estimate " << e0;
  }
}

const char* const kHardware[] = {"ascend910b2", "ascend950pr"};

TEST(KernelSpaces, GroupedGemm) {
  for (const char* hw : kHardware)
    check_space(
        std::string("grouped_gemm on ") + hw,
        load(hw, "{op: grouped_gemm, n: 256, k: 128, dtype: fp16, group_rows: [40, 0, 100, 16]}"),
        false);
}

TEST(KernelSpaces, GroupedGemmSwiglu) {
  for (const char* hw : kHardware)
    check_space(
        std::string("grouped_gemm_swiglu on ") + hw,
        load(hw,
             "{op: grouped_gemm_swiglu, inter: 128, k: 128, dtype: bf16, group_rows: [24, 0, 40]}"),
        false);
}

TEST(KernelSpaces, GroupedGemmFinalize) {
  for (const char* hw : kHardware)
    check_space(std::string("grouped_gemm_finalize on ") + hw,
                load(hw,
                     "{op: grouped_gemm_finalize, n: 256, k: 128, dtype: bf16, shared: true, "
                     "routing: {experts: 4, tokens: 16, topk: 2, seed: 3}}"),
                false);
}

TEST(KernelSpaces, Elementwise) {
  check_space("add", load("ascend910b2", "{op: add, shape: [64, 1024], dtype: fp16}"));
  check_space("cast",
              load("ascend950pr", "{op: cast, shape: [3000], dtype: fp16, out_dtype: fp32}"));
}

TEST(KernelSpaces, Swiglu) {
  check_space("swiglu", load("ascend910b2",
                             "{op: swiglu, rows: 64, inter: 256, dtype: bf16, row_weights: true}"));
}

TEST(KernelSpaces, Combine) {
  check_space("combine", load("ascend910b2",
                              "{op: combine, hidden: 512, dtype: bf16, residual: true, "
                              "routing: {experts: 8, tokens: 32, topk: 2, seed: 1}}"));
}

TEST(KernelSpaces, Permute) {
  check_space("permute", load("ascend910b2",
                              "{op: permute, hidden: 512, dtype: bf16, weights: true, "
                              "routing: {experts: 8, tokens: 32, topk: 2, seed: 1}}"));
}

TEST(KernelSpaces, Gating) {
  check_space(
      "gating",
      load(
          "ascend910b2",
          "{op: gating, tokens: 64, experts: 64, topk: 4, bias: true, groups: 8, topk_groups: 4}"));
}

TEST(KernelSpaces, InitRouting) {
  check_space("init_routing", load("ascend910b2",
                                   "{op: init_routing, hidden: 256, dtype: bf16, "
                                   "routing: {experts: 8, tokens: 64, topk: 2, seed: 1}}"));
  check_space("init_routing probability",
              load("ascend910b2",
                   "{op: init_routing, hidden: 256, dtype: bf16, "
                   "routing: {experts: 8, tokens: 64, topk: 2, seed: 1}, "
                   "capacity: {mode: probability, factor: 1.0}}"));
}

TEST(KernelSpaces, Topk) {
  check_space("topk", load("ascend910b2", "{op: topk, tokens: 8, cols: 2048, topk: 64}"));
}

TEST(KernelSpaces, FlashAttention) {
  check_space("flash_attention decode",
              load("ascend910b2",
                   "{op: flash_attention, batch: 2, q_len: 1, kv_len: 1024, heads_q: 16, "
                   "heads_kv: 1, d_qk: 128, dtype: bf16}"));
  check_space("flash_attention prefill",
              load("ascend950pr",
                   "{op: flash_attention, batch: 1, q_len: 256, kv_len: 256, heads_q: 2, "
                   "d_qk: 64, dtype: fp16, causal: true}"));
}

TEST(KernelSpaces, LightningIndexer) {
  for (const char* hw : kHardware)
    check_space(std::string("lightning_indexer on ") + hw,
                load(hw,
                     "{op: lightning_indexer, tokens: 4, keys: [600, 300], batch: 2, topk: 64, "
                     "heads: 8, head_dim: 64}"));
}

TEST(KernelSpaces, SparseAttention) {
  for (const char* hw : kHardware)
    check_space(
        std::string("sparse_attention on ") + hw,
        load(hw,
             "{op: sparse_attention, tokens: 2, heads: 32, d_qk: 192, d_v: 128, dtype: bf16, "
             "sources: [{rows: 512, per_query: 128}]}"));
}

TEST(KernelSpaces, Compressor) {
  check_space(
      "compressor prefill",
      load("ascend910b2",
           "{op: compressor, hidden: 256, head_dim: 128, ratio: 4, tokens: 64, starts: [0]}"));
  check_space(
      "compressor prefill m128",
      load("ascend950pr",
           "{op: compressor, hidden: 256, head_dim: 128, ratio: 128, tokens: 300, starts: [0]}"));
  check_space("compressor decode",
              load("ascend910b2",
                   "{op: compressor, hidden: 256, head_dim: 128, ratio: 4, tokens: 1, "
                   "batch: 4, start: 7, start_step: 1}"));
}

// A with_tiling result is the same problem: same name and signature, only the tiling differs.
TEST(KernelSpaces, WithTilingKeepsTheProblem) {
  auto run = load("ascend910b2",
                  "{op: grouped_gemm_finalize, n: 256, k: 128, dtype: bf16, routing: {experts: 4, "
                  "tokens: 16, topk: 2, seed: 3}}");
  auto c = build(*run.kernel, {{"rows_per_tile", 4}, {"buffers", 1}}, run.hw);
  EXPECT_EQ(c->name(), run.kernel->name());
  EXPECT_EQ(c->signature(), run.kernel->signature());
  EXPECT_EQ(c->tiling_json()["rows_per_tile"], 4);
  EXPECT_EQ(c->tiling_json()["l1"], run.kernel->tiling_json()["l1"])
      << "keys not given keep the kernel's";
}

}  // namespace
}  // namespace npusim
