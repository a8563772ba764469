// Outputs that cannot be written: a full disk (RLIMIT_FSIZE in the child, SIGXFSZ ignored, so
// writes fail with EFBIG as they would with ENOSPC) and folders that cannot hold a file (a path
// below a regular file: ENOTDIR; /proc). Tests run as root, so permissions would not stop a write.
// Every case: exit 2 (an output the user must fix, like any bad input), "cannot write '<path>':
// why" on stderr, nothing (and no temporary) under the final name, and the previous file, if any,
// whole.
#include <nlohmann/json.hpp>

#include "robustness_support.hpp"

namespace npusim::robustness_test {
namespace {

const std::string kGemm = "tests/workflow/data/tiny_gemm.yaml";
const std::string kSmallSweep = "tests/workflow/data/small_sweep.yaml";  // 6 points, 0.1 s
constexpr long long kFull = 4096;  // bytes: smaller than any report

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// "cannot write '<path>': <why>" with the reason the system gave.
void expect_cannot_write(const Result& r, const fs::path& path, const std::string& why) {
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_TRUE(contains(r.err, "cannot write '" + path.string() + "': ")) << r;
  EXPECT_TRUE(contains(r.err, why)) << r;
  EXPECT_FALSE(contains(r.err, "internal error")) << r;
}

TEST(FullDisk, RunJsonFailsAndKeepsThePreviousReport) {
  const fs::path dir = scratch("full_json"), json = dir / "report.json";
  spit(json, "previous\n");
  const Result r =
      run({{"run", kGemm, "--quiet", "--json", json.string()}, kSourceDir, kFull}, dir);
  expect_cannot_write(r, json, "File too large");
  EXPECT_EQ(slurp(json), "previous\n");
  EXPECT_EQ(names_in(dir, false), std::set<std::string>{"report.json"});
  EXPECT_TRUE(names_in(dir, true).size() == 2)
      << "a temporary was left";  // the child's stdout and stderr
}

TEST(FullDisk, RunTraceFailsAfterTheReportThatFits) {
  const fs::path dir = scratch("full_trace"), json = dir / "r.json", trace = dir / "t.json";
  // The report (~14 KB) fits under 32 KB, the trace (~160 KB) does not.
  const Result r = run({{"run", kGemm, "--set", "workload.m=2048", "--quiet", "--json",
                         json.string(), "--trace", trace.string()},
                        kSourceDir,
                        32 << 10},
                       dir);
  expect_cannot_write(r, trace, "File too large");
  EXPECT_FALSE(fs::exists(trace));
  EXPECT_FALSE(nlohmann::json::parse(slurp(json), nullptr, false).is_discarded())
      << "the report is not whole";
  EXPECT_EQ(names_in(dir, true).size(), 2u) << "a temporary was left";
}

TEST(FullDisk, SweepReportsFailAndKeepThePreviousOnes) {
  const fs::path dir = scratch("full_sweep"), out = dir / "out";
  ASSERT_EQ(run({{"sweep", kSmallSweep, "--out", out.string()}}, dir).exit_code, 0);
  const Files before = files_under(out);
  // Resuming runs no point and rewrites sweep.yaml (0.7 KB: fits) and the reports (do not).
  const Result r =
      run({{"sweep", kSmallSweep, "--out", out.string(), "--resume"}, kSourceDir, 8 << 10}, dir);
  expect_cannot_write(r, out / "report.json", "File too large");
  EXPECT_TRUE(files_under(out) == before) << "a report was changed or a temporary left";
  EXPECT_TRUE(names_in(out, true).empty());
}

TEST(FullDisk, SweepStopsAtThePointFolderItCannotWriteAndResumesLater) {
  const fs::path dir = scratch("full_points"), out = dir / "out", ref = dir / "ref";
  // sweep.yaml fits in 2 KB, a point's config.yaml (~7 KB) does not.
  const Result r =
      run({{"sweep", kSmallSweep, "--out", out.string(), "--jobs", "2"}, kSourceDir, 2 << 10}, dir);
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_TRUE(contains(r.err, "cannot write the point folder: cannot write '")) << r;
  EXPECT_TRUE(contains(r.err, "config.yaml': File too large")) << r;
  EXPECT_TRUE(contains(r.err, "the sweep stopped")) << r;
  EXPECT_TRUE(contains(r.err, "--resume")) << r;
  EXPECT_TRUE(point_ids(out).empty()) << "a point was published without its files";
  EXPECT_TRUE(names_in(out / "points", true).empty()) << "a temporary point folder was left";
  EXPECT_EQ(names_in(out, false), (std::set<std::string>{"points", "sweep.yaml"}))
      << "a report was written";
  // With space again, --resume finishes it: the same report as a sweep that never stopped.
  ASSERT_EQ(run({{"sweep", kSmallSweep, "--out", out.string(), "--resume"}}, dir).exit_code, 0);
  ASSERT_EQ(run({{"sweep", kSmallSweep, "--out", ref.string()}}, dir).exit_code, 0);
  EXPECT_EQ(slurp(out / "report.csv"), slurp(ref / "report.csv"));
  EXPECT_EQ(slurp(out / "report.h5"), slurp(ref / "report.h5"));
}

TEST(FullDisk, MergeFailsAndLeavesNoFile) {
  const fs::path dir = scratch("full_merge"), out = dir / "out";
  ASSERT_EQ(run({{"sweep", kSmallSweep, "--out", out.string()}}, dir).exit_code, 0);
  const fs::path json = dir / "m.json", h5 = dir / "m.h5";
  Result r = run(
      {{"merge", out.string(), "-o", json.string(), "-o", h5.string()}, kSourceDir, 8 << 10}, dir);
  expect_cannot_write(r, json, "File too large");
  EXPECT_FALSE(fs::exists(json));
  EXPECT_FALSE(fs::exists(h5));
  // HDF5 (~15 KB) on its own, over an older file that must stay whole.
  spit(h5, "older\n");
  r = run({{"merge", out.string(), "-o", h5.string()}, kSourceDir, 8 << 10}, dir);
  expect_cannot_write(r, h5, "File too large");
  EXPECT_EQ(slurp(h5), "older\n");
  EXPECT_EQ(names_in(dir, false), (std::set<std::string>{"m.h5", "out"}));
  for (const auto& n : names_in(dir, true))
    EXPECT_TRUE(n.rfind(".std", 0) == 0) << "a temporary was left: " << n;
}

// Folders that cannot hold a file: below a regular file (ENOTDIR), and /proc.
TEST(Unwritable, EveryOutputNamesThePathAndWhy) {
  const fs::path dir = scratch("unwritable"), out = dir / "out", file = dir / "a_file";
  spit(file, "x");
  ASSERT_EQ(run({{"sweep", kSmallSweep, "--out", out.string()}}, dir).exit_code, 0);
  const std::string not_dir = "cannot create a file in that folder (Not a directory)";
  struct Case {
    std::vector<std::string> args;
    fs::path path;
    std::string why;
  };
  const std::vector<Case> cases = {
      {{"run", kGemm, "--quiet", "--json", (file / "r.json").string()}, file / "r.json", not_dir},
      {{"run", kGemm, "--quiet", "--trace", (file / "t.json").string()}, file / "t.json", not_dir},
      {{"run", kGemm, "--quiet", "--json", "/proc/npusim_report.json"},
       "/proc/npusim_report.json",
       "cannot create a file in that folder"},
      {{"merge", out.string(), "-o", (file / "m.h5").string()}, file / "m.h5", not_dir},
      {{"merge", out.string(), "-o", (file / "m.csv").string()}, file / "m.csv", not_dir},
      {{"merge", out.string(), "-o", "/proc/npusim_merged.h5"},
       "/proc/npusim_merged.h5",
       "cannot create a file in that folder"},
      {{"tune", kGemm, "--budget", "8", "--strategy", "random", "--quiet", "--json",
        (file / "best.json").string()},
       file / "best.json",
       not_dir},
  };
  for (const auto& c : cases) {
    const Result r = run({c.args}, dir);
    expect_cannot_write(r, c.path, c.why);
  }
  // A sweep's output folder that cannot be created is refused before any point runs.
  const Result r = run({{"sweep", kSmallSweep, "--out", (file / "out").string()}}, dir);
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_TRUE(
      contains(r.err, "cannot create output folder '" + (file / "out" / "points").string() + "'"))
      << r;
  EXPECT_EQ(slurp(file), "x");
}

}  // namespace
}  // namespace npusim::robustness_test
