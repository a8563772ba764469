#include "tuner/db.hpp"

#include <fmt/format.h>
#include <sqlite3.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/errors.hpp"

namespace npusim::tuner {

namespace {

// A prepared statement that finalizes itself.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK)
      throw InternalError(fmt::format("tuning database: {} ({})", sqlite3_errmsg(db), sql));
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, double v) {
    sqlite3_bind_double(s_, i, v);
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  bool step() {
    const int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw ConfigError(fmt::format("tuning database: {}", sqlite3_errmsg(db_)));
  }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  std::string text(int c) const {
    const auto* p = sqlite3_column_text(s_, c);
    return p ? reinterpret_cast<const char*>(p) : "";
  }
  double real(int c) const { return sqlite3_column_double(s_, c); }
  int64_t integer(int c) const { return sqlite3_column_int64(s_, c); }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

nlohmann::json parse_or_null(const std::string& text) {
  return text.empty() ? nlohmann::json() : nlohmann::json::parse(text, nullptr, false);
}

}  // namespace

TuningDb::TuningDb(const std::string& path) : path_(path) {
  auto fail = [&](const std::string& why) -> void {
    throw ConfigError(SourceLoc{path, 0, 0, "--db"}, why + "; the file was left untouched");
  };
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && std::filesystem::file_size(path, ec) > 0) {
    char head[16] = {};
    std::ifstream(path, std::ios::binary).read(head, sizeof head);
    if (std::memcmp(head, "SQLite format 3", 16) != 0) fail("not an SQLite database (corrupt or another kind of file)");
  }
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr) != SQLITE_OK) {
    std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw ConfigError(SourceLoc{path, 0, 0, "--db"}, "cannot open the tuning database: " + why);
  }
  try {
    sqlite3_busy_timeout(db_, 10000);
    {
      Stmt check(db_, "PRAGMA quick_check");
      std::string verdict;
      try {
        verdict = check.step() ? check.text(0) : "no answer";
      } catch (const ConfigError& e) {
        verdict = e.what();
      }
      if (verdict != "ok") fail("the tuning database is damaged (" + verdict + ")");
    }
    int64_t v = 0;
    {
      Stmt version(db_, "PRAGMA user_version");
      version.step();
      v = version.integer(0);
    }
    if (v > kDbSchemaVersion)
      fail(fmt::format("the tuning database has schema {}, newer than this npusim's {} (written by a newer npusim)", v, kDbSchemaVersion));
    exec("PRAGMA journal_mode=WAL");
    // WAL with synchronous=NORMAL: a committed batch survives the process being killed.
    exec("PRAGMA synchronous=NORMAL");
    exec("CREATE TABLE IF NOT EXISTS hardware(fingerprint TEXT PRIMARY KEY, name TEXT, parameters TEXT)");
    exec("CREATE TABLE IF NOT EXISTS evaluations(hardware TEXT, kernel TEXT, tiling TEXT, status TEXT, cycles REAL,"
         " reason TEXT, PRIMARY KEY(hardware, kernel, tiling)) WITHOUT ROWID");
    exec("CREATE TABLE IF NOT EXISTS best(hardware TEXT, kernel TEXT, hardware_name TEXT, op TEXT, signature TEXT,"
         " tiling TEXT, cycles REAL, time_us REAL, default_cycles REAL, validation TEXT, strategy TEXT, seed INTEGER,"
         " evaluations INTEGER, tool_version TEXT, PRIMARY KEY(hardware, kernel))");
    if (v == 0) exec(fmt::format("PRAGMA user_version={}", kDbSchemaVersion).c_str());
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

TuningDb::~TuningDb() { sqlite3_close(db_); }

void TuningDb::exec(const char* sql) const {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string why = err ? err : "unknown error";
    sqlite3_free(err);
    throw ConfigError(SourceLoc{path_, 0, 0, "--db"}, fmt::format("tuning database: {} ({})", why, sql));
  }
}

std::vector<StoredEvaluation> TuningDb::evaluations(const std::string& hardware, const std::string& kernel) const {
  Stmt s(db_, "SELECT tiling, status, cycles, reason FROM evaluations WHERE hardware=? AND kernel=?");
  s.bind(1, hardware).bind(2, kernel);
  std::vector<StoredEvaluation> out;
  while (s.step()) out.push_back({s.text(0), s.text(1), s.real(2), s.text(3)});
  return out;
}

