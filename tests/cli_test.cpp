// End-to-end tests of the npusim binary: exit codes, the "file:line:col: key 'dotted.path': ..."
// error format with did-you-mean suggestions, and the files `run` writes.
//
// Every test runs the real binary (NPUSIM_BIN) in the source tree (NPUSIM_SOURCE_DIR), so paths
// such as tests/data/bad/x.yaml appear in messages exactly as given. The bad configs live in
// tests/data/bad/ (one per mistake, each with a comment saying what is wrong); expected line and
// column numbers are computed from a marker in the file, so they follow the file if it is edited.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kPresets{"ascend910b2", "ascend910b3", "ascend910b4",
                                        "ascend910c",  "ascend950pr", "ascend950pr_9579"};
const std::string kGoodGemm = "configs/workloads/gemm_1024x576x6144.yaml";
const std::string kCubeGemm = "configs/workloads/gemm_6144_cube.yaml";

struct Result {
  int exit_code = -1;  // the exit status, or -signal if the process was killed
  std::string out, err;
  std::string command;
};

std::ostream& operator<<(std::ostream& os, const Result& r) {
  return os << "\n$ " << r.command << "\nexit code: " << r.exit_code << "\n--- stdout ---\n"
            << r.out << "--- stderr ---\n"
            << r.err << "--------------";
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs NPUSIM_BIN with `args` in NPUSIM_SOURCE_DIR; stdout and stderr go to files in `scratch`
// (no pipes, so a large output cannot block the child). Kills the child after 60 s.
Result run_npusim(const std::vector<std::string>& args, const fs::path& scratch) {
  Result r;
  r.command = "npusim";
  for (const auto& a : args) r.command += " " + a;
  const fs::path out_file = scratch / ".stdout", err_file = scratch / ".stderr";

  std::vector<char*> argv;
  std::string bin = NPUSIM_BIN;
  argv.push_back(bin.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) {
    r.err = "fork failed";
    return r;
  }
  if (pid == 0) {
    FILE* o = std::fopen(out_file.c_str(), "wb");
    FILE* e = std::fopen(err_file.c_str(), "wb");
    if (!o || !e || chdir(NPUSIM_SOURCE_DIR) != 0) _exit(126);
    dup2(fileno(o), STDOUT_FILENO);
    dup2(fileno(e), STDERR_FILENO);
    unsetenv("NPUSIM_CONFIG_DIR");  // use the presets of this source tree
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (true) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0) {
      r.err = "waitpid failed";
      return r;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? -WTERMSIG(status) : -1000;
  r.out = slurp(out_file);
  r.err = slurp(err_file);
  fs::remove(out_file);
  fs::remove(err_file);
  return r;
}

// "file:line:col" of the first non-comment line of `file` (relative to the source dir) holding
// `marker`; `col_offset` moves the column within the marker.
std::string loc_of(const std::string& file, const std::string& marker, int col_offset = 0) {
  std::ifstream in(fs::path(NPUSIM_SOURCE_DIR) / file);
  if (!in) {
    ADD_FAILURE() << "cannot read " << file;
    return file + ":?:?";
  }
  std::string line;
  std::string found;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.rfind("#", 0) == 0) continue;
    auto pos = line.find(marker);
    if (pos == std::string::npos) continue;
    if (!found.empty()) ADD_FAILURE() << "marker '" << marker << "' occurs more than once in " << file;
    found = file + ":" + std::to_string(n) + ":" + std::to_string(pos + 1 + col_offset);
  }
  if (found.empty()) {
    ADD_FAILURE() << "marker '" << marker << "' not found in " << file;
    return file + ":?:?";
  }
  return found;
}

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

class CliFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "npusim_cli_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    tmp_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  Result npusim(const std::vector<std::string>& args) { return run_npusim(args, tmp_); }

  // Files in the temp dir (the helper's own capture files are removed after each run).
  std::set<std::string> files_in(const fs::path& dir) const {
    std::set<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) out.insert(e.path().filename().string());
    return out;
  }

  // A config error: exit 2, stderr starts with "error: " and holds `where` ("file:line:col"),
  // then "key '<key>': " when `key` is given, and every string in `says`.
  void expect_config_error(const Result& r, const std::string& where, const std::string& key,
                           const std::vector<std::string>& says) {
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << "stderr must start with 'error: '" << r;
    std::string prefix = where + ": " + (key.empty() ? "" : "key '" + key + "': ");
    EXPECT_TRUE(contains(r.err, "error: " + prefix)) << "expected '" << prefix << "' in stderr" << r;
    for (const auto& s : says) EXPECT_TRUE(contains(r.err, s)) << "expected '" << s << "' in stderr" << r;
    EXPECT_EQ(r.out, "") << "nothing belongs on stdout on a config error" << r;
  }

  fs::path tmp_;
};

class BadInput : public CliFixture {};
class BadSet : public CliFixture {};
class BadTiling : public CliFixture {};
class Cli : public CliFixture {};

const std::string kBad = "tests/data/bad/";

// ---------------------------------------------------------------------------------------------
// Bad config files

TEST_F(BadInput, UnknownWorkloadKeySuggestsNearest) {
  const std::string f = kBad + "unknown_workload_key.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "dtyp:"), "workload.dtyp",
                      {"unknown key 'dtyp'", "(did you mean 'dtype'?)"});
}

TEST_F(BadInput, MisspelledRequiredKeyPointsAtTypoAndSuggestsNearest) {
  // `dtyp:` instead of `dtype:`: the message should name the typo and suggest the real key, not
  // only say that dtype is missing.
  const std::string f = kBad + "misspelled_required_key.yaml";
  Result r = npusim({"check", f});
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_TRUE(contains(r.err, "'dtyp'")) << "the misspelled key should be named" << r;
  EXPECT_TRUE(contains(r.err, "did you mean 'dtype'")) << r;
  EXPECT_TRUE(contains(r.err, loc_of(f, "dtyp:"))) << "should point at the typo" << r;
}

TEST_F(BadInput, UnknownTilingKeySuggestsNearest) {
  const std::string f = kBad + "unknown_tiling_key.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "l0x:"), "tiling.l0x",
                      {"unknown key 'l0x'", "(did you mean 'l0'?)"});
}

TEST_F(BadInput, UnknownTopLevelKeySuggestsNearest) {
  const std::string f = kBad + "unknown_top_key.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "tilling:"), "tilling",
                      {"unknown key 'tilling'", "(did you mean 'tiling'?)"});
}

TEST_F(BadInput, StringWhereIntegerExpected) {
  const std::string f = kBad + "wrong_type_int.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "\"abc\""), "workload.m",
                      {"expected an integer", "'abc'"});
}

TEST_F(BadInput, ScalarWhereListExpected) {
  const std::string f = kBad + "wrong_type_list.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "l1: 128", 4), "tiling.l1", {"expected a list", "found a scalar"});
}

TEST_F(BadInput, MissingRequiredKeyNamesItsPath) {
  // Reported at the workload map (its first key), with the full path of the missing key.
  const std::string f = kBad + "missing_required_key.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "op: gemm"), "workload.k", {"missing required key"});
}

TEST_F(BadInput, ZeroSizeRejected) {
  const std::string f = kBad + "zero_size.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "m: 0", 3), "workload.m", {"expected an integer > 0", "found 0"});
}

TEST_F(BadInput, NegativeSizeRejected) {
  const std::string f = kBad + "negative_size.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "-16"), "workload.n", {"expected an integer > 0", "found -16"});
}

TEST_F(BadInput, ZeroDimensionInShapeRejected) {
  const std::string f = kBad + "zero_shape.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "[0, 8]"), "workload.shape",
                      {"dimensions must be > 0", "found 0"});
}

