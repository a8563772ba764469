// Reproducibility: the same config and seed give the same bytes. Each comparison masks exactly the
// fields docs/report-schema.md ("Reproducibility") lists as varying (wall_clock.seconds, a point's
// log.txt time, tune's reused_from_db) and keeps the rest byte for byte; commands are run from two
// folders with the same relative output names, so their command lines are equal too.
// The MPI sweep against the single-process one: tests/workflow/mpi_sweep.sh.
#include <nlohmann/json.hpp>

#include "robustness_support.hpp"

namespace npusim::robustness_test {
namespace {

const std::string kSmallSweep = "tests/workflow/data/small_sweep.yaml";  // 6 GEMM points

// The same command in two fresh folders under `dir`; returns the two folders.
std::pair<fs::path, fs::path> run_twice(const fs::path& dir, const std::vector<std::string>& args) {
  const fs::path a = dir / "a", b = dir / "b";
  for (const auto& d : {a, b}) {
    fs::create_directories(d);
    const Result r = run({args, d}, dir);
    EXPECT_EQ(r.exit_code, 0) << r;
  }
  return {a, b};
}

// A kernel, a seeded MoE routing, and functional runs of seeded inputs on two graphs (replayed on
// TBB threads against OpenBLAS references: their validation numbers must not depend on scheduling).
TEST(Reproducible, RunReportsAndTracesAreByteIdentical) {
  const fs::path dir = scratch("run");
  const std::vector<std::vector<std::string>> runs = {
      {"run", "tests/workflow/data/tiny_gemm.yaml"},
      {"run", "configs/workloads/moe_gmm2_decode_zipf.yaml"},
      {"run", "--functional", "configs/regress/moe_toy.yaml"},
      {"validate", "configs/regress/attention_toy.yaml"},
  };
  int n = 0;
  for (auto args : runs) {
    for (auto& a : args)
      if (a.find(".yaml") != std::string::npos) a = (kSourceDir / a).string();
    args.insert(args.end(), {"--quiet", "--json", "r.json", "--trace", "t.json"});
    const auto [a, b] = run_twice(dir / std::to_string(n++), args);
    SCOPED_TRACE(args[args.size() - 6]);
    const std::string ja = slurp(a / "r.json"), jb = slurp(b / "r.json");
    ASSERT_FALSE(ja.empty());
    EXPECT_NE(mask_wall_clock(ja), ja) << "no wall_clock field was masked";
    EXPECT_EQ(mask_wall_clock(ja), mask_wall_clock(jb));
    const std::string ta = slurp(a / "t.json");
    ASSERT_GT(ta.size(), 1000u);
    EXPECT_TRUE(ta == slurp(b / "t.json")) << "the traces differ";
  }
}

// The point folders and every report file of two sweep output folders.
void expect_same_sweep(const fs::path& a, const fs::path& b) {
  for (const char* name : {"report.csv", "report.h5", "report.html", "sweep.yaml"})
    EXPECT_TRUE(slurp(a / name) == slurp(b / name))
        << name << " differs between " << a << " and " << b;
  EXPECT_EQ(mask_wall_clock(slurp(a / "report.json")), mask_wall_clock(slurp(b / "report.json")));
  ASSERT_EQ(point_ids(a), point_ids(b));
  for (const auto& id : point_ids(a)) {
    const fs::path pa = a / "points" / id, pb = b / "points" / id;
    EXPECT_EQ(slurp(pa / "config.yaml"), slurp(pb / "config.yaml")) << id;
    EXPECT_EQ(mask_wall_clock(slurp(pa / "report.json")),
              mask_wall_clock(slurp(pb / "report.json")))
        << id;
    EXPECT_EQ(mask_log_seconds(slurp(pa / "log.txt")), mask_log_seconds(slurp(pb / "log.txt")))
        << id;
  }
}

// --jobs 1, --jobs 2, and two shards merged: the same report bytes (the HDF5 file whole).
TEST(Reproducible, SweepReportsAreByteIdenticalAcrossJobsAndShards) {
  const fs::path dir = scratch("sweep"), one = dir / "jobs1", two = dir / "jobs2",
                 shards = dir / "shards";
  ASSERT_EQ(run({{"sweep", kSmallSweep, "--out", one.string(), "--jobs", "1"}}, dir).exit_code, 0);
  ASSERT_EQ(run({{"sweep", kSmallSweep, "--out", two.string(), "--jobs", "2"}}, dir).exit_code, 0);
  expect_same_sweep(one, two);
  // Equal bytes that HDF5 (npusim compare's reader) opens, with the points of the JSON.
  const Result c =
      run({{"compare", (one / "report.h5").string(), (one / "report.json").string()}}, dir);
  EXPECT_EQ(c.exit_code, 0) << c;
  EXPECT_NE(c.out.find("6 points paired"), std::string::npos) << c;

  for (const char* shard : {"1/2", "2/2"})
    ASSERT_EQ(
        run({{"sweep", kSmallSweep, "--out", shards.string(), "--shard", shard}}, dir).exit_code,
        0);
  const Result m = run({{"merge", shards.string(), "-o", (shards / "report.json").string(), "-o",
                         (shards / "report.csv").string(), "-o", (shards / "report.h5").string(),
                         "-o", (shards / "report.html").string()}},
                       dir);
  ASSERT_EQ(m.exit_code, 0) << m;
  expect_same_sweep(one, shards);
}

// The tuner: the same seed, the same best.json (the trajectory, the pick, its validation and run
// report) from two fresh databases.
TEST(Reproducible, TuneWithTheSameSeedWritesTheSameBestJson) {
  const fs::path dir = scratch("tune");
  spit(dir / "gemm.yaml",
       "hardware: ascend910b2\nworkload: {op: gemm, m: 512, n: 512, k: 1024, dtype: fp16}\n");
  const auto [a, b] =
      run_twice(dir, {"tune", (dir / "gemm.yaml").string(), "--strategy", "genetic", "--budget",
                      "32", "--seed", "3", "--quiet", "--db", "t.sqlite", "--json", "best.json"});
  EXPECT_EQ(mask_wall_clock(slurp(a / "best.json")), mask_wall_clock(slurp(b / "best.json")));
}

}  // namespace
}  // namespace npusim::robustness_test
