// Crash safety: a sweep and a tuning run killed with SIGKILL at random moments (seeded, spread
// over what is left of the run: startup, points or batches in flight, report writing or the
// winner's validation), then resumed, again and again. After every kill nothing published is
// damaged or lost; at the end the outputs equal an uninterrupted run's. Each test prints where its
// kills landed; NPUSIM_KILL_SEED picks another seed (named in every failure).
#include <fmt/format.h>
#include <sqlite3.h>

#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "robustness_support.hpp"
#include "tuner/db.hpp"

namespace npusim::robustness_test {
namespace {

constexpr int kKills = 10;

uint64_t kill_seed() {
  const char* s = std::getenv("NPUSIM_KILL_SEED");
  return s ? std::strtoull(s, nullptr, 10) : 20240807;
}

// The phases of an uninterrupted run, timed by watching its progress (points published, evaluations
// committed): the startup before the first unit of work lands, the work, and the tail after the
// last (reports written; the winner validated).
struct Timeline {
  double startup_s = 0, work_s = 0, tail_s = 0;
  double longest_step_s = 0;  // the longest wait for the next unit (the last, slowest point)
  size_t units = 0;
};

// Runs `launch` to completion, polling `progress` every 5 ms.
Timeline time_run(const Launch& launch, const fs::path& log_dir,
                  const std::function<size_t()>& progress) {
  Timeline t;
  const auto t0 = Clock::now();
  Child c(launch, log_dir);
  double first = -1, last = 0;
  while (c.running()) {
    const size_t n = progress();
    if (n > t.units) {
      const double now = seconds_since(t0);
      if (first >= 0) t.longest_step_s = std::max(t.longest_step_s, now - last);
      t.units = n, last = now;
      if (first < 0) first = last;
    }
    sleep_s(0.005);
  }
  const Result r = c.collect();
  EXPECT_EQ(r.exit_code, 0) << r;
  t.units = progress();
  const double total = seconds_since(t0);
  if (first < 0) first = last = total;
  t.startup_s = first, t.work_s = last - first, t.tail_s = total - last;
  return t;
}

// Where each kill lands: in the (re)start, then an equal share of the work left for the kills left
// before the last kTailKills, drawn uniformly from 0 to twice that; the last ones after the work
// left (at least the slowest unit), and once the work is done, in the tail. Kills fall in the
// startup, among the units of work and in the tail (the reports being written, the winner
// validated), and every life but the last few gets some work done.
constexpr int kTailKills = 2;
class KillSchedule {
 public:
  KillSchedule(const Timeline& t, uint64_t seed) : t_(t), rng_(seed) {}
  double next_delay(size_t units_done, int kills_left) {
    const double work_left =
        t_.units
            ? t_.work_s * static_cast<double>(t_.units - std::min(t_.units, units_done)) / t_.units
            : 0;
    const double start = t_.startup_s * uniform(0.6, 1.0);
    const double tail = uniform(0.0, 1.2) * t_.tail_s;
    if (work_left <= 0) return start + tail;
    if (kills_left <= kTailKills)
      return start + uniform(1.0, 1.3) * std::max(work_left, t_.longest_step_s) + tail;
    return start + uniform(0.0, 2.0) * work_left / (kills_left - kTailKills);
  }

 private:
  double uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng_);
  }
  Timeline t_;
  std::mt19937_64 rng_;
};

