// ThreadSanitizer stand-in for oneTBB (scripts/sanitize.sh tsan; why: ../README.md): the cap on
// parallelism, honoured by this folder's parallel_for.
#pragma once

#include <cstddef>

#include "tbb/task_arena.h"

namespace tbb {

class global_control {
 public:
  enum parameter { max_allowed_parallelism, thread_stack_size, parameter_max };

  global_control(parameter p, std::size_t value) : p_(p), previous_(detail::tsan_parallelism_cap()) {
    if (p_ == max_allowed_parallelism) detail::tsan_parallelism_cap() = value;
  }
  ~global_control() {
    if (p_ == max_allowed_parallelism) detail::tsan_parallelism_cap() = previous_;
  }
  global_control(const global_control&) = delete;
  global_control& operator=(const global_control&) = delete;

  static std::size_t active_value(parameter p) {
    return p == max_allowed_parallelism ? static_cast<std::size_t>(this_task_arena::max_concurrency()) : 0;
  }

 private:
  parameter p_;
  std::size_t previous_;
};

}  // namespace tbb
