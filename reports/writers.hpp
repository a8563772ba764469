// Writers for the result model: JSON report, human table, Chrome/Perfetto trace. Files are
// written to a temporary name and renamed, so a reader never sees a partial file.
#pragma once

#include <string>
#include <vector>

#include "reports/result.hpp"

namespace npusim::reports {

nlohmann::json to_json(const RunReport& r);
std::string format_table(const std::vector<RunReport>& runs);
nlohmann::json trace_json(const Trace& t);
nlohmann::json to_json(const ValidationReport& v);
// "validation passed" / the failed checks and the worst elements with their indices.
std::string format_validation(const std::string& kernel, const ValidationReport& v);

// Writes `text` to `path` atomically; throws std::runtime_error naming the path on failure.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace npusim::reports