TEST_F(BadInput, UnknownPresetInConfigSuggestsRealPreset) {
  const std::string f = kBad + "unknown_preset.yaml";
  Result r = npusim({"check", f});
  expect_config_error(r, loc_of(f, "ascend910b9"), "hardware",
                      {"unknown hardware preset 'ascend910b9'", "known presets: "});
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex("did you mean '([^']+)'"))) << r;
  EXPECT_NE(std::find(kPresets.begin(), kPresets.end(), m[1].str()), kPresets.end())
      << "suggested '" << m[1] << "' is not a preset" << r;
  for (const auto& p : kPresets) EXPECT_TRUE(contains(r.err, p)) << p << r;
}

TEST_F(BadInput, UnknownPresetInHwShowSuggestsRealPreset) {
  Result r = npusim({"hw", "show", "ascend910b9"});
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r;
  EXPECT_TRUE(contains(r.err, "unknown hardware preset 'ascend910b9'")) << r;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex("did you mean '([^']+)'"))) << r;
  EXPECT_NE(std::find(kPresets.begin(), kPresets.end(), m[1].str()), kPresets.end()) << r;
  EXPECT_EQ(r.out, "") << r;
}

TEST_F(BadInput, MissingConfigFile) {
  const std::string f = kBad + "does_not_exist.yaml";
  for (const char* cmd : {"check", "run"}) {
    Result r = npusim({cmd, f});
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r;
    EXPECT_TRUE(contains(r.err, f)) << r;
    EXPECT_TRUE(contains(r.err, "cannot open")) << r;
  }
}

TEST_F(BadInput, MalformedYamlExtraClosingBracketGivesPosition) {
  const std::string f = kBad + "extra_closing_bracket.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "]]", 1), "", {"malformed YAML"});
}

TEST_F(BadInput, MalformedYamlUnclosedBracketGivesLineAndColumn) {
  // The list opens on the `l1:` line; the parser may notice only on the next line.
  const std::string f = kBad + "malformed_yaml.yaml";
  Result r = npusim({"check", f});
  EXPECT_EQ(r.exit_code, 2) << r;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex("error: " + f + ":(\\d+):(\\d+): malformed YAML"))) << r;
  std::string open = loc_of(f, "[128");  // file:L:C
  int open_line = std::stoi(open.substr(f.size() + 1));
  int line = std::stoi(m[1]);
  EXPECT_TRUE(line == open_line || line == open_line + 1)
      << "reported line " << line << ", the bracket opens on line " << open_line << r;
  EXPECT_GT(std::stoi(m[2]), 0) << r;
}

TEST_F(BadInput, BadHardwareOverrideInConfigMap) {
  const std::string f = kBad + "bad_hw_override.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "-5"), "hardware.hbm.peak_bw_gbs",
                      {"expected a value > 0", "found -5"});
}

TEST_F(BadInput, UnknownOpSuggestsNearest) {
  const std::string f = kBad + "unknown_op.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "gemmm"), "workload.op",
                      {"unknown value 'gemmm'", "(did you mean 'gemm'?)", "expected one of: gemm"});
}

TEST_F(BadInput, UnknownDtypeSuggestsNearest) {
  const std::string f = kBad + "unknown_dtype.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "fp61"), "workload.dtype",
                      {"unknown value 'fp61'", "(did you mean 'fp16'?)", "expected one of: fp16, bf16, fp32, int8"});
}

TEST_F(BadInput, UnknownLayoutSuggestsNearest) {
  const std::string f = kBad + "unknown_layout.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "row_majr"), "workload.layout.a",
                      {"unknown value 'row_majr'", "(did you mean 'row_major'?)", "expected one of: row_major, col_major"});
}

// ---------------------------------------------------------------------------------------------
// Bad --set arguments (no file position: the "file" is the --set argument itself)

