// Writers for the result model: JSON report, human table, Chrome/Perfetto trace. Files are
// written to a temporary name and renamed, so a reader never sees a partial file.
// The same inputs give the same bytes (no timestamps, hosts or paths beyond the report's own
// documented wall-clock and command-line fields: docs/report-schema.md, "Reproducibility").
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

// Writes `text` to `path` atomically: into temp_path_for(path), flushed to disk, then renamed over
// `path`, so `path` holds either its previous content or all of `text`, whatever happens (the
// process killed, the disk full). Throws ConfigError "cannot write '<path>': <why>" (an output the
// user must fix: exit 2) and leaves no temporary file behind.
void write_file_atomic(const std::string& path, const std::string& text);

// `j` as JSON text (indent < 0: one line) with a trailing newline. Text npusim did not read from
// a config (file names, the command line) may hold bytes that are not UTF-8: they become U+FFFD
// instead of an exception.
std::string json_text(const nlohmann::json& j, int indent = 2);

// Where a writer builds `path` before renaming it: the hidden sibling ".<name>.tmp-<host>-<pid>"
// (no reader globbing *.json picks it up; the host and pid tell a dead writer's leftover).
std::string temp_path_for(const std::string& path);
// This host's name as temporary names carry it ('-' and '/' replaced by '_').
const std::string& temp_host();
// Whether `name` (a file or folder name) is a temporary "...tmp-<host>-<pid>" left on this host by
// a process that no longer runs: a killed writer's, safe to remove.
bool is_stale_temp(const std::string& name);
// Removes the stale temporaries (files and folders) directly under `dir`; returns how many.
size_t remove_stale_temps(const std::string& dir);

// Writes all of `text` to the open descriptor `fd`, then with `flush` flushes it to disk
// (fdatasync); returns 0 or the errno of the failure.
int write_all(int fd, const std::string& text, bool flush);

}  // namespace npusim::reports
