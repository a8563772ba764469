// The tuner: enumeration of a space (counts, pins), strategies (seeded, deterministic), the
// database (reuse, newer schema, corrupt file), winner validation, and the tune command's exit
// codes, including a tuning run killed with SIGKILL and restarted.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "app/session.hpp"
#include "common/errors.hpp"
#include "test_support.hpp"
#include "tuner/db.hpp"
#include "tuner/strategy.hpp"
#include "tuner/tuner.hpp"

namespace npusim {
namespace {

namespace fs = std::filesystem;

std::string gemm_config(int64_t m, int64_t n, int64_t k, const std::string& hw = "ascend910b2") {
  return test::write_temp_config("tune_gemm", fmt::format("hardware: {}\nworkload: {{op: gemm, m: {}, n: {}, k: {}, dtype: fp16}}\n", hw, m, n, k));
}

fs::path scratch(const std::string& name) {
  fs::path p = fs::path(::testing::TempDir()) / fmt::format("tuner_{}_{}", name, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs the npusim binary; returns the exit code, with stderr in `err`.
int npusim(const std::string& args, std::string* err = nullptr, std::string* out = nullptr) {
  const fs::path dir = scratch("cli");
  const std::string cmd = fmt::format("cd {} && {} {} >{}/o 2>{}/e", NPUSIM_SOURCE_DIR, NPUSIM_BIN, args, dir.string(), dir.string());
  const int rc = std::system(cmd.c_str());
  if (err) *err = slurp(dir / "e");
  if (out) *out = slurp(dir / "o");
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(TuningSpace, GemmEnumerationCountsEveryPrunedPointOnce) {
  app::LoadedRun run = app::load_run(gemm_config(1024, 1024, 1024));
  const kernels::SearchSpace space = run.kernel->search_space(run.hw);
  tuner::ValidPoints pts(space);
  double pruned = 0;
  for (const auto& [reason, n] : pts.pruned()) pruned += n;
  EXPECT_GT(pts.raw_size(), 1e7);
  EXPECT_GT(pts.size(), 1000u);
  EXPECT_DOUBLE_EQ(pruned + static_cast<double>(pts.size()), pts.raw_size());
  // The constraints are check_gemm_tiling's: a sample of valid points all pass can_implement.
  for (size_t i = 0; i < pts.size(); i += pts.size() / 200 + 1) {
    auto k = tuner::build_candidate(*run.kernel, space.tiling(pts.point(i)), run.hw);
    EXPECT_TRUE(k->can_implement(run.hw).ok) << space.tiling(pts.point(i)).dump() << ": " << k->can_implement(run.hw).reason;
  }
}

TEST(TuningSpace, PinsRestrictTheDomainAndRejectValuesOutsideIt) {
  app::LoadedRun run = app::load_run(gemm_config(512, 512, 512));
  const kernels::SearchSpace space = run.kernel->search_space(run.hw);
  tuner::ValidPoints pinned(space, {{"stages", 2}, {"m1", 128}});
  ASSERT_GT(pinned.size(), 0u);
  for (size_t i = 0; i < pinned.size(); ++i) {
    EXPECT_EQ(pinned.point(i)[space.index_of("stages")], 2);
    EXPECT_EQ(pinned.point(i)[space.index_of("m1")], 128);
  }
  EXPECT_THROW(tuner::ValidPoints(space, {{"stages", 9}}), ConfigError);
  try {
    tuner::ValidPoints(space, {{"stagse", 2}});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'stages'"), std::string::npos) << e.what();
  }
}

TEST(Tuner, EveryStrategyIsSeededAndNeverPicksWorseThanTheConfiguredTiling) {
  app::LoadedRun run = app::load_run(gemm_config(128, 256, 256));
  for (const auto& s : tuner::strategy_registry()) {
    tuner::TuneOptions opt;
    opt.strategy = s.name, opt.budget = 20, opt.seed = 3;
    opt.pins = {{"m0", 64}, {"n0", 64}};  // no tiny L0 tiles: keeps each simulation short
    tuner::TuneResult a = tuner::tune_kernel(*run.kernel, run.hw, opt);
    tuner::TuneResult b = tuner::tune_kernel(*run.kernel, run.hw, opt);
    ASSERT_EQ(a.candidates.size(), b.candidates.size()) << s.name;
    for (size_t i = 0; i < a.candidates.size(); ++i) EXPECT_EQ(a.candidates[i].tiling, b.candidates[i].tiling) << s.name << " #" << i;
    ASSERT_TRUE(a.best) << s.name;
    EXPECT_EQ(a.best->tiling, b.best->tiling);
    // The trajectory never gets worse and ends at the best.
    for (size_t i = 1; i < a.trajectory.size(); ++i) EXPECT_LE(a.trajectory[i].second, a.trajectory[i - 1].second);
    EXPECT_EQ(std::min(a.trajectory.back().second, a.default_cycles), a.best->cycles);
    EXPECT_LE(a.best->cycles, a.default_cycles);
    EXPECT_FALSE(a.not_stored.empty()) << "no validator, so nothing may be stored";
  }
  tuner::ValidPoints none(kernels::SearchSpace{});
  EXPECT_THROW(tuner::make_strategy("anealing", {&none, 1, 1, [](size_t) { return false; }}), ConfigError);
}

TEST(Tuner, ExhaustiveFindsTheTrueMinimumOfASmallSpace) {
  app::LoadedRun run = app::load_run(gemm_config(128, 256, 512));
  tuner::TuneOptions opt;
  opt.strategy = "exhaustive", opt.budget = 100000;
  opt.pins = {{"swizzle_offset", 1}, {"swizzle_direction", 0}, {"stages", 2}, {"k0", 64}};
  tuner::TuneResult r = tuner::tune_kernel(*run.kernel, run.hw, opt);
  EXPECT_EQ(r.evaluated, r.valid_size);
  double min = 1e300;
  for (const auto& c : r.candidates)
    if (c.status == "ok") min = std::min(min, c.cycles);
  ASSERT_TRUE(r.best);
  EXPECT_EQ(r.best->cycles, min);
  EXPECT_LE(r.best->cycles, r.default_cycles);
}

TEST(Tuner, AFailingWinnerIsRejectedAndTheNextCandidateValidated) {
  app::LoadedRun run = app::load_run(gemm_config(128, 128, 256));
  tuner::TuneOptions opt;
  opt.strategy = "random", opt.budget = 16;
  int calls = 0;
  opt.validate = [&](std::unique_ptr<kernels::Kernel>) {
    tuner::ValidationOutcome v;
    v.ran = true, v.passed = ++calls > 1;  // the fastest fails, the second passes
    v.report = {{"passed", v.passed}};
    return v;
  };
  const fs::path dir = scratch("reject");
  tuner::TuningDb db((dir / "t.sqlite").string());
  opt.db = &db;
  tuner::TuneResult r = tuner::tune_kernel(*run.kernel, run.hw, opt);
  ASSERT_EQ(r.rejected.size(), 1u);
  ASSERT_TRUE(r.best);
  EXPECT_TRUE(r.not_stored.empty());
  EXPECT_GE(r.best->cycles, r.rejected[0]["cycles"].get<double>());
  auto stored = db.best(r.hardware, r.kernel);
  ASSERT_TRUE(stored);
  EXPECT_EQ(stored->tiling, r.best->tiling);

  // A validator that always fails: nothing is stored.
  opt.validate = [](std::unique_ptr<kernels::Kernel>) { return tuner::ValidationOutcome{true, false, {}, ""}; };
  tuner::TuningDb db2((dir / "t2.sqlite").string());
  opt.db = &db2;
  tuner::TuneResult none = tuner::tune_kernel(*run.kernel, run.hw, opt);
  EXPECT_FALSE(none.not_stored.empty());
  EXPECT_FALSE(db2.best(none.hardware, none.kernel));
}

TEST(TuningDb, ASecondRunReusesEveryEvaluationAndPicksTheSame) {
  app::LoadedRun run = app::load_run(gemm_config(256, 256, 512));
  const fs::path dir = scratch("reuse");
  tuner::TuningDb db((dir / "t.sqlite").string());
  tuner::TuneOptions opt;
  opt.strategy = "anneal", opt.budget = 24, opt.db = &db;
  tuner::TuneResult first = tuner::tune_kernel(*run.kernel, run.hw, opt);
  tuner::TuneResult second = tuner::tune_kernel(*run.kernel, run.hw, opt);
  EXPECT_EQ(first.reused, 0u);
  EXPECT_EQ(second.reused, second.evaluated);
  EXPECT_EQ(first.best->tiling, second.best->tiling);
  EXPECT_EQ(db.evaluations(first.hardware, first.kernel).size(), first.evaluated);
}

TEST(TuningDb, RefusesANewerSchemaAndLeavesACorruptFileUntouched) {
  const fs::path dir = scratch("db");
  const std::string newer = (dir / "newer.sqlite").string();
  { tuner::TuningDb db(newer); }
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(newer.c_str(), &raw), SQLITE_OK);
  sqlite3_exec(raw, "PRAGMA user_version=99", nullptr, nullptr, nullptr);
  sqlite3_close(raw);
  try {
    tuner::TuningDb db(newer);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("newer"), std::string::npos) << e.what();
  }
  const std::string corrupt = (dir / "corrupt.sqlite").string();
  std::ofstream(corrupt) << "this is not a database\n";
  const std::string before = slurp(corrupt);
  EXPECT_THROW(tuner::TuningDb db(corrupt), ConfigError);
  EXPECT_EQ(slurp(corrupt), before);
}

TEST(TuneCommand, BadInputExitsTwoWithTheReason) {
  const std::string cfg = gemm_config(256, 256, 256);
  const fs::path dir = scratch("bad");
  std::string err;
  EXPECT_EQ(npusim("tune " + cfg + " --strategy aneal", &err), 2);
  EXPECT_NE(err.find("did you mean 'anneal'"), std::string::npos) << err;
  EXPECT_EQ(npusim("tune " + cfg + " --budget 0", &err), 2);
  EXPECT_NE(err.find("budget"), std::string::npos) << err;
  EXPECT_EQ(npusim("tune " + cfg + " --pin stages=17", &err), 2);
  EXPECT_NE(err.find("outside its domain"), std::string::npos) << err;
  const std::string corrupt = (dir / "c.sqlite").string();
  std::ofstream(corrupt) << "garbage";
  EXPECT_EQ(npusim("tune " + cfg + " --db " + corrupt, &err), 2);
  EXPECT_NE(err.find("left untouched"), std::string::npos) << err;
  EXPECT_EQ(slurp(corrupt), "garbage");
  std::string out;
  EXPECT_EQ(npusim("tune --list-strategies", &err, &out), 0);
  for (const auto& s : tuner::strategy_registry()) EXPECT_NE(out.find(s.name), std::string::npos);
}

TEST(TuneCommand, WritesBestJsonWithAValidatedWinnerAndItsReport) {
  const std::string cfg = gemm_config(256, 384, 512);
  const fs::path dir = scratch("best");
  const std::string db = (dir / "t.sqlite").string(), best = (dir / "best.json").string();
  std::string err;
  ASSERT_EQ(npusim(fmt::format("tune {} --budget 24 --seed 1 --db {} --json {} --quiet", cfg, db, best), &err), 0) << err;
  auto j = nlohmann::json::parse(slurp(best));
  EXPECT_TRUE(j["best"]["validated"].get<bool>());
  EXPECT_TRUE(j["report"]["kernels"][0]["validation"]["passed"].get<bool>());
  EXPECT_EQ(j["evaluations"]["total"], 24);
  EXPECT_EQ(j["trajectory"].size(), 24u);
  // run --tuned picks the stored tiling.
  std::string out;
  ASSERT_EQ(npusim(fmt::format("run {} --tuned {} --json {}", cfg, db, (dir / "run.json").string()), &err, &out), 0) << err;
  auto r = nlohmann::json::parse(slurp(dir / "run.json"));
  EXPECT_EQ(r["kernels"][0]["cycles"].get<double>(), std::ceil(j["best"]["cycles"].get<double>()));
  ASSERT_EQ(npusim(fmt::format("tune --db {} --export {}", db, (dir / "e.json").string()), &err), 0) << err;
  EXPECT_EQ(nlohmann::json::parse(slurp(dir / "e.json"))["best"].size(), 1u);
}

int64_t stored_evaluations(const std::string& db) {
  sqlite3* raw = nullptr;
  int64_t n = 0;
  if (sqlite3_open_v2(db.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(raw, "SELECT count(*) FROM evaluations", -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
      n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  sqlite3_close(raw);
  return n;
}

// A tuning run killed with SIGKILL mid-way keeps every committed batch; the rerun reuses them and
// ends with the same pick as a run that was never killed.
TEST(TuneCommand, SurvivesSigkillAndResumesFromTheDatabase) {
  const std::string cfg = gemm_config(512, 512, 1024);
  const fs::path dir = scratch("kill");
  const std::string db = (dir / "k.sqlite").string(), ref_db = (dir / "ref.sqlite").string();
  const std::string args = " --strategy random --budget 96 --seed 5 --quiet";
  std::string err;
  ASSERT_EQ(npusim("tune " + cfg + args + " --db " + ref_db + " --json " + (dir / "ref.json").string(), &err), 0) << err;
  for (int attempt = 0; attempt < 3; ++attempt) {
    pid_t pid = fork();
    if (pid == 0) {
      if (chdir(NPUSIM_SOURCE_DIR) != 0) _exit(126);
      freopen("/dev/null", "w", stdout);
      execl(NPUSIM_BIN, NPUSIM_BIN, "tune", cfg.c_str(), "--strategy", "random", "--budget", "96", "--seed", "5", "--quiet",
            "--db", db.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Kill once the run has committed a few batches more than the attempt before (or after 20 s).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline && stored_evaluations(db) < 8 * (attempt + 1))
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(7 * attempt));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    { tuner::TuningDb check(db); }  // opens cleanly: not corrupted
  }
  ASSERT_EQ(npusim("tune " + cfg + args + " --db " + db + " --json " + (dir / "resumed.json").string(), &err), 0) << err;
  auto ref = nlohmann::json::parse(slurp(dir / "ref.json")), resumed = nlohmann::json::parse(slurp(dir / "resumed.json"));
  EXPECT_EQ(resumed["best"]["tiling"], ref["best"]["tiling"]);
  EXPECT_EQ(resumed["trajectory"], ref["trajectory"]);
  EXPECT_GE(resumed["evaluations"]["reused_from_db"].get<int>(), 24);
}

}  // namespace
}  // namespace npusim

namespace npusim {
namespace {

// A grouped GEMM too big to run functionally is validated on a few of its experts with the same
// tiling: the fullest, the emptiest non-empty and an empty one.
TEST(TuneCommand, ValidatesATooBigGroupedGemmOnAReducedProblem) {
  const std::string cfg = test::write_temp_config(
      "tune_gg", "hardware: ascend910b2\nworkload: {op: grouped_gemm, n: 1024, k: 1024, dtype: bf16,\n"
                 "  routing: {experts: 16, tokens: 24, topk: 2, distribution: zipf, s: 1.2, seed: 7}}\n");
  app::LoadedRun run = app::load_run(cfg);
  auto reduced = run.kernel->reduced_for_validation();
  ASSERT_TRUE(reduced);
  const auto rows = nlohmann::json(reduced->details())["routing"]["tokens_per_expert"].get<std::vector<int64_t>>();
  ASSERT_LE(rows.size(), 3u);
  const auto all = nlohmann::json(run.kernel->details())["routing"]["tokens_per_expert"].get<std::vector<int64_t>>();
  EXPECT_EQ(*std::max_element(rows.begin(), rows.end()), *std::max_element(all.begin(), all.end()));

  const fs::path dir = scratch("reduced");
  const std::string best = (dir / "best.json").string();
  std::string err;
  ASSERT_EQ(npusim(fmt::format("tune {} --budget 8 --strategy random --quiet --json {}", cfg, best), &err), 0) << err;
  // The same with a memory limit the full problem does not fit in.
  const std::string limited = fmt::format("NPUSIM_MAX_FUNCTIONAL_BYTES={} ", 300e6);
  ASSERT_EQ(std::system(fmt::format("cd {} && {}{} tune {} --budget 8 --strategy random --quiet --json {} >/dev/null 2>&1",
                                    NPUSIM_SOURCE_DIR, limited, NPUSIM_BIN, cfg, best).c_str()), 0);
  auto j = nlohmann::json::parse(slurp(best));
  EXPECT_TRUE(j["stored"].get<bool>() || !j.contains("not_stored"));
  EXPECT_TRUE(j["validation"]["passed"].get<bool>());
  EXPECT_NE(j["validation"]["validated_on"].get<std::string>().find("grouped_gemm_3x"), std::string::npos) << j["validation"].dump();
}

}  // namespace
}  // namespace npusim

namespace npusim {
namespace {

// Ctrl-C: the batch in flight finishes and is stored, the best so far is written (not stored as
// best), and the exit code is 130.
TEST(TuneCommand, InterruptStoresTheBatchInFlightAndReportsTheBestSoFar) {
  const std::string cfg = gemm_config(512, 512, 1024);
  const fs::path dir = scratch("sigint");
  const std::string db = (dir / "i.sqlite").string(), best = (dir / "best.json").string();
  pid_t pid = fork();
  if (pid == 0) {
    if (chdir(NPUSIM_SOURCE_DIR) != 0) _exit(126);
    if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(126);
    execl(NPUSIM_BIN, NPUSIM_BIN, "tune", cfg.c_str(), "--strategy", "random", "--budget", "100000", "--quiet", "--db",
          db.c_str(), "--json", best.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline && stored_evaluations(db) < 16)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  auto j = nlohmann::json::parse(slurp(best));
  EXPECT_TRUE(j["interrupted"].get<bool>());
  EXPECT_FALSE(j["stored"].get<bool>());
  EXPECT_FALSE(j["best"].is_null());
  EXPECT_EQ(stored_evaluations(db), j["evaluations"]["total"].get<int64_t>());
}

}  // namespace
}  // namespace npusim
