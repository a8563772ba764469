#include "common/errors.hpp"

#include <fmt/format.h>

namespace npusim {

std::string SourceLoc::prefix() const {
  std::string out;
  if (!file.empty()) {
    out += file;
    if (line > 0) out += fmt::format(":{}:{}", line, column);
    out += ": ";
  }
  if (!key_path.empty()) out += fmt::format("key '{}': ", key_path);
  return out;
}

ConfigError::ConfigError(const SourceLoc& loc, const std::string& what)
    : std::runtime_error(loc.prefix() + what), loc_(loc), reason_(what) {}

}  // namespace npusim
