// What every libFuzzer target here shares: the input size cap, a private scratch folder per
// process (holding the fixture configs a target's input may refer to), and the contract under
// test — a loader given any bytes either succeeds or throws ConfigError (exit 2) or SimError
// (exit 4). Any other exception escaping is a bug: the target prints its type and message and
// aborts, which libFuzzer records as a crash (and saves the input).
#pragma once

#include <cxxabi.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <typeinfo>

#include "common/errors.hpp"

#ifndef NPUSIM_FUZZ_FIXTURES
#error "NPUSIM_FUZZ_FIXTURES (tests/fuzz/fixtures) must be defined by the build"
#endif
#ifndef NPUSIM_SOURCE_DIR
#error "NPUSIM_SOURCE_DIR must be defined by the build"
#endif

namespace npusim::fuzz {

namespace fs = std::filesystem;

// Inputs above this are skipped: the loaders are line-oriented and 64 KiB holds every shape of
// config worth finding; larger inputs only slow each iteration down.
inline constexpr size_t kMaxInputBytes = 64 * 1024;

inline void write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

// $TMPDIR/npusim-fuzz-XXXXXX, created on first use with the fixture configs (tests/fuzz/fixtures/)
// and the hardware presets (configs/hardware/, so `extends:` resolves) copied in, and removed at
// exit. One per process: libFuzzer's -fork/-jobs workers do not share files.
inline const fs::path& scratch_dir() {
  static const fs::path dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/npusim-fuzz-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
      std::perror("fuzz: mkdtemp");
      std::abort();
    }
    const fs::path d = tmpl;
    fs::copy(NPUSIM_FUZZ_FIXTURES, d, fs::copy_options::recursive);
    fs::create_directory(d / "hw");
    fs::copy(fs::path(NPUSIM_SOURCE_DIR) / "configs" / "hardware", d / "hw", fs::copy_options::recursive);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(scratch_dir(), ec);
    });
    return d;
  }();
  return dir;
}

[[noreturn]] inline void report_escape(const char* stage, const char* type, const char* what) {
  int status = 0;
  char* demangled = abi::__cxa_demangle(type, nullptr, nullptr, &status);
  std::fprintf(stderr,
               "\n==npusim-fuzz== BUG: %s let a %s escape (only ConfigError / SimError may): %s\n",
               stage, status == 0 && demangled ? demangled : type, what);
  std::free(demangled);
  std::abort();
}

// Runs `f`; ConfigError and SimError are the loaders' expected answers to bad input.
template <class F>
void expect_clean_errors(const char* stage, F&& f) {
  try {
    f();
  } catch (const ConfigError&) {
  } catch (const SimError&) {
  } catch (const std::exception& e) {
    report_escape(stage, typeid(e).name(), e.what());
  } catch (...) {
    report_escape(stage, "non-std exception", "");
  }
}

}  // namespace npusim::fuzz