TEST_F(BadSet, MissingEqualsIsMalformed) {
  Result r = npusim({"check", kGoodGemm, "--set", "hardware.num_aic"});
  expect_config_error(r, "--set hardware.num_aic", "", {"malformed --set", "expected KEY.PATH=VALUE"});
}

TEST_F(BadSet, EmptyKeyIsMalformed) {
  Result r = npusim({"check", kGoodGemm, "--set", "=3"});
  expect_config_error(r, "--set =3", "", {"malformed --set", "expected KEY.PATH=VALUE"});
}

TEST_F(BadSet, EmptyPathComponentIsMalformed) {
  Result r = npusim({"check", kGoodGemm, "--set", "hardware..x=1"});
  expect_config_error(r, "--set hardware..x=1", "", {"malformed --set", "bad key path 'hardware..x'"});
}

TEST_F(BadSet, UnknownHardwareParamSuggestsNearest) {
  Result r = npusim({"check", kGoodGemm, "--set", "hardware.num_aicc=20"});
  expect_config_error(r, "--set hardware.num_aicc=20", "hardware.num_aicc",
                      {"unknown key 'num_aicc'", "(did you mean 'num_aic'?)"});
  // The same through `hw show`.
  Result s = npusim({"hw", "show", "ascend910b2", "--set", "hardware.num_aicc=20"});
  expect_config_error(s, "--set hardware.num_aicc=20", "hardware.num_aicc",
                      {"unknown key 'num_aicc'", "(did you mean 'num_aic'?)"});
}

TEST_F(BadSet, UnknownSectionSuggestsNearest) {
  Result r = npusim({"check", kGoodGemm, "--set", "tilng.stages=2"});
  expect_config_error(r, "--set tilng.stages=2", "tilng.stages",
                      {"unknown key path 'tilng.stages'", "(did you mean 'tiling'?)",
                       "expected hardware.<param>, workload.<key>, tiling.<key> or fusion"});
}

TEST_F(BadSet, WrongTypedValueSaysWhatWasExpected) {
  Result r = npusim({"check", kGoodGemm, "--set", "hardware.num_aic=abc"});
  expect_config_error(r, "--set hardware.num_aic=abc", "hardware.num_aic", {"expected a", "'abc'"});
  // num_aic has no unit, so the message must not read "expected a number in , found".
  EXPECT_FALSE(contains(r.err, " in ,")) << "garbled message (empty unit)" << r;
  Result t = npusim({"check", kGoodGemm, "--set", "tiling.stages=abc"});
  expect_config_error(t, "--set tiling.stages=abc", "tiling.stages", {"expected an integer", "'abc'"});
}

// ---------------------------------------------------------------------------------------------
// Tilings that do not fit the hardware: reported at the offending key with the reason.

TEST_F(BadTiling, L1Overflow) {
  const std::string f = kBad + "l1_overflow.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "[512, 512, 512]"), "tiling.l1",
                      {"tiling does not fit", "exceed L1 (524288 B)"});
}

TEST_F(BadTiling, L0AOverflow) {
  const std::string f = kBad + "l0a_overflow.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "[256, 128, 128]"), "tiling.l0",
                      {"tiling does not fit", "exceeds L0A (65536 B)"});
}

TEST_F(BadTiling, MisalignedL1Tile) {
  const std::string f = kBad + "l1_misaligned.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "[100, 128, 256]"), "tiling.l1",
                      {"tiling does not fit", "[100, 128, 256]", "multiples of 16"});
}

TEST_F(BadTiling, MoreCoresThanTheChipHas) {
  const std::string f = kBad + "too_many_cores.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "cores: 64", 7), "tiling.cores",
                      {"tiling does not fit", "cores must be 1..24", "found 64"});
}

TEST_F(BadTiling, VectorTileTooLargeForUb) {
  const std::string f = kBad + "ub_overflow.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "65536"), "tiling.tile_elems",
                      {"tiling does not fit", "exceed UB"});
}

