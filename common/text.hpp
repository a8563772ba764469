// Small string helpers shared by config parsing and reports.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace npusim {

// Levenshtein distance, used to suggest the nearest valid name.
size_t edit_distance(std::string_view a, std::string_view b);

// " (did you mean 'x'?)" when a candidate is close enough, else "".
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates);

// Text for XML or HTML (element content and attribute values alike): &, <, >, quotes escaped,
// control characters other than tab and newline dropped (XML 1.0 has no way to write them).
std::string escape_markup(std::string_view s);

// The offset of the first byte that breaks UTF-8 (overlong forms, surrogates and code points
// above U+10FFFF included), or npos when `s` is valid UTF-8.
size_t invalid_utf8_at(std::string_view s);

// "a, b, c"
std::string join(const std::vector<std::string>& items, std::string_view sep = ", ");

}  // namespace npusim
