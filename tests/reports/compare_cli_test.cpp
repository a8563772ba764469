// npusim compare end to end: the exit code is the verdict (0 no regression, 1 regression, 2 cannot
// compare), on run reports written by npusim itself.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace {

namespace fs = std::filesystem;

struct Out {
  int code;
  std::string out, err;
};

Out npusim(const std::string& args) {
  const fs::path dir = fs::path(::testing::TempDir()) / fmt::format("compare_cli_{}", ::getpid());
  fs::create_directories(dir);
  const int rc = std::system(fmt::format("cd {} && {} {} >{}/o 2>{}/e", NPUSIM_SOURCE_DIR, NPUSIM_BIN, args, dir.string(), dir.string()).c_str());
  auto slurp = [](const fs::path& p) {
    std::stringstream ss;
    ss << std::ifstream(p).rdbuf();
    return ss.str();
  };
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(dir / "o"), slurp(dir / "e")};
}

TEST(CompareCli, ExitCodeIsTheVerdict) {
  const fs::path dir = fs::path(::testing::TempDir()) / fmt::format("compare_cli_runs_{}", ::getpid());
  fs::create_directories(dir);
  const std::string cfg = "configs/workloads/gemm_1024x576x6144.yaml";
  const std::string base = (dir / "base.json").string(), slow = (dir / "slow.json").string();
  ASSERT_EQ(npusim(fmt::format("run {} --quiet --json {}", cfg, base)).code, 0);
  ASSERT_EQ(npusim(fmt::format("run {} --quiet --json {} --set hardware.hbm.peak_bw_gbs=800", cfg, slow)).code, 0);

  Out same = npusim(fmt::format("compare {} {}", base, base));
  EXPECT_EQ(same.code, 0) << same.out << same.err;
  Out worse = npusim(fmt::format("compare {} {} --fail cycles:+2% --fail cube:-2pp", base, slow));
  EXPECT_EQ(worse.code, 1) << worse.out << worse.err;
  EXPECT_NE(worse.out.find("regressed (cycles:+2%)"), std::string::npos) << worse.out;
  // The other way round it is an improvement, not a regression.
  EXPECT_EQ(npusim(fmt::format("compare {} {} --fail cycles:+2%", slow, base)).code, 0);
  Out md = npusim(fmt::format("compare {} {} --format markdown", base, slow));
  EXPECT_EQ(md.code, 1);
  EXPECT_NE(md.out.find("| "), std::string::npos) << md.out;

  Out missing = npusim(fmt::format("compare {} {}", base, (dir / "nope.json").string()));
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.err.find("nope.json"), std::string::npos) << missing.err;
  Out bad_metric = npusim(fmt::format("compare {} {} --fail cylces:+2%", base, slow));
  EXPECT_EQ(bad_metric.code, 2);
  EXPECT_NE(bad_metric.err.find("cycles"), std::string::npos) << bad_metric.err;
  const std::string other = (dir / "other_schema.json").string();
  {
    std::ifstream in(base);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    text.replace(text.find("\"schema_version\": 1"), 19, "\"schema_version\": 7");
    std::ofstream(other) << text;
  }
  Out schema = npusim(fmt::format("compare {} {}", base, other));
  EXPECT_EQ(schema.code, 2);
  EXPECT_NE(schema.err.find("schema"), std::string::npos) << schema.err;
}

}  // namespace