TEST_F(BadTiling, RunFailsBeforeSimulatingAndWritesNothing) {
  const std::string f = kBad + "l1_overflow.yaml";
  fs::path json = tmp_ / "r.json";
  Result r = npusim({"run", f, "--json", json.string()});
  expect_config_error(r, loc_of(f, "[512, 512, 512]"), "tiling.l1", {"exceed L1"});
  EXPECT_TRUE(files_in(tmp_).empty()) << r;
}

// ---------------------------------------------------------------------------------------------
// Commands that succeed

TEST_F(Cli, VersionPrintsGitRevision) {
  Result r = npusim({"--version"});
  EXPECT_EQ(r.exit_code, 0) << r;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(npusim \S+ \(git (\S+)\))"))) << r;
  const std::string stamp = m[1];
  // In a git checkout the stamp is a commit hash of this repository ("-dirty" when the tree has
  // uncommitted changes); outside one (a source tarball) it is "unknown".
  const std::string git = "git -C '" + std::string(NPUSIM_SOURCE_DIR) + "' ";
  if (std::system((git + "rev-parse --is-inside-work-tree >/dev/null 2>&1").c_str()) != 0) {
    EXPECT_EQ(stamp, "unknown") << r;
    return;
  }
  std::smatch h;
  ASSERT_TRUE(std::regex_match(stamp, h, std::regex("([0-9a-f]{7,40})(-dirty)?"))) << "not a git revision" << r;
  EXPECT_EQ(std::system((git + "cat-file -e " + h[1].str() + "^{commit} 2>/dev/null").c_str()), 0)
      << "revision " << h[1] << " is not a commit of the repository" << r;
}

TEST_F(Cli, HwListShowsAllPresets) {
  Result r = npusim({"hw", "list"});
  ASSERT_EQ(r.exit_code, 0) << r;
  std::set<std::string> listed;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string first;
    if (words >> first) listed.insert(first);
  }
  for (const auto& p : kPresets) EXPECT_TRUE(listed.count(p)) << p << " not listed" << r;
}

// The value column of `hw show` for parameter `name` ("" if absent).
std::string shown_value(const std::string& out, const std::string& name) {
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string key, value;
    if (words >> key >> value && key == name) return value + (words >> key ? " " + key : "");
  }
  return "";
}

