// Strict YAML reading: every value read through YamlNode knows its file:line:col and dotted key
// path, type errors name what was expected, and finish() rejects any key nobody consumed
// ("unknown key 'tiling.l0x' (did you mean 'l0'?)").
//
// Documents can be layered: a file may name a base with `extends:` (merged underneath it), and
// `--set a.b=value` overrides are applied on top; each value remembers where it came from.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/errors.hpp"

namespace npusim {

class YamlDoc;

class YamlNode {
 public:
  YamlNode(std::shared_ptr<YamlDoc> doc, YAML::Node node, std::string path);
  YamlNode(const YamlNode&) = default;
  // yaml-cpp's Node::operator= writes through to the referenced node (it would edit the document),
  // so YamlNode cannot be reassigned; use std::optional::emplace to walk a tree.
  YamlNode& operator=(const YamlNode&) = delete;

  const std::string& path() const { return path_; }
  SourceLoc loc() const;
  [[noreturn]] void fail(const std::string& what) const;

  bool is_map() const { return node_.IsMap(); }
  bool is_seq() const { return node_.IsSequence(); }
  bool is_scalar() const { return node_.IsScalar(); }
  bool is_null() const { return !node_ || node_.IsNull(); }

  // Map access. Every key asked for (present or not) becomes a candidate for did-you-mean.
  bool has(const std::string& key) const;
  YamlNode at(const std::string& key) const;                  // required
  std::optional<YamlNode> get(const std::string& key) const;  // optional; this node must be a map (or null)
  std::vector<std::string> keys() const;
  void consume_all() const;  // marks this subtree consumed (it is checked elsewhere)

  // Sequence access.
  size_t size() const;
  YamlNode operator[](size_t i) const;

  // Scalars, with the type checked and named in the error.
  std::string as_string() const;
  double as_double() const;
  int64_t as_int() const;
  bool as_bool() const;
  int64_t as_positive_int() const;  // > 0
  double as_positive_double() const;
  double as_fraction() const;  // in [0, 1]
  std::vector<int64_t> as_int_list() const;
  // One of `choices`, with the nearest suggested on a miss.
  std::string as_enum(const std::vector<std::string>& choices) const;

  const YAML::Node& raw() const { return node_; }

 private:
  std::string child_path(const std::string& key) const;
  std::shared_ptr<YamlDoc> doc_;
  YAML::Node node_;
  std::string path_;
};

class YamlDoc : public std::enable_shared_from_this<YamlDoc> {
 public:
  // Loads `file`; a missing or unparsable file is a ConfigError. `root_path` prefixes key paths
  // (e.g. "hardware" for a preset) so messages name the key as the user would write it.
  static std::shared_ptr<YamlDoc> load(const std::string& file, const std::string& root_path = "");
  // Like load(), then merges each `extends: NAME` base (NAME.yaml beside the file) underneath.
  static std::shared_ptr<YamlDoc> load_layered(const std::string& file,
                                               const std::string& root_path = "");
  static std::shared_ptr<YamlDoc> from_string(const std::string& text, const std::string& name,
                                              const std::string& root_path = "");

  YamlNode root();
  const std::string& file() const { return file_; }

  // Applies "a.b.c=value" below this document's root_path (the prefix is stripped by the caller).
  // The value is parsed as a YAML scalar or flow collection.
  void set_override(const std::string& rel_path, const std::string& value, const std::string& origin);

  // Merges a map (e.g. the `hardware:` map of a run config) over the whole document; values keep
  // their line and column and are attributed to `origin_file`.
  void overlay(const YAML::Node& map, const std::string& origin_file);

  // Replaces the value at rel_path (used when a string like `hardware: ascend910b2` is expanded).
  void replace(const std::string& rel_path, YAML::Node node, const std::string& origin_file);

  // Throws ConfigError for the first key that nothing consumed.
  void finish() const;

  // Bookkeeping used by YamlNode.
  void mark_used(const std::string& path) { used_.insert(path); }
  bool is_used(const std::string& path) const { return used_.count(path) > 0; }
  void mark_asked(const std::string& parent, const std::string& key) { asked_[parent].insert(key); }
  SourceLoc loc_of(const std::string& path, const YAML::Node& node) const;

 private:
  static std::shared_ptr<YamlDoc> load_layered_impl(const std::string& file,
                                                    const std::string& root_path,
                                                    std::set<std::string> seen);
  void check_unused(const YAML::Node& node, const std::string& path) const;
  std::string file_;
  std::string root_path_;
  YAML::Node root_;
  std::set<std::string> used_;
  std::map<std::string, std::set<std::string>> asked_;
  std::map<std::string, std::string> origin_;  // path prefix -> file it came from (layering, --set)
};

// Splits "a.b=c" into ("a.b", "c"); a malformed one is a ConfigError naming the argument.
std::pair<std::string, std::string> parse_set_arg(const std::string& arg);

}  // namespace npusim