// Where the kills landed, judged by what the killed process got done.
struct KillStats {
  int kills = 0, in_startup = 0, mid_work = 0, in_tail = 0, after_end = 0;
  int with_temps = 0;    // a point folder or report left half written
  std::string progress;  // units done at each kill
  void count(bool running, size_t before, size_t after, size_t units) {
    ++kills;
    if (!running)
      ++after_end;
    else if (after > before)
      ++mid_work;
    else if (after >= units)
      ++in_tail;
    else
      ++in_startup;
    progress += " " + std::to_string(after);
  }
  int mid_run() const { return kills - after_end; }
  std::string summary(const std::string& what, const Timeline& t) const {
    std::string s = fmt::format("{}: {} SIGKILLs, {} mid-run ", what, kills, mid_run());
    s += fmt::format("({} after some of its work landed, {} before any, {} after all of it), ",
                     mid_work, in_startup, in_tail);
    s += fmt::format("{} after the run had ended", after_end);
    if (with_temps) s += fmt::format("; {} left a point folder or report half written", with_temps);
    s += fmt::format("; done at each kill:{} of {}", progress, t.units);
    return s + fmt::format("; uninterrupted: {:.2f} s startup, {:.2f} s work, {:.2f} s tail",
                           t.startup_s, t.work_s, t.tail_s);
  }
};

// ---------------------------------------------------------------------------------------------
// Sweeps

// What a sweep's published points hold; checks each is whole (its three files, a parsable report).
Files published_points(const fs::path& out) {
  Files all;
  for (const auto& id : point_ids(out)) {
    const fs::path dir = out / "points" / id;
    const Files f = files_under(dir);
    EXPECT_EQ(f.size(), 3u) << "point " << id << " is not whole";
    for (const char* name : {"config.yaml", "report.json", "log.txt"}) {
      auto it = f.find(name);
      EXPECT_TRUE(it != f.end() && !it->second.empty())
          << "point " << id << ": " << name << " missing or empty";
    }
    if (auto it = f.find("report.json"); it != f.end()) {
      EXPECT_FALSE(nlohmann::json::parse(it->second, nullptr, false).is_discarded())
          << "point " << id << ": bad report.json";
    }
    for (const auto& [name, bytes] : f) all[id + "/" + name] = bytes;
  }
  return all;
}

// A sweep's report files are only ever written whole, after every point ran: any that exists equals
// the uninterrupted run's (report.json with its points' wall_clock masked).
void expect_reports_whole(const fs::path& out, const fs::path& ref) {
  for (const char* name : {"report.csv", "report.h5", "report.html", "sweep.yaml"}) {
    if (fs::exists(out / name)) {
      EXPECT_TRUE(slurp(out / name) == slurp(ref / name))
          << name << " differs from the uninterrupted run's";
    }
  }
  if (fs::exists(out / "report.json")) {
    EXPECT_EQ(mask_wall_clock(slurp(out / "report.json")),
              mask_wall_clock(slurp(ref / "report.json")));
  }
}