TEST_F(Cli, HwShowPrintsFrequencyWithUnit) {
  Result r = npusim({"hw", "show", "ascend910b2"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(shown_value(r.out, "freq_mhz"), "1800 MHz") << r;
  EXPECT_EQ(shown_value(r.out, "num_aic").substr(0, 2), "24") << r;
}

TEST_F(Cli, HwShowAppliesSetOverrides) {
  Result r = npusim({"hw", "show", "ascend910b2", "--set", "hardware.num_aic=20", "--set", "hardware.num_aiv=40"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(shown_value(r.out, "num_aic").substr(0, 3), "20 ") << r;
  EXPECT_EQ(shown_value(r.out, "num_aiv").substr(0, 3), "40 ") << r;
}

TEST_F(Cli, CheckAcceptsExampleConfig) {
  Result r = npusim({"check", kGoodGemm});
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(contains(r.out, kGoodGemm + ": ok")) << r;
  EXPECT_EQ(r.err, "") << r;
}

TEST_F(Cli, RunWritesJsonAndTraceWithoutLeftovers) {
  fs::path json = tmp_ / "report.json", trace = tmp_ / "trace.json";
  Result r = npusim({"run", kGoodGemm, "--json", json.string(), "--trace", trace.string(), "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, "") << "--quiet prints nothing" << r;
  EXPECT_EQ(files_in(tmp_), (std::set<std::string>{"report.json", "trace.json"})) << "leftover files" << r;
  auto report = nlohmann::json::parse(slurp(json), nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << "report is not valid JSON";
  EXPECT_EQ(report.value("config_file", ""), kGoodGemm);
  ASSERT_TRUE(report.contains("kernels") && report["kernels"].size() == 1) << report.dump(1).substr(0, 2000);
  auto tr = nlohmann::json::parse(slurp(trace), nullptr, false);
  ASSERT_FALSE(tr.is_discarded()) << "trace is not valid JSON";
  EXPECT_TRUE(tr.contains("traceEvents") && !tr["traceEvents"].empty());
}

TEST_F(Cli, FewerCoresWhenHardwareOverridden) {
  auto aic_used = [&](const std::vector<std::string>& extra) -> int {
    fs::path json = tmp_ / "r.json";
    std::vector<std::string> args{"run", "--quiet", "--json", json.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(kCubeGemm);
    Result r = npusim(args);
    EXPECT_EQ(r.exit_code, 0) << r;
    auto rep = nlohmann::json::parse(slurp(json), nullptr, false);
    if (rep.is_discarded() || !rep.contains("kernels") || rep["kernels"].empty()) {
      ADD_FAILURE() << "no report" << r;
      return -1;
    }
    return rep["kernels"][0]["cores"]["aic"].get<int>();
  };
  int full = aic_used({});
  int fewer = aic_used({"--set", "hardware.num_aic=20", "--set", "hardware.num_aiv=40"});
  EXPECT_EQ(full, 24);
  EXPECT_EQ(fewer, 20);
  // The table reports the run too.
  Result t = npusim({"run", "--set", "hardware.num_aic=20", "--set", "hardware.num_aiv=40", kCubeGemm});
  EXPECT_EQ(t.exit_code, 0) << t;
  EXPECT_TRUE(contains(t.out, "gemm_6144x6144x6144_fp16")) << t;
}

TEST_F(Cli, FailingConfigAmongSeveralWritesNothing) {
  const std::string bad = kBad + "unknown_tiling_key.yaml";
  fs::path out_dir = tmp_ / "reports";
  Result r = npusim({"run", "--quiet", kGoodGemm, bad, kCubeGemm, "--out", out_dir.string()});
  expect_config_error(r, loc_of(bad, "l0x:"), "tiling.l0x", {"unknown key 'l0x'"});
  EXPECT_TRUE(files_in(out_dir).empty()) << "partial output in " << out_dir << r;
  EXPECT_TRUE(files_in(tmp_).size() <= 1) << r;  // at most the (empty) reports folder

  fs::path json = tmp_ / "one.json";
  Result s = npusim({"run", "--quiet", kGoodGemm, bad, "--json", json.string()});
  EXPECT_EQ(s.exit_code, 2) << s;
  EXPECT_FALSE(fs::exists(json)) << s;
}

TEST_F(Cli, UnwritableJsonPathIsAUserError) {
  // A folder that does not exist is the user's mistake (exit 2), not a bug in npusim (exit 3).
  fs::path json = tmp_ / "no_such_dir" / "r.json";
  Result r = npusim({"run", "--quiet", kGoodGemm, "--json", json.string()});
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_TRUE(contains(r.err, json.string())) << r;
  EXPECT_FALSE(fs::exists(json)) << r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Functional runs: validate and run --functional

namespace {
class Functional : public CliFixture {};
}  // namespace

TEST_F(Functional, ValidatePassesAndTheReportCarriesValidation) {
  const fs::path json = tmp_ / "v.json";
  Result r = npusim({"validate", "configs/workloads/gemm_bf16_tails_validate.yaml", "--json", json.string()});
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(contains(r.out, "validation passed")) << r;
  auto j = nlohmann::json::parse(slurp(json));
  const auto& v = j.at("kernels").at(0).at("validation");
  for (const char* key : {"passed", "max_abs_err", "max_rel_err", "cos_diff", "mere", "mare", "ratio_to_same_precision",
                          "tolerance"})
    EXPECT_TRUE(v.contains(key)) << key;
  EXPECT_TRUE(v.at("passed").get<bool>());
}

TEST_F(Functional, RunWithFunctionalGivesTimingAndNumbersFromOneRun) {
  const fs::path json = tmp_ / "r.json", plain = tmp_ / "p.json";
  Result r = npusim({"run", "--functional", "--quiet", "configs/workloads/gemm_bf16_tails_validate.yaml", "--json",
                     json.string()});
  EXPECT_EQ(r.exit_code, 0) << r;
  Result p = npusim({"run", "--quiet", "configs/workloads/gemm_bf16_tails_validate.yaml", "--json", plain.string()});
  EXPECT_EQ(p.exit_code, 0) << p;
  auto fj = nlohmann::json::parse(slurp(json)), pj = nlohmann::json::parse(slurp(plain));
  EXPECT_TRUE(fj.at("kernels").at(0).contains("validation"));
  EXPECT_FALSE(pj.at("kernels").at(0).contains("validation"));
  EXPECT_EQ(fj.at("kernels").at(0).at("cycles"), pj.at("kernels").at(0).at("cycles"));
}

TEST_F(Functional, UnknownInputDistributionSuggestsNearest) {
  const std::string f = kBad + "unknown_distribution.yaml";
  expect_config_error(npusim({"validate", f}), loc_of(f, "normall"), "inputs.distribution",
                      {"unknown value 'normall'", "did you mean 'normal'", "uniform", "ones", "ties"});
}

TEST_F(Functional, NegativeSeedIsRejected) {
  const std::string f = kBad + "negative_seed.yaml";
  expect_config_error(npusim({"validate", f}), loc_of(f, "-4"), "inputs.seed", {"expected an integer >= 0"});
}

TEST_F(Functional, ADtypeThePathCannotCarryIsRejected) {
  const std::string f = kBad + "dtype_path_cannot_carry.yaml";
  expect_config_error(npusim({"validate", f}), loc_of(f, "fp32"), "workload.out_dtype",
                      {"FIXPIPE", "cannot carry fp32", "int32, fp16 or bf16"});
}

TEST_F(Functional, ADimensionBeyondTheIndexTypeIsRejected) {
  const std::string f = kBad + "dimension_beyond_index.yaml";
  expect_config_error(npusim({"validate", f}), loc_of(f, "2147483648"), "workload.m", {"2^30", "32-bit"});
}

// ---------------------------------------------------------------------------------------------
// Grouped GEMM (MoE experts)

namespace {
class Grouped : public CliFixture {};
}  // namespace

TEST_F(Grouped, TopkLargerThanTheExpertsIsRejected) {
  const std::string f = kBad + "topk_beyond_experts.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "9}"), "workload.routing.topk",
                      {"top-k 9 is larger than the 8 experts available"});
}

TEST_F(Grouped, NegativeGroupRowsAreRejected) {
  const std::string f = kBad + "negative_group_rows.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "[4, -1, 7]"), "workload.group_rows", {"must be >= 0"});
}

TEST_F(Grouped, RowsAndRoutingTogetherAreRejected) {
  const std::string f = kBad + "rows_and_routing.yaml";
  expect_config_error(npusim({"check", f}), loc_of(f, "{experts"), "workload.routing", {"either group_rows or routing"});
}

TEST_F(Grouped, TheReportCarriesTokensPerExpertAndImbalance) {
  const fs::path json = tmp_ / "g.json";
  Result r = npusim({"run", "--quiet", "configs/workloads/moe_gmm2_decode_zipf.yaml", "--json", json.string()});
  ASSERT_EQ(r.exit_code, 0) << r;
  auto k = nlohmann::json::parse(slurp(json)).at("kernels").at(0);
  const auto counts = k.at("routing").at("tokens_per_expert").get<std::vector<int64_t>>();
  EXPECT_EQ(counts.size(), 8u);
  int64_t total = 0;
  for (auto c : counts) total += c;
  EXPECT_EQ(total, 60 * 6);
  EXPECT_GE(k.at("routing").at("imbalance").get<double>(), 1.0);
}
