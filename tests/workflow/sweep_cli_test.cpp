// `npusim sweep` and `npusim merge` end to end: reports identical across --jobs, resume, shards and
// merge; a killed or interrupted sweep keeps its finished points; bad input exits 2 and writes
// nothing.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "workflow_support.hpp"

namespace {

using namespace npusim::workflow_test;

// Points that take a noticeable time (~0.1 s each), so a test can act while the sweep runs.
std::string slow_sweep(const fs::path& dir) {
  const fs::path file = dir / "slow.yaml";
  std::ofstream(file) << "name: slow\nbase: " << NPUSIM_SOURCE_DIR
                      << "/tests/workflow/data/tiny_gemm.yaml\n"
                      << "axes:\n  workload.k: [4096, 4224, 4352, 4480, 4608, 4736]\n"
                      << "  workload.m: [2048]\n  workload.n: [2048]\n";
  return file.string();
}

// Every published point folder is whole: its config, its log and (when it ran) its report.
void expect_whole_points(const fs::path& out) {
  for (const auto& id : point_dirs(out)) {
    EXPECT_TRUE(fs::exists(out / "points" / id / "config.yaml")) << id;
    EXPECT_TRUE(fs::exists(out / "points" / id / "log.txt")) << id;
    EXPECT_TRUE(fs::exists(out / "points" / id / "report.json")) << id;
    EXPECT_NO_THROW(nlohmann::json::parse(slurp(out / "points" / id / "report.json"))) << id;
  }
}

TEST(SweepCli, WritesEveryReportAndTheSummary) {
  const fs::path dir = scratch_dir("reports"), out = dir / "out";
  Result r = run_npusim({"sweep", kSmallSweep, "--out", out.string()}, dir);
  ASSERT_EQ(r.exit_code, 0) << r;
  for (const char* f : {"report.json", "report.csv", "report.h5", "report.html", "sweep.yaml"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  EXPECT_EQ(point_dirs(out).size(), 6u);
  expect_whole_points(out);
  // One summary line per point, after the header, in point order.
  EXPECT_NE(r.out.find("hardware     workload.m"), std::string::npos) << r;
  EXPECT_LT(r.out.find("ascend910b2  1024"), r.out.find("ascend950pr  256")) << r;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 7) << r;
  const auto j = nlohmann::json::parse(slurp(out / "report.json"));
  EXPECT_EQ(j["points"].size(), 6u);
}

TEST(SweepCli, ReportsAreIdenticalAcrossJobs) {
  const fs::path dir = scratch_dir("jobs");
  Result one =
      run_npusim({"sweep", kSmallSweep, "--out", (dir / "j1").string(), "--jobs", "1"}, dir);
  Result two =
      run_npusim({"sweep", kSmallSweep, "--out", (dir / "j2").string(), "--jobs", "2"}, dir);
  ASSERT_EQ(one.exit_code, 0) << one;
  ASSERT_EQ(two.exit_code, 0) << two;
  EXPECT_EQ(stable_report(dir / "j1" / "report.json"), stable_report(dir / "j2" / "report.json"));
  EXPECT_EQ(slurp(dir / "j1" / "sweep.yaml"), slurp(dir / "j2" / "sweep.yaml"));
  EXPECT_EQ(one.out, two.out);  // the summary table
}

TEST(SweepCli, ResumeRerunsOnlyTheMissingPoint) {
  const fs::path dir = scratch_dir("resume"), out = dir / "out";
  ASSERT_EQ(run_npusim({"sweep", kSmallSweep, "--out", out.string()}, dir).exit_code, 0);
  const std::string before = stable_report(out / "report.json");
  const auto ids = point_dirs(out);
  const std::string gone = *ids.begin(), kept = *ids.rbegin();
  fs::remove_all(out / "points" / gone);
  const std::string kept_log = slurp(out / "points" / kept / "log.txt");  // holds the run time
  Result r = run_npusim({"sweep", kSmallSweep, "--out", out.string(), "--resume"}, dir);
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_NE(r.err.find("1 to run (5 finished before)"), std::string::npos) << r;
  EXPECT_EQ(slurp(out / "points" / kept / "log.txt"), kept_log);
  EXPECT_EQ(point_dirs(out), ids);
  EXPECT_EQ(stable_report(out / "report.json"), before);
}

TEST(SweepCli, AnotherSweepInTheFolderNeedsResume) {
  const fs::path dir = scratch_dir("other"), out = dir / "out";
  ASSERT_EQ(run_npusim({"sweep", kSmallSweep, "--out", out.string()}, dir).exit_code, 0);
  Result r = run_npusim({"sweep", kZipSweep, "--out", out.string()}, dir);
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_NE(r.err.find("holds points of another sweep ('small', 6 points); pass --resume"),
            std::string::npos)
      << r;
  EXPECT_EQ(point_dirs(out).size(), 6u);
  // With --resume the zip sweep reuses the point the two share (m=256, n=512, 1600 GB/s).
  Result resumed = run_npusim({"sweep", kZipSweep, "--out", out.string(), "--resume"}, dir);
  ASSERT_EQ(resumed.exit_code, 0) << resumed;
  EXPECT_NE(resumed.err.find("3 to run (1 finished before)"), std::string::npos) << resumed;
  EXPECT_EQ(nlohmann::json::parse(slurp(out / "report.json"))["points"].size(), 4u);
}

TEST(SweepCli, KilledSweepKeepsFinishedPointsAndResumes) {
  const fs::path dir = scratch_dir("killed"), out = dir / "out";
  const std::string sweep = slow_sweep(dir);
  Child child({"sweep", sweep, "--out", out.string()}, dir);
  ASSERT_TRUE(wait_for([&] { return !point_dirs(out).empty(); })) << child.wait();
  child.signal(SIGKILL);
  Result killed = child.wait();
  EXPECT_EQ(killed.exit_code, -SIGKILL) << killed;
  const size_t kept = point_dirs(out).size();
  EXPECT_GE(kept, 1u);
  expect_whole_points(out);

  Result r = run_npusim({"sweep", sweep, "--out", out.string(), "--resume"}, dir);
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_NE(r.err.find(std::to_string(kept) + " finished before"), std::string::npos) << r;
  EXPECT_EQ(point_dirs(out).size(), 6u);
  // Nothing left in flight: the dead process's temporary folder was cleaned up.
  for (const auto& e : fs::directory_iterator(out / "points"))
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
  ASSERT_EQ(run_npusim({"sweep", sweep, "--out", (dir / "clean").string()}, dir).exit_code, 0);
  EXPECT_EQ(stable_report(out / "report.json"), stable_report(dir / "clean" / "report.json"));
}

TEST(SweepCli, InterruptFinishesPointsInFlightAndExits130) {
  const fs::path dir = scratch_dir("sigint"), out = dir / "out";
  const std::string sweep = slow_sweep(dir);
  Child child({"sweep", sweep, "--out", out.string(), "--jobs", "2"}, dir);
  ASSERT_TRUE(wait_for([&] { return !point_dirs(out).empty(); })) << child.wait();
  child.signal(SIGINT);
  Result r = child.wait();
  ASSERT_EQ(r.exit_code, 130) << r;
  EXPECT_NE(r.err.find("interrupted:"), std::string::npos) << r;
  EXPECT_NE(r.err.find("--resume"), std::string::npos) << r;
  EXPECT_FALSE(fs::exists(out / "report.json"));
  expect_whole_points(out);
  const size_t done = point_dirs(out).size();
  EXPECT_LT(done, 6u) << "the sweep finished before the signal; make the points slower";
  Result resumed = run_npusim({"sweep", sweep, "--out", out.string(), "--resume"}, dir);
  ASSERT_EQ(resumed.exit_code, 0) << resumed;
  EXPECT_EQ(point_dirs(out).size(), 6u);
}

TEST(SweepCli, ShardsMergeIntoTheUnshardedReport) {
  const fs::path dir = scratch_dir("shards");
  ASSERT_EQ(run_npusim({"sweep", kSmallSweep, "--out", (dir / "all").string()}, dir).exit_code, 0);
  Result s1 =
      run_npusim({"sweep", kSmallSweep, "--out", (dir / "s1").string(), "--shard", "1/2"}, dir);
  Result s2 =
      run_npusim({"sweep", kSmallSweep, "--out", (dir / "s2").string(), "--shard", "2/2"}, dir);
  ASSERT_EQ(s1.exit_code, 0) << s1;
  ASSERT_EQ(s2.exit_code, 0) << s2;
  EXPECT_FALSE(fs::exists(dir / "s1" / "report.json"));  // a shard writes only its points
  EXPECT_EQ(point_dirs(dir / "s1").size(), 3u);
  EXPECT_EQ(point_dirs(dir / "s2").size(), 3u);

  // One shard alone: the missing points are listed and nothing is written.
  Result partial =
      run_npusim({"merge", (dir / "s1").string(), "-o", (dir / "partial.json").string()}, dir);
  EXPECT_EQ(partial.exit_code, 2) << partial;
  EXPECT_NE(partial.err.find("3 of 6 distinct points"), std::string::npos) << partial;
  EXPECT_FALSE(fs::exists(dir / "partial.json"));
  Result allowed = run_npusim(
      {"merge", (dir / "s1").string(), "-o", (dir / "partial.json").string(), "--allow-partial"},
      dir);
  EXPECT_EQ(allowed.exit_code, 0) << allowed;

  Result m = run_npusim({"merge", (dir / "s1").string(), (dir / "s2").string(), "-o",
                         (dir / "merged.json").string(), "-o", (dir / "merged.h5").string()},
                        dir);
  ASSERT_EQ(m.exit_code, 0) << m;
  EXPECT_TRUE(fs::exists(dir / "merged.h5"));
  EXPECT_EQ(stable_report(dir / "merged.json"), stable_report(dir / "all" / "report.json"));
}

TEST(SweepCli, BadInputExitsTwoAndWritesNothing) {
  const fs::path dir = scratch_dir("bad"), out = dir / "out";
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const fs::path typo = dir / "typo.yaml";
  std::ofstream(typo) << "base: " << NPUSIM_SOURCE_DIR << "/tests/workflow/data/tiny_gemm.yaml\n"
                      << "axes:\n  workload.m: [256]\n  workload.dtyp: [fp16]\n";
  const fs::path empty = dir / "empty.yaml";
  std::ofstream(empty) << "base: " << NPUSIM_SOURCE_DIR
                       << "/tests/workflow/data/tiny_gemm.yaml\naxes:\n  workload.m: []\n";
  const std::vector<Case> cases{
      {{"sweep", kSmallSweep, "--out", out.string(), "--shard", "17/16"},
       "--shard 17/16: shard 17 of 16 does not exist"},
      {{"sweep", kSmallSweep, "--out", out.string(), "--shard", "x/y"},
       "--shard x/y: expected i/N"},
      {{"sweep", typo.string(), "--out", out.string()},
       typo.string() + ":4:3: key 'axes.workload.dtyp': unknown key "
                       "'workload.dtyp' (did you mean 'dtype'?)"},
      {{"sweep", empty.string(), "--out", out.string()}, "empty axis 'workload.m'"},
      {{"sweep", kSmallSweep, "--out", out.string(), "--jobs", "0"}, "--jobs 0"},
      {{"merge", out.string(), "-o", (dir / "r.xlsx").string()}, "unknown report format"},
      {{"merge", out.string(), "-o", (dir / "r.json").string()},
       "not the output folder of `npusim sweep`"},
  };
  for (const auto& c : cases) {
    Result r = run_npusim(c.args, dir);
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r;
    EXPECT_FALSE(fs::exists(out)) << r;
  }
  // An output folder that cannot be created.
  std::ofstream(dir / "file") << "x";
  Result r = run_npusim({"sweep", kSmallSweep, "--out", (dir / "file" / "out").string()}, dir);
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_NE(r.err.find("cannot create output folder"), std::string::npos) << r;
}

TEST(SweepCli, MergeRejectsAReportOfAnotherSchema) {
  const fs::path dir = scratch_dir("schema"), out = dir / "out";
  ASSERT_EQ(run_npusim({"sweep", kSmallSweep, "--out", out.string()}, dir).exit_code, 0);
  const fs::path rep = out / "points" / *point_dirs(out).begin() / "report.json";
  auto j = nlohmann::json::parse(slurp(rep));
  j["schema_version"] = 99;
  std::ofstream(rep) << j.dump(2);
  Result r = run_npusim({"merge", out.string(), "-o", (dir / "m.json").string()}, dir);
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_NE(r.err.find("a report of schema version 99; this npusim reads version 1"),
            std::string::npos)
      << r;
  EXPECT_FALSE(fs::exists(dir / "m.json"));
  // A resolved sweep of another format.
  std::ofstream(out / "sweep.yaml") << "format: npusim-sweep/7\n";
  Result f = run_npusim({"merge", out.string(), "-o", (dir / "m.json").string()}, dir);
  EXPECT_EQ(f.exit_code, 2) << f;
  EXPECT_NE(f.err.find("format 'npusim-sweep/7'"), std::string::npos) << f;
}

}  // namespace