void TuningDb::record(const std::string& hardware, const std::string& kernel, const std::vector<StoredEvaluation>& batch) {
  if (batch.empty()) return;
  exec("BEGIN IMMEDIATE");
  try {
    Stmt s(db_, "INSERT OR REPLACE INTO evaluations VALUES(?,?,?,?,?,?)");
    for (const auto& e : batch) {
      s.bind(1, hardware).bind(2, kernel).bind(3, e.tiling).bind(4, e.status).bind(5, e.cycles).bind(6, e.reason);
      s.step();
      s.reset();
    }
    exec("COMMIT");
  } catch (...) {
    // Best effort: the error to report is the one that stopped the batch (a failed ROLLBACK
    // throwing here would replace it; SQLite rolls back on close anyway).
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::optional<BestRecord> TuningDb::best(const std::string& hardware, const std::string& kernel) const {
  Stmt s(db_, "SELECT hardware_name, op, signature, tiling, cycles, time_us, default_cycles, validation, strategy, seed,"
              " evaluations, tool_version FROM best WHERE hardware=? AND kernel=?");
  s.bind(1, hardware).bind(2, kernel);
  if (!s.step()) return std::nullopt;
  BestRecord b;
  b.hardware = hardware, b.kernel = kernel;
  b.hardware_name = s.text(0), b.op = s.text(1);
  b.signature = parse_or_null(s.text(2)), b.tiling = parse_or_null(s.text(3));
  b.cycles = s.real(4), b.time_us = s.real(5), b.default_cycles = s.real(6);
  b.validation = parse_or_null(s.text(7));
  b.strategy = s.text(8), b.seed = static_cast<uint64_t>(s.integer(9)), b.evaluations = s.integer(10);
  b.tool_version = s.text(11);
  return b;
}

void TuningDb::store_best(const BestRecord& b) {
  Stmt s(db_, "INSERT OR REPLACE INTO best VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  s.bind(1, b.hardware).bind(2, b.kernel).bind(3, b.hardware_name).bind(4, b.op).bind(5, b.signature.dump());
  s.bind(6, b.tiling.dump()).bind(7, b.cycles).bind(8, b.time_us).bind(9, b.default_cycles).bind(10, b.validation.dump());
  s.bind(11, b.strategy).bind(12, static_cast<int64_t>(b.seed)).bind(13, b.evaluations).bind(14, b.tool_version);
  s.step();
}

void TuningDb::store_hardware(const std::string& fingerprint, const std::string& name, const nlohmann::json& parameters) {
  Stmt s(db_, "INSERT OR IGNORE INTO hardware VALUES(?,?,?)");
  s.bind(1, fingerprint).bind(2, name).bind(3, parameters.dump());
  s.step();
}

nlohmann::json TuningDb::export_json() const {
  nlohmann::json out = {{"schema_version", kDbSchemaVersion}, {"hardware", nlohmann::json::array()},
                        {"best", nlohmann::json::array()}, {"evaluations", nlohmann::json::array()}};
  {
    Stmt s(db_, "SELECT fingerprint, name, parameters FROM hardware ORDER BY fingerprint");
    while (s.step()) out["hardware"].push_back({{"fingerprint", s.text(0)}, {"name", s.text(1)}, {"parameters", parse_or_null(s.text(2))}});
  }
  {
    Stmt s(db_, "SELECT hardware, kernel FROM best ORDER BY hardware, kernel");
    while (s.step()) {
      BestRecord b = *best(s.text(0), s.text(1));
      out["best"].push_back({{"hardware", b.hardware}, {"hardware_name", b.hardware_name}, {"kernel", b.kernel}, {"op", b.op},
                             {"signature", b.signature}, {"tiling", b.tiling}, {"cycles", b.cycles}, {"time_us", b.time_us},
                             {"default_cycles", b.default_cycles}, {"validation", b.validation}, {"strategy", b.strategy},
                             {"seed", b.seed}, {"evaluations", b.evaluations}, {"tool_version", b.tool_version}});
    }
  }
  {
    Stmt s(db_, "SELECT hardware, kernel, count(*), sum(status='ok'), min(CASE WHEN status='ok' THEN cycles END)"
                " FROM evaluations GROUP BY hardware, kernel ORDER BY hardware, kernel");
    while (s.step())
      out["evaluations"].push_back({{"hardware", s.text(0)}, {"kernel", s.text(1)}, {"stored", s.integer(2)},
                                    {"ok", s.integer(3)}, {"min_cycles", s.real(4)}});
  }
  return out;
}

}  // namespace npusim::tuner
