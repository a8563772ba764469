// Shared helpers for the tests: presets, tiny CSV reader, one-instruction programs.
#pragma once

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <unistd.h>

#include "app/session.hpp"
#include "sim/engine.hpp"

namespace npusim::test {

// A config file in the test temp folder. CTest runs every test of an executable as its own process
// in parallel, so names carry the process id as well as a per-process counter.
inline std::string write_temp_config(const std::string& prefix, const std::string& yaml) {
  static int n = 0;
  std::string file = ::testing::TempDir() + "/" + prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(n++) + ".yaml";
  std::ofstream(file) << yaml;
  return file;
}

inline const sim::HardwareSpec& preset(const std::string& name) {
  static std::map<std::string, sim::HardwareSpec> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, app::load_hardware(name)).first;
  return it->second;
}

// RFC-4180-ish CSV: quoted fields may hold commas and doubled quotes.
inline std::vector<std::map<std::string, std::string>> read_csv(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false;
  char c;
  while (in.get(c)) {
    if (quoted) {
      if (c == '"') {
        if (in.peek() == '"') {
          field += '"';
          in.get(c);
        } else {
          quoted = false;
        }
      } else {
        field += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      row.push_back(field);
      field.clear();
    } else if (c == '\n') {
      row.push_back(field);
      field.clear();
      rows.push_back(row);
      row.clear();
    } else if (c != '\r') {
      field += c;
    }
  }
  if (!field.empty() || !row.empty()) {
    row.push_back(field);
    rows.push_back(row);
  }
  std::vector<std::map<std::string, std::string>> out;
  for (size_t i = 1; i < rows.size(); ++i) {
    std::map<std::string, std::string> m;
    for (size_t j = 0; j < rows[0].size() && j < rows[i].size(); ++j) m[rows[0][j]] = rows[i][j];
    out.push_back(m);
  }
  return out;
}

inline sim::Program single_core(sim::CoreKind kind, uint64_t footprint = 1 << 26) {
  sim::Program p;
  p.name = "test";
  p.gm_footprint_bytes = footprint;
  p.cores.push_back({kind, 0, {}, {}});
  return p;
}

// Duration of the last compute/copy slice of unit 0 on `pipe`.
inline double last_slice_cycles(const sim::SimResult& r, sim::Pipe pipe) {
  for (auto it = r.slices.rbegin(); it != r.slices.rend(); ++it)
    if (it->unit == 0 && it->pipe == pipe) return it->end - it->start;
  return -1;
}

}  // namespace npusim::test
