// ThreadSanitizer stand-in for oneTBB (scripts/sanitize.sh tsan; why: ../README.md): the
// concurrency parallel_for uses, at least two threads so that every parallel loop really runs on
// two, whatever the machine.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>

namespace tbb {
namespace detail {

// 0: no cap (tbb::global_control sets one).
inline std::atomic<std::size_t>& tsan_parallelism_cap() {
  static std::atomic<std::size_t> cap{0};
  return cap;
}

}  // namespace detail

namespace this_task_arena {

inline int max_concurrency() {
  const std::size_t cap = detail::tsan_parallelism_cap().load();
  const std::size_t n = std::max<std::size_t>(2, std::thread::hardware_concurrency());
  return static_cast<int>(cap ? std::min(cap, n) : n);
}

}  // namespace this_task_arena
}  // namespace tbb
