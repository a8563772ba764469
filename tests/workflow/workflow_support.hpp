// Helpers for the sweep / merge / regress tests: run the npusim binary (to completion, or in the
// background to signal or kill it), scratch folders, and reports compared without wall-clock
// fields.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace npusim::workflow_test {

namespace fs = std::filesystem;

inline const std::string kSmallSweep = "tests/workflow/data/small_sweep.yaml";  // 6 GEMM points
inline const std::string kZipSweep = "tests/workflow/data/zip_sweep.yaml";      // 4 GEMM points

struct Result {
  int exit_code = -1;  // the exit status, or -signal when killed
  std::string out, err, command;
};

inline std::ostream& operator<<(std::ostream& os, const Result& r) {
  return os << "\n$ " << r.command << "\nexit code: " << r.exit_code << "\n--- stdout ---\n"
            << r.out << "--- stderr ---\n"
            << r.err << "--------------";
}

inline std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A fresh, empty folder for one test (CTest runs tests of one executable in parallel processes).
inline fs::path scratch_dir(const std::string& name) {
  static int n = 0;
  fs::path d = fs::path(::testing::TempDir()) /
               ("npusim_wf_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// npusim running in the background, in NPUSIM_SOURCE_DIR, its output in files under `scratch`.
class Child {
 public:
  Child(const std::vector<std::string>& args, const fs::path& scratch) {
    static int n = 0;
    const std::string tag = std::to_string(n++);
    out_ = scratch / (".stdout" + tag);
    err_ = scratch / (".stderr" + tag);
    command_ = "npusim";
    for (const auto& a : args) command_ += " " + a;
    std::vector<std::string> copy = args;
    std::string bin = NPUSIM_BIN;
    std::vector<char*> argv{bin.data()};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      FILE* o = std::fopen(out_.c_str(), "wb");
      FILE* e = std::fopen(err_.c_str(), "wb");
      if (!o || !e || chdir(NPUSIM_SOURCE_DIR) != 0) _exit(126);
      dup2(fileno(o), STDOUT_FILENO);
      dup2(fileno(e), STDERR_FILENO);
      unsetenv("NPUSIM_CONFIG_DIR");
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  pid_t pid() const { return pid_; }
  void signal(int sig) const { ::kill(pid_, sig); }

  // Waits (killing the child after `timeout_s`) and collects its output.
  Result wait(double timeout_s = 120) {
    Result r;
    r.command = command_;
    int status = 0;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        r.err = "(timed out)\n";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    r.out = slurp(out_);
    r.err += slurp(err_);
    return r;
  }

 private:
  pid_t pid_ = -1;
  fs::path out_, err_;
  std::string command_;
};

inline Result run_npusim(const std::vector<std::string>& args, const fs::path& scratch) {
  return Child(args, scratch).wait();
}

// Polls `pred` every 2 ms for up to `timeout_s`.
inline bool wait_for(const std::function<bool()>& pred, double timeout_s = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// Published point folders (not the .tmp ones) under OUT/points.
inline std::set<std::string> point_dirs(const fs::path& out) {
  std::set<std::string> ids;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out / "points", ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && !name.empty() && name[0] != '.') ids.insert(name);
  }
  return ids;
}

// The report with every wall-clock field dropped (the only fields that may differ between runs).
inline nlohmann::json without_wall_clock(nlohmann::json j) {
  if (j.is_object()) {
    nlohmann::json out = nlohmann::json::object();
    for (auto& [k, v] : j.items())
      if (k.find("wall") == std::string::npos) out[k] = without_wall_clock(v);
    return out;
  }
  if (j.is_array()) {
    nlohmann::json out = nlohmann::json::array();
    for (auto& v : j) out.push_back(without_wall_clock(v));
    return out;
  }
  return j;
}

inline std::string stable_report(const fs::path& file) {
  return without_wall_clock(nlohmann::json::parse(slurp(file))).dump(1);
}

}  // namespace npusim::workflow_test
