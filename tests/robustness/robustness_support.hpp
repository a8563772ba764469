// Helpers for the crash-safety and reproducibility tests: npusim started in a chosen folder (and
// under a file-size limit, the way a full disk looks to a writer), killed or waited for; files
// read whole; wall-clock fields masked, exactly the ones docs/report-schema.md ("Reproducibility")
// lists, so everything else must match byte for byte.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "workflow/workflow_support.hpp"

namespace npusim::robustness_test {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline const fs::path kSourceDir = NPUSIM_SOURCE_DIR;

// The run result, whole-file reads and scratch folders are the workflow tests' own.
using workflow_test::Result;
using workflow_test::slurp;

inline void spit(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

inline fs::path scratch(const std::string& name) { return workflow_test::scratch_dir("rb_" + name); }

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline void sleep_s(double s) {
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

// How to start npusim: its arguments, the folder it runs in, and optionally a file-size limit.
struct Launch {
  std::vector<std::string> args;
  fs::path cwd = kSourceDir;
  // RLIMIT_FSIZE in bytes, or -1 for none. SIGXFSZ is ignored, so a write past the limit fails with
  // EFBIG (a short write first): what a writer sees when the disk fills up.
  long long fsize_limit = -1;
};

// npusim running in the background; its stdout and stderr go to files in `log_dir`.
class Child {
 public:
  Child(const Launch& l, const fs::path& log_dir) {
    static int n = 0;
    const std::string tag = std::to_string(::getpid()) + "_" + std::to_string(n++);
    out_ = log_dir / (".stdout" + tag);
    err_ = log_dir / (".stderr" + tag);
    command_ = "(cd " + l.cwd.string() + " && npusim";
    for (const auto& a : l.args) command_ += " " + a;
    command_ += ")";
    if (l.fsize_limit >= 0)
      command_ += " with a file-size limit of " + std::to_string(l.fsize_limit);
    // Everything the child needs is built before fork: after it, only async-signal-safe calls.
    std::vector<std::string> args = l.args;
    std::string bin = NPUSIM_BIN, cwd = l.cwd.string(), out = out_.string(), err = err_.string();
    std::vector<char*> argv{bin.data()};
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const long long limit = l.fsize_limit;
    pid_ = ::fork();
    if (pid_ == 0) {
      const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (o < 0 || e < 0 || ::chdir(cwd.c_str()) != 0) _exit(126);
      ::dup2(o, STDOUT_FILENO);
      ::dup2(e, STDERR_FILENO);
      if (limit >= 0) {
        ::signal(SIGXFSZ, SIG_IGN);  // survives exec: writes fail with EFBIG instead of killing
        const rlimit r{static_cast<rlim_t>(limit), static_cast<rlim_t>(limit)};
        if (::setrlimit(RLIMIT_FSIZE, &r) != 0) _exit(126);
      }
      ::execv(argv[0], argv.data());
      _exit(127);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (!reaped_) kill_now();
  }

  // Whether it is still running (reaps it when it has ended).
  bool running() {
    if (reaped_) return false;
    if (::waitpid(pid_, &status_, WNOHANG) == 0) return true;
    reaped_ = true;
    return false;
  }
  // SIGKILL (when still running) and reap.
  void kill_now() {
    if (reaped_) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    reaped_ = true;
  }
  // Waits (killing it after `timeout_s`) and collects its output.
  Result wait(double timeout_s = 300) {
    Result r;
    const auto t0 = Clock::now();
    while (running()) {
      if (seconds_since(t0) > timeout_s) {
        kill_now();
        r.err = "(timed out)\n";
        break;
      }
      sleep_s(0.005);
    }
    return collect(r);
  }
  Result collect(Result r = {}) const {
    r.command = command_;
    r.exit_code = WIFEXITED(status_) ? WEXITSTATUS(status_) : -WTERMSIG(status_);
    r.out = slurp(out_);
    r.err += slurp(err_);
    return r;
  }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  bool reaped_ = false;
  fs::path out_, err_;
  std::string command_;
};

inline Result run(const Launch& l, const fs::path& log_dir) {
  Child c(l, log_dir);
  return c.wait();
}

// ---------------------------------------------------------------------------------------------
// The fields that may differ between two runs of one config (docs/report-schema.md,
// "Reproducibility"), replaced by a fixed text so the rest compares byte for byte.

// `"wall_clock": {"seconds": X}` of run reports (also inside sweep and tune reports), as written
// with any indentation.
inline std::string mask_wall_clock(std::string text) {
  const std::string key = "\"wall_clock\":", field = "\"seconds\":";
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
    const size_t f = text.find(field, at);
    const size_t close = text.find('}', at);
    if (f == std::string::npos || close == std::string::npos || f > close) continue;
    size_t v = f + field.size();
    while (v < text.size() && text[v] == ' ') ++v;
    size_t end = v;
    while (end < text.size() &&
           std::string_view("-+.0123456789eE").find(text[end]) != std::string_view::npos)
      ++end;
    text.replace(v, end - v, "\"<wall>\"");  // still JSON
  }
  return text;
}

// A sweep point's log.txt: its "status: ok (X s)" line holds the point's wall time.
inline std::string mask_log_seconds(std::string text) {
  const std::string key = "status: ";
  const size_t at = text.find(key);
  if (at == std::string::npos) return text;
  const size_t open = text.find('(', at), close = text.find(" s)", at);
  if (open != std::string::npos && close != std::string::npos && open < close)
    text.replace(open + 1, close - open - 1, "<wall>");
  return text;
}

// The bytes of every file under `dir`, by path relative to it.
using Files = std::map<std::string, std::string>;
inline Files files_under(const fs::path& dir) {
  Files f;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->is_regular_file()) f[fs::relative(it->path(), dir).string()] = slurp(it->path());
  return f;
}

// Names directly under `dir`; hidden ones (temporaries) only when `hidden`.
inline std::set<std::string> names_in(const fs::path& dir, bool hidden) {
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if ((n[0] == '.') == hidden) names.insert(n);
  }
  return names;
}

// Published point folders of a sweep's OUT.
inline std::set<std::string> point_ids(const fs::path& out) {
  return names_in(out / "points", false);
}

}  // namespace npusim::robustness_test
