// The tuner study: for each of a dozen spaces (GEMMs of MoE and attention shapes, grouped GEMMs
// with skewed expert loads, fused MoE FFN kernels, attention kernels) the exhaustive ground truth,
// then every strategy over 20 seeds against it: the median number of evaluations to come within
// 2% of the optimum, and the share of seeds that get there within 5% of the space. Also the speed
// figures: enumeration, the analytical screen per core, timing simulations per second.
//
//   tuner_study_bench [--spaces SUBSTRING] [--seeds 20] [--truth FILE] [--json FILE]
//
// Ground truths are cached in FILE (default tuner_truth.json in the working folder): an exhaustive
// pass over a space takes minutes, the strategy runs then replay its costs.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "app/session.hpp"
#include "common/yaml_reader.hpp"
#include "tuner/strategy.hpp"
#include "tuner/tuner.hpp"

namespace {

using namespace npusim;
using Clock = std::chrono::steady_clock;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct StudySpace {
  std::string name, yaml;
  std::vector<tuner::Pin> pins;
};

const std::vector<StudySpace>& study_spaces() {
  static const std::vector<StudySpace> s{
      {"gemm_1024_fp16_910b2", "hardware: ascend910b2\nworkload: {op: gemm, m: 1024, n: 1024, k: 1024, dtype: fp16}\n",
       {{"swizzle_offset", 3}, {"stages", 2}, {"k0", 64}}},
      {"gemm_v4_shared_up_decode_910b2", "hardware: ascend910b2\nworkload: {op: gemm, m: 60, n: 4096, k: 4096, dtype: bf16}\n",
       {{"swizzle_offset", 1}, {"swizzle_direction", 0}, {"stages", 2}}},
      {"gemm_v4_router_decode_910b2", "hardware: ascend910b2\nworkload: {op: gemm, m: 60, n: 256, k: 4096, dtype: bf16}\n",
       {{"swizzle_offset", 1}, {"swizzle_direction", 0}, {"stages", 2}}},
      {"gemm_v3_q_a_prefill_910b2", "hardware: ascend910b2\nworkload: {op: gemm, m: 2048, n: 1536, k: 7168, dtype: bf16}\n",
       {{"swizzle_offset", 3}, {"stages", 2}, {"m0", 128}}},
      {"gemm_1024x576x6144_950pr", "hardware: ascend950pr\nworkload: {op: gemm, m: 1024, n: 576, k: 6144, dtype: fp16}\n",
       {{"swizzle_offset", 3}, {"stages", 2}, {"k0", 64}}},
      {"gemm_v32_kv_b_910c", "hardware: ascend910c\nworkload: {op: gemm, m: 512, n: 4096, k: 512, dtype: bf16}\n",
       {{"swizzle_offset", 3}, {"stages", 2}, {"k0", 64}}},
      {"grouped_gemm_zipf_910b2",
       "hardware: ascend910b2\nworkload: {op: grouped_gemm, n: 4096, k: 2048, dtype: bf16, layout: {a: row_major, b: nz}, "
       "routing: {experts: 8, tokens: 60, topk: 6, distribution: zipf, s: 1.2, seed: 7}}\n",
       {{"swizzle_offset", 1}, {"stages", 2}, {"k0", 64}}},
      {"grouped_gemm_hot_expert_950pr",
       "hardware: ascend950pr\nworkload: {op: grouped_gemm, n: 2048, k: 1024, dtype: bf16, "
       "routing: {experts: 16, tokens: 256, topk: 4, distribution: hot_expert, hot_fraction: 0.5, seed: 3}}\n",
       {{"swizzle_offset", 1}, {"stages", 2}, {"k0", 64}}},
      {"gmm1_swiglu_zipf_910b2",
       "hardware: ascend910b2\nworkload: {op: grouped_gemm_swiglu, k: 2048, inter: 1024, dtype: bf16, "
       "routing: {experts: 8, tokens: 60, topk: 6, distribution: zipf, s: 1.2, seed: 7}}\n",
       {{"swizzle_offset", 1}, {"stages", 2}, {"k0", 64}}},
      {"gmm2_finalize_zipf_950pr",
       "hardware: ascend950pr\nworkload: {op: grouped_gemm_finalize, n: 2048, k: 1024, dtype: bf16, "
       "routing: {experts: 8, tokens: 60, topk: 6, distribution: zipf, s: 1.2, seed: 7}}\n",
       {{"swizzle_offset", 1}, {"stages", 2}, {"k0", 64}}},
      {"flash_attention_prefill_910b2",
       "hardware: ascend910b2\nworkload: {op: flash_attention, batch: 1, q_len: 1024, kv_len: 1024, heads_q: 16, heads_kv: 2, "
       "d_qk: 128, dtype: bf16, causal: true}\n",
       {{"stages", 2}}},
      {"sparse_attention_dsa_decode_910c",
       "hardware: ascend910c\nworkload: {op: sparse_attention, tokens: 8, batch: 8, heads: 64, d_qk: 192, d_v: 128, dtype: bf16, "
       "sources: [{rows: 16384, per_query: 1024, indices: {distribution: uniform, seed: 3}}]}\n",
       {}},
  };
  return s;
}

struct Loaded {
  app::LoadedRun run;
  kernels::SearchSpace space;
};

Loaded load(const StudySpace& s) {
  const std::string file = (std::filesystem::temp_directory_path() / ("study_" + s.name + ".yaml")).string();
  std::ofstream(file) << s.yaml;
  Loaded l{app::load_run(file), {}};
  l.space = l.run.kernel->search_space(l.run.hw);
  return l;
}

// Costs of every valid point (cycles; +inf when it cannot run), cached by space name + size.
std::vector<double> ground_truth(const StudySpace& s, const Loaded& l, const tuner::ValidPoints& pts, nlohmann::json& cache) {
  const std::string key = fmt::format("{}#{}", s.name, pts.size());
  if (cache.contains(key)) {
    std::vector<double> v;
    for (const auto& x : cache[key]) v.push_back(x.is_null() ? kInf : x.get<double>());
    return v;
  }
  std::vector<double> cost(pts.size(), kInf);
  const auto t0 = Clock::now();
  tbb::parallel_for(size_t{0}, pts.size(), [&](size_t i) {
    tuner::Candidate c = tuner::evaluate(*l.run.kernel, l.space.tiling(pts.point(i)), l.run.hw);
    if (c.status == "ok") cost[i] = c.cycles;
  });
  fmt::print(stderr, "  {}: exhaustive over {} points in {:.1f} s\n", s.name, pts.size(),
             std::chrono::duration<double>(Clock::now() - t0).count());
  nlohmann::json arr = nlohmann::json::array();
  for (double c : cost) arr.push_back(std::isfinite(c) ? nlohmann::json(c) : nlohmann::json());
  cache[key] = arr;
  return cost;
}

// Evaluations until the best is within 2% of the optimum (0: never, within `limit`).
size_t evals_to_target(const std::string& strategy, const tuner::ValidPoints& pts, const std::vector<double>& cost,
                       double target, uint64_t seed, size_t limit) {
  std::vector<char> seen(pts.size(), 0);
  // The strategies plan for a budget of 256 (the default), but run on until they reach the target.
  tuner::StrategyContext ctx{&pts, seed, 256, [&](size_t i) { return seen[i] != 0; }};
  auto st = tuner::make_strategy(strategy, ctx);
  size_t n = 0;
  while (n < limit) {
    auto batch = st->propose(std::min<size_t>(8, limit - n));
    if (batch.empty()) return 0;
    for (size_t i : batch) seen[i] = 1;
    for (size_t i : batch) {
      ++n;
      st->observe(i, cost[i]);
      if (cost[i] <= target) return n;
    }
  }
  return 0;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  std::string only, truth_file = "tuner_truth.json", json_out;
  int seeds = 20;
  if (argc > 1 && std::string(argv[1]) == "--sizes") {  // the spaces' sizes only
    for (const auto& s : study_spaces()) {
      Loaded l = load(s);
      tuner::ValidPoints pts(l.space, s.pins);
      fmt::print("{:<34} raw {:>10.3g} valid {:>8}  instructions(default) {:.3g}\n", s.name, pts.raw_size(), pts.size(),
                 l.run.kernel->estimated_instructions());
    }
    return 0;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--spaces") only = argv[i + 1];
    else if (a == "--seeds") seeds = std::stoi(argv[i + 1]);
    else if (a == "--truth") truth_file = argv[i + 1];
    else if (a == "--json") json_out = argv[i + 1];
  }
  nlohmann::json cache = nlohmann::json::object();
  if (std::ifstream in(truth_file); in) cache = nlohmann::json::parse(in, nullptr, false);
  if (!cache.is_object()) cache = nlohmann::json::object();

  std::vector<std::string> strategies;
  for (const auto& e : tuner::strategy_registry())
    if (e.name != "exhaustive") strategies.push_back(e.name);
  nlohmann::json report = nlohmann::json::array();
  std::map<std::string, int> hits;  // strategy -> spaces where the median met the target
  int spaces = 0;
  fmt::print("{:<34} {:>7} {:>7} {:>9}", "space", "valid", "target", "opt/def");
  for (const auto& s : strategies) fmt::print(" {:>15}", s);
  fmt::print("\n");
  for (const auto& s : study_spaces()) {
    if (!only.empty() && s.name.find(only) == std::string::npos) continue;
    Loaded l = load(s);
    const tuner::ValidPoints pts(l.space, s.pins);
    const std::vector<double> cost = ground_truth(s, l, pts, cache);
    std::ofstream(truth_file) << cache.dump();
    const double opt = *std::min_element(cost.begin(), cost.end());
    const double def = tuner::evaluate(*l.run.kernel, l.run.kernel->tiling_json(), l.run.hw).cycles;
    const size_t target_evals = std::min<size_t>(256, std::max<size_t>(1, pts.size() * 2 / 100));
    const size_t five = std::max<size_t>(1, pts.size() * 5 / 100);
    fmt::print("{:<34} {:>7} {:>7} {:>9.3f}", s.name, pts.size(), target_evals, def / opt);
    nlohmann::json row = {{"space", s.name}, {"valid", pts.size()}, {"raw", pts.raw_size()}, {"optimum_cycles", opt},
                          {"default_cycles", def}, {"target_evaluations", target_evals}};
    ++spaces;
    for (const auto& st : strategies) {
      std::vector<double> n;
      int success = 0;
      for (int seed = 1; seed <= seeds; ++seed) {
        // Runs stop at 5% of the space (or 256 when that is larger); not reaching counts as past it.
        const size_t cap = std::max<size_t>(five, 256);
        size_t e = evals_to_target(st, pts, cost, opt * 1.02, static_cast<uint64_t>(seed), cap);
        n.push_back(e ? static_cast<double>(e) : static_cast<double>(cap) + 1);
        success += e && e <= five;
      }
      const double med = median(n);
      if (med <= static_cast<double>(target_evals)) ++hits[st];
      fmt::print(" {:>8.0f} {:>5.0f}%", med, 100.0 * success / seeds);
      row[st] = {{"median_evaluations", med}, {"success_at_5pct", static_cast<double>(success) / seeds}};
    }
    fmt::print("\n");
    report.push_back(row);
  }
  fmt::print("\nspaces where the median reached 2% of the optimum within min(2% of the space, 256) evaluations:\n");
  for (const auto& st : strategies) fmt::print("  {:<10} {}/{}\n", st, hits[st], spaces);

  // Speed: enumeration of a large GEMM space, the analytical screen, timing simulations.
  {
    StudySpace big{"gemm_4096_fp16", "hardware: ascend910b2\nworkload: {op: gemm, m: 4096, n: 4096, k: 4096, dtype: fp16}\n", {}};
    Loaded l = load(big);
    auto t0 = Clock::now();
    tuner::ValidPoints pts(l.space);
    const double enum_s = std::chrono::duration<double>(Clock::now() - t0).count();
    t0 = Clock::now();
    double sink = 0;
    for (size_t i = 0; i < pts.size(); ++i) sink += l.space.estimate(pts.point(i));
    const double screen_s = std::chrono::duration<double>(Clock::now() - t0).count();
    fmt::print("\nenumeration: {:.3g} raw points, {} valid, in {:.3f} s\n", pts.raw_size(), pts.size(), enum_s);
    fmt::print("analytical screen: {:.3g} candidates/s on one core ({:.0f})\n", pts.size() / screen_s, sink > 0 ? 0.0 : 1.0);
  }
  {
    StudySpace g{"gemm_1024", "hardware: ascend910b2\nworkload: {op: gemm, m: 1024, n: 1024, k: 1024, dtype: fp16}\n", {}};
    Loaded l = load(g);
    const nlohmann::json tiling = l.run.kernel->tiling_json();
    const int n = 400;
    auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) tuner::evaluate(*l.run.kernel, tiling, l.run.hw);
    const double one = std::chrono::duration<double>(Clock::now() - t0).count();
    t0 = Clock::now();
    tbb::parallel_for(0, 2 * n, [&](int) { tuner::evaluate(*l.run.kernel, tiling, l.run.hw); });
    const double all = std::chrono::duration<double>(Clock::now() - t0).count();
    fmt::print("timing simulations of a 1024^3 GEMM (default tiling) on ascend910b2: {:.0f}/s on one core, {:.0f}/s on all cores\n",
               n / one, 2 * n / all);
  }
  if (!json_out.empty()) std::ofstream(json_out) << report.dump(2) << "\n";
  return 0;
}
