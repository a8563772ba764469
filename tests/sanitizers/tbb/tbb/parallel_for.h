// ThreadSanitizer stand-in for oneTBB (scripts/sanitize.sh tsan; why: ../README.md): parallel_for
// with oneTBB's contract — every index (every grain-sized chunk of a range) handed to the body once,
// concurrently, all finished when the call returns, the first exception rethrown in the caller —
// on std::threads, whose start and join ThreadSanitizer sees.
//
// Work is dealt round-robin (thread t takes items t, t + T, t + 2T, ...) rather than claimed from
// a shared counter: every loop of two or more items then runs on two threads whatever the timing,
// and no synchronisation between items hides a race between them (a claim counter's
// read-modify-write would order each item after the previous claim).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "tbb/blocked_range.h"
#include "tbb/task_arena.h"

namespace tbb {
namespace detail {

// Runs run(i) for i in [0, n) on min(n, max_concurrency) threads, the caller one of them.
template <typename Run>
void tsan_run_items(std::size_t n, const Run& run) {
  const std::size_t threads = std::min<std::size_t>(n, static_cast<std::size_t>(this_task_arena::max_concurrency()));
  if (threads <= 1) {
    for (std::size_t i = 0; i < n; ++i) run(i);
    return;
  }
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&](std::size_t t) {
    try {
      for (std::size_t i = t; i < n && !failed.load(std::memory_order_relaxed); i += threads) run(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      failed.store(true, std::memory_order_relaxed);
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (std::size_t t = 1; t < threads; ++t) helpers.emplace_back(work, t);
  work(0);
  for (auto& h : helpers) h.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace detail

template <typename Index, typename Function>
void parallel_for(Index first, Index last, const Function& f) {
  if (!(first < last)) return;
  detail::tsan_run_items(static_cast<std::size_t>(last - first),
                         [&](std::size_t i) { f(static_cast<Index>(first + static_cast<Index>(i))); });
}

template <typename Index, typename Function>
void parallel_for(Index first, Index last, Index step, const Function& f) {
  if (!(first < last) || step <= 0) return;
  const auto n = static_cast<std::size_t>((last - first + step - 1) / step);
  detail::tsan_run_items(n, [&](std::size_t i) { f(static_cast<Index>(first + static_cast<Index>(i) * step)); });
}

// A blocked_range is cut into chunks of its grain size (oneTBB splits down to at most that).
template <typename Value, typename Body>
void parallel_for(const blocked_range<Value>& range, const Body& body) {
  const std::size_t grain = range.grainsize(), n = range.size();
  detail::tsan_run_items((n + grain - 1) / grain, [&](std::size_t c) {
    const Value b = static_cast<Value>(range.begin() + static_cast<Value>(c * grain));
    const Value e = static_cast<Value>(range.begin() + static_cast<Value>(std::min(n, (c + 1) * grain)));
    body(blocked_range<Value>(b, e, grain));
  });
}

}  // namespace tbb
