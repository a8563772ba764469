// Subcommands beyond run/validate/check/graph/hw register themselves here from their own
// app/*_cli.cpp file (linked into the npusim executable): main() adds each to the command line,
// and runs the one chosen. Commands throw ConfigError / SimError like the rest; main maps them.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace npusim::app {

class Command {
 public:
  virtual ~Command() = default;
  // Adds the subcommand and its options to `cli`; returns it so main can tell whether it was chosen.
  virtual CLI::App* add_to(CLI::App& cli) = 0;
  // Runs the parsed command; returns the exit code.
  virtual int run(const std::string& command_line) = 0;
};

using CommandFactory = std::function<std::unique_ptr<Command>()>;

inline std::vector<CommandFactory>& command_registry() {
  static std::vector<CommandFactory> registry;
  return registry;
}

// `static const RegisterCommand reg{[] { return std::make_unique<MyCommand>(); }};` in a *_cli.cpp.
struct RegisterCommand {
  explicit RegisterCommand(CommandFactory f) { command_registry().push_back(std::move(f)); }
};

}  // namespace npusim::app
