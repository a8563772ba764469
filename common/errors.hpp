// Typed errors. Library code throws; only main() catches, prints and maps to an exit code.
//   ConfigError   -- the user's mistake (bad YAML, unknown key, infeasible tiling): exit 2.
//   InternalError -- a bug in npusim: exit 3.
//   SimError      -- the simulated program cannot finish (deadlock, flag overflow): exit 4.
#pragma once

#include <stdexcept>
#include <string>

namespace npusim {

// Where in an input a problem is: file:line:col (1-based; 0 = unknown) and the dotted key path.
struct SourceLoc {
  std::string file;
  int line = 0;
  int column = 0;
  std::string key_path;

  std::string prefix() const;  // "file:line:col: key 'a.b': " with the parts that are known
};

class ConfigError : public std::runtime_error {
 public:
  ConfigError(const SourceLoc& loc, const std::string& what);
  explicit ConfigError(const std::string& what) : std::runtime_error(what), reason_(what) {}
  const SourceLoc& loc() const { return loc_; }
  // The message without the location prefix (what() is prefix + reason).
  const std::string& reason() const { return reason_; }

 private:
  SourceLoc loc_;
  std::string reason_;
};

class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

class SimError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Exit codes of the command-line tool, shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitMismatch = 1;
inline constexpr int kExitConfig = 2;
inline constexpr int kExitInternal = 3;
inline constexpr int kExitSim = 4;

}  // namespace npusim