TEST(SweepKill, RandomSigkillsLoseNoFinishedPointAndEndWithTheUninterruptedReports) {
  SCOPED_TRACE(fmt::format("NPUSIM_KILL_SEED={}", kill_seed()));
  const fs::path dir = scratch("sweep_kill"), ref = dir / "ref", out = dir / "killed";
  const std::string sweep = "tests/robustness/data/kill_sweep.yaml";
  const Timeline timeline = time_run({{"sweep", sweep, "--out", ref.string(), "--jobs", "2"}}, dir,
                                     [&] { return point_ids(ref).size(); });
  const size_t total = point_ids(ref).size();
  ASSERT_EQ(total, 16u);

  KillSchedule schedule(timeline, kill_seed());
  Files seen;  // every published point file, as first seen after a kill
  KillStats st;
  for (int i = 0; i < kKills; ++i) {
    const size_t before = point_ids(out).size();
    const double delay = schedule.next_delay(before, kKills - i);
    Child c({{"sweep", sweep, "--out", out.string(), "--jobs", "2", "--resume"}}, dir);
    sleep_s(delay);
    const bool running = c.running();
    c.kill_now();
    if (!running) {
      const Result r = c.collect();
      EXPECT_EQ(r.exit_code, 0) << r;
    }
    st.count(running, before, point_ids(out).size(), total);
    if (!names_in(out / "points", true).empty() || !names_in(out, true).empty()) ++st.with_temps;
    SCOPED_TRACE("kill " + std::to_string(i) + " after " + std::to_string(delay) + " s");
    const Files now = published_points(out);
    for (const auto& [file, bytes] : seen) {
      auto it = now.find(file);
      ASSERT_TRUE(it != now.end()) << file << " was published before and is gone";
      EXPECT_TRUE(it->second == bytes) << file << " changed after it was published";
    }
    seen.insert(now.begin(), now.end());
    expect_reports_whole(out, ref);
  }

  const Result last =
      run({{"sweep", sweep, "--out", out.string(), "--jobs", "2", "--resume"}}, dir);
  ASSERT_EQ(last.exit_code, 0) << last;
  std::cout << st.summary("sweep", timeline) << "\n";
  RecordProperty("kills", st.kills);
  RecordProperty("mid_run", st.mid_run());
  EXPECT_GE(st.mid_run(), kKills / 2) << "most kills should land while the sweep runs";

  EXPECT_EQ(point_ids(out), point_ids(ref));
  const Files final_points = published_points(out);
  for (const auto& [file, bytes] : seen)
    EXPECT_TRUE(final_points.at(file) == bytes) << file << " changed";
  // No temporaries left for a reader to trip on, in OUT or in OUT/points.
  EXPECT_TRUE(names_in(out, true).empty()) << *names_in(out, true).begin();
  EXPECT_TRUE(names_in(out / "points", true).empty()) << *names_in(out / "points", true).begin();
  EXPECT_EQ(names_in(out, false), names_in(ref, false));
  for (const char* name : {"report.csv", "report.h5", "report.html", "report.json", "sweep.yaml"})
    ASSERT_TRUE(fs::exists(out / name)) << name;
  expect_reports_whole(out, ref);
  // The points themselves: the same config and results; only their wall time differs.
  for (const auto& id : point_ids(ref)) {
    const fs::path a = ref / "points" / id, b = out / "points" / id;
    EXPECT_EQ(slurp(a / "config.yaml"), slurp(b / "config.yaml")) << id;
    EXPECT_EQ(mask_wall_clock(slurp(a / "report.json")), mask_wall_clock(slurp(b / "report.json")))
        << id;
    EXPECT_EQ(mask_log_seconds(slurp(a / "log.txt")), mask_log_seconds(slurp(b / "log.txt"))) << id;
  }
}

// ---------------------------------------------------------------------------------------------
// Tuning runs

// The evaluations table, by key; empty while the database is being created.
using Rows = std::map<std::string, std::string>;
Rows stored_rows(const fs::path& db) {
  Rows rows;
  sqlite3* h = nullptr;
  if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(h, 5000);
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(h,
                           "SELECT hardware || '|' || kernel || '|' || tiling, status || '|' || "
                           "quote(cycles) || '|' || reason"
                           " FROM evaluations",
                           -1, &s, nullptr) == SQLITE_OK)
      while (sqlite3_step(s) == SQLITE_ROW)
        rows[reinterpret_cast<const char*>(sqlite3_column_text(s, 0))] =
            reinterpret_cast<const char*>(sqlite3_column_text(s, 1));
    sqlite3_finalize(s);
  }
  sqlite3_close(h);
  return rows;
}

size_t count_rows(const fs::path& db) {
  size_t n = 0;
  sqlite3* h = nullptr;
  if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(h, 5000);
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(h, "SELECT count(*) FROM evaluations", -1, &s, nullptr) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
      n = static_cast<size_t>(sqlite3_column_int64(s, 0));
    sqlite3_finalize(s);
  }
  sqlite3_close(h);
  return n;
}

std::string integrity(const fs::path& db) {
  sqlite3* h = nullptr;
  std::string verdict = "cannot open";
  if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(h, 5000);
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &s, nullptr) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
      verdict = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    else
      verdict = sqlite3_errmsg(h);
    sqlite3_finalize(s);
  }
  sqlite3_close(h);
  return verdict;
}

// best.json without what depends on the database's history (how many evaluations were reused).
nlohmann::json stable_best(const fs::path& file) {
  nlohmann::json j = nlohmann::json::parse(mask_wall_clock(slurp(file)));
  j["evaluations"].erase("reused_from_db");
  return j;
}

TEST(TuneKill, RandomSigkillsKeepEveryCommittedEvaluationAndEndWithTheUninterruptedPick) {
  SCOPED_TRACE(fmt::format("NPUSIM_KILL_SEED={}", kill_seed()));
  const fs::path dir = scratch("tune_kill"), ref = dir / "ref", out = dir / "killed";
  fs::create_directories(ref);
  fs::create_directories(out);
  spit(dir / "gemm.yaml",
       "hardware: ascend910b2\nworkload: {op: gemm, m: 1024, n: 1024, k: 2048, dtype: fp16}\n");
  // Relative --db and --json in two folders: the same command line, so best.json compares whole.
  const std::vector<std::string> args = {"tune",       (dir / "gemm.yaml").string(),
                                         "--strategy", "random",
                                         "--budget",   "192",
                                         "--seed",     "11",
                                         "--quiet",    "--db",
                                         "t.sqlite",   "--json",
                                         "best.json"};
  const Timeline timeline =
      time_run({args, ref}, dir, [&] { return count_rows(ref / "t.sqlite"); });
  ASSERT_EQ(timeline.units, 192u);

  KillSchedule schedule(timeline, kill_seed() + 1);
  KillStats st;
  for (int i = 0; i < kKills; ++i) {
    const size_t before = count_rows(out / "t.sqlite");
    const double delay = schedule.next_delay(before, kKills - i);
    Child c({args, out}, dir);
    sleep_s(delay);
    // What is committed now must survive the kill that follows.
    const Rows committed = stored_rows(out / "t.sqlite");
    const bool running = c.running();
    c.kill_now();
    if (!running) {
      const Result r = c.collect();
      EXPECT_EQ(r.exit_code, 0) << r;
    }
    st.count(running, before, count_rows(out / "t.sqlite"), timeline.units);
    SCOPED_TRACE("kill " + std::to_string(i) + " after " + std::to_string(delay) + " s");
    if (!fs::exists(out / "t.sqlite")) continue;  // killed before it created the database
    ASSERT_NO_THROW(
        { tuner::TuningDb reopened((out / "t.sqlite").string()); });  // the tuner's own check
    ASSERT_EQ(integrity(out / "t.sqlite"), "ok");
    const Rows after = stored_rows(out / "t.sqlite");
    for (const auto& [key, value] : committed) {
      auto it = after.find(key);
      ASSERT_TRUE(it != after.end()) << "a committed evaluation was lost: " << key;
      EXPECT_EQ(it->second, value) << key;
    }
    // best.json, when written, is whole.
    if (fs::exists(out / "best.json")) {
      EXPECT_FALSE(nlohmann::json::parse(slurp(out / "best.json"), nullptr, false).is_discarded());
    }
  }

  const Result last = run({args, out}, dir);
  ASSERT_EQ(last.exit_code, 0) << last;
  std::cout << st.summary("tune", timeline) << "\n";
  RecordProperty("kills", st.kills);
  RecordProperty("mid_run", st.mid_run());
  EXPECT_GE(st.mid_run(), kKills / 2) << "most kills should land while the tuner runs";

  EXPECT_EQ(integrity(out / "t.sqlite"), "ok");
  // Every evaluation the uninterrupted run stored, with the same result, and nothing else.
  EXPECT_EQ(stored_rows(out / "t.sqlite"), stored_rows(ref / "t.sqlite"));
  const auto a = stable_best(ref / "best.json"), b = stable_best(out / "best.json");
  EXPECT_EQ(b["best"], a["best"]);
  EXPECT_EQ(b["trajectory"], a["trajectory"]);
  EXPECT_EQ(b, a);
  EXPECT_GT(
      nlohmann::json::parse(slurp(out / "best.json"))["evaluations"]["reused_from_db"].get<int>(),
      0);
}

}  // namespace
}  // namespace npusim::robustness_test
