#include "common/yaml_reader.hpp"

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "common/text.hpp"

namespace npusim {
namespace {

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

const char* kind_name(const YAML::Node& n) {
  if (!n || n.IsNull()) return "nothing";
  if (n.IsMap()) return "a map";
  if (n.IsSequence()) return "a list";
  return "a scalar";
}

// Deep merge in place: `over` replaces `base` key by key; maps merge recursively. Nodes are
// shared, not cloned, so every value keeps its line and column.
void merge_into(YAML::Node base, const YAML::Node& over, const std::string& path,
                const std::string& over_file, std::map<std::string, std::string>& origin) {
  for (const auto& kv : over) {
    const std::string key = kv.first.as<std::string>();
    const std::string p = join_path(path, key);
    // A const lookup: yaml-cpp's non-const operator[] would insert an empty entry for a new key.
    YAML::Node existing = std::as_const(base)[key];
    if (existing && existing.IsMap() && kv.second.IsMap()) {
      merge_into(existing, kv.second, p, over_file, origin);
    } else {
      // A new key goes in with its own node, so errors about it still point at its line.
      if (existing) base[key] = kv.second;
      else base.force_insert(kv.first, kv.second);
      origin[p] = over_file;
    }
  }
}

SourceLoc mark_loc(const std::string& file, const YAML::Mark& m, const std::string& path) {
  if (m.is_null()) return SourceLoc{file, 0, 0, path};
  return SourceLoc{file, m.line + 1, m.column + 1, path};
}

// What the readers below assume of every document: map keys are plain scalars (a list or map used
// as a key has no name to report or look up) and no map names a key twice (yaml-cpp keeps both and
// lookups would see only the first).
void check_structure(const YAML::Node& node, const std::string& file, const std::string& path) {
  // Text goes into JSON reports, which must be UTF-8.
  const auto check_text = [&](const YAML::Node& n, const std::string& p) {
    if (const size_t at = invalid_utf8_at(n.Scalar()); at != std::string::npos)
      throw ConfigError(mark_loc(file, n.Mark(), p),
                        fmt::format("not UTF-8 text (byte 0x{:02X} at offset {}); configs are UTF-8",
                                    static_cast<unsigned char>(n.Scalar()[at]), at));
  };
  if (node.IsScalar()) check_text(node, path);
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) check_structure(node[i], file, fmt::format("{}[{}]", path, i));
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, YAML::Mark> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar())
      throw ConfigError(mark_loc(file, kv.first.Mark(), path),
                        fmt::format("a key must be a plain name, found {} used as a key", kind_name(kv.first)));
    const std::string& key = kv.first.Scalar();
    const std::string p = join_path(path, key);
    check_text(kv.first, path);
    if (auto [it, fresh] = seen.emplace(key, kv.first.Mark()); !fresh)
      throw ConfigError(mark_loc(file, kv.first.Mark(), p),
                        fmt::format("duplicate key '{}' (first given at line {})", key, it->second.line + 1));
    check_structure(kv.second, file, p);
  }
}

// Records where a document begins. (Not YAML::LoadAll to count documents: on stray tokens at the
// top level, such as ", a", it yields empty documents forever.)
class DocumentStart : public YAML::EventHandler {
 public:
  std::optional<YAML::Mark> mark;
  void OnDocumentStart(const YAML::Mark& m) override { mark = m; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// Throws for a second document, or for top-level text the parser cannot move past (the second
// document then starts where the first did).
void check_single_document(const std::string& text, const std::string& file) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStart first, second;
  if (!parser.HandleNextDocument(first) || !parser.HandleNextDocument(second) || !second.mark) return;
  if (first.mark && first.mark->pos == second.mark->pos)
    throw ConfigError(mark_loc(file, *second.mark, ""), "malformed YAML: unexpected text at the top level (a stray ',', ']' or '}'?)");
  throw ConfigError(mark_loc(file, *second.mark, ""), "a second YAML document; a file holds one");
}

// One YAML document from `text`, checked by check_structure; `file` names it in errors.
YAML::Node parse_text(const std::string& text, const std::string& file, const std::string& root_path) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
    check_single_document(text, file);
  } catch (const YAML::Exception& e) {
    throw ConfigError(mark_loc(file, e.mark, ""), "malformed YAML: " + e.msg);
  }
  check_structure(root, file, root_path);
  return root;
}

YAML::Node parse_file(const std::string& file, const std::string& root_path) {
  if (std::error_code ec; std::filesystem::is_directory(file, ec)) throw ConfigError(SourceLoc{file, 0, 0, ""}, "is a folder, not a YAML file");
  std::ifstream in(file);
  if (!in) throw ConfigError(SourceLoc{file, 0, 0, ""}, "cannot open file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_text(ss.str(), file, root_path);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// YamlNode

YamlNode::YamlNode(std::shared_ptr<YamlDoc> doc, YAML::Node node, std::string path)
    : doc_(std::move(doc)), node_(std::move(node)), path_(std::move(path)) {}

SourceLoc YamlNode::loc() const { return doc_->loc_of(path_, node_); }

void YamlNode::fail(const std::string& what) const { throw ConfigError(loc(), what); }

std::string YamlNode::child_path(const std::string& key) const { return join_path(path_, key); }

bool YamlNode::has(const std::string& key) const {
  doc_->mark_asked(path_, key);
  return node_.IsMap() && node_[key] && !node_[key].IsNull();
}

YamlNode YamlNode::at(const std::string& key) const {
  if (!node_.IsMap()) fail(fmt::format("expected a map with key '{}', found {}", key, kind_name(node_)));
  doc_->mark_asked(path_, key);
  YAML::Node child = node_[key];
  if (!child || child.IsNull()) {
    // A present key that is a near-miss of the required one is the likely culprit: point at it.
    std::vector<std::string> present;
    for (const auto& kv : node_) present.push_back(kv.first.as<std::string>());
    for (const auto& p : present) {
      // Only keys nobody has consumed, and only close misspellings (one edit per four letters).
      if (p != key && !doc_->is_used(child_path(p)) &&
          edit_distance(p, key) <= std::max<size_t>(1, key.size() / 4) && p.size() > 1) {
        SourceLoc l = doc_->loc_of(child_path(p), node_[p]);
        for (const auto& kv : node_)
          if (kv.first.as<std::string>() == p) l = doc_->loc_of(child_path(p), kv.first);
        throw ConfigError(l, fmt::format("unknown key '{}' (did you mean '{}'?); the required key '{}' is missing",
                                         p, key, child_path(key)));
      }
    }
    SourceLoc l = loc();
    l.key_path = child_path(key);
    throw ConfigError(l, "missing required key");
  }
  doc_->mark_used(child_path(key));
  return YamlNode(doc_, child, child_path(key));
}

std::optional<YamlNode> YamlNode::get(const std::string& key) const {
  // Asking a list or a scalar for a key means the config gave one where a map belongs.
  if (!is_null() && !node_.IsMap())
    fail(fmt::format("expected a map (with optional key '{}'), found {}", key, kind_name(node_)));
  if (!has(key)) {
    if (node_.IsMap() && node_[key]) doc_->mark_used(child_path(key));  // explicit null
    return std::nullopt;
  }
  return at(key);
}

std::vector<std::string> YamlNode::keys() const {
  if (!node_.IsMap()) fail(fmt::format("expected a map, found {}", kind_name(node_)));
  std::vector<std::string> out;
  for (const auto& kv : node_) out.push_back(kv.first.as<std::string>());
  return out;
}

void YamlNode::consume_all() const {
  doc_->mark_used(path_);
  if (node_.IsMap())
    for (const auto& kv : node_) YamlNode(doc_, kv.second, child_path(kv.first.as<std::string>())).consume_all();
  else if (node_.IsSequence())
    for (size_t i = 0; i < node_.size(); ++i) (*this)[i].consume_all();
}

size_t YamlNode::size() const {
  if (!node_.IsSequence()) fail(fmt::format("expected a list, found {}", kind_name(node_)));
  return node_.size();
}

YamlNode YamlNode::operator[](size_t i) const {
  std::string p = fmt::format("{}[{}]", path_, i);
  doc_->mark_used(p);
  return YamlNode(doc_, node_[i], p);
}

std::string YamlNode::as_string() const {
  if (!node_.IsScalar()) fail(fmt::format("expected a string, found {}", kind_name(node_)));
  doc_->mark_used(path_);
  return node_.Scalar();
}

double YamlNode::as_double() const {
  const std::string s = as_string();
  try {
    size_t used = 0;
    double v = std::stod(s, &used);
    if (used == s.size() && std::isfinite(v)) return v;
  } catch (const std::exception&) {
  }
  fail(fmt::format("expected a number, found '{}'", s));
}

int64_t YamlNode::as_int() const {
  const std::string s = as_string();
  try {
    size_t used = 0;
    long long v = std::stoll(s, &used, 0);
    if (used == s.size()) return v;
  } catch (const std::exception&) {
  }
  fail(fmt::format("expected an integer, found '{}'", s));
}

bool YamlNode::as_bool() const {
  const std::string s = as_string();
  if (s == "true" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "no" || s == "off") return false;
  fail(fmt::format("expected true or false, found '{}'", s));
}

int64_t YamlNode::as_positive_int() const {
  int64_t v = as_int();
  if (v <= 0) fail(fmt::format("expected an integer > 0, found {}", v));
  return v;
}

double YamlNode::as_positive_double() const {
  double v = as_double();
  if (!(v > 0)) fail(fmt::format("expected a number > 0, found {}", v));
  return v;
}

double YamlNode::as_fraction() const {
  double v = as_double();
  if (v < 0 || v > 1) fail(fmt::format("expected a fraction in [0, 1], found {}", v));
  return v;
}

std::vector<int64_t> YamlNode::as_int_list() const {
  if (!node_.IsSequence()) fail(fmt::format("expected a list of integers, found {}", kind_name(node_)));
  std::vector<int64_t> out;
  for (size_t i = 0; i < node_.size(); ++i) out.push_back((*this)[i].as_int());
  doc_->mark_used(path_);
  return out;
}

std::string YamlNode::as_enum(const std::vector<std::string>& choices) const {
  std::string s = as_string();
  for (const auto& c : choices)
    if (c == s) return s;
  fail(fmt::format("unknown value '{}'{}; expected one of: {}", s, did_you_mean(s, choices),
                   join(choices)));
}

// ---------------------------------------------------------------------------------------------
// YamlDoc

std::shared_ptr<YamlDoc> YamlDoc::load(const std::string& file, const std::string& root_path) {
  auto doc = std::make_shared<YamlDoc>();
  doc->file_ = file;
  doc->root_path_ = root_path;
  doc->root_ = parse_file(file, root_path);
  if (!doc->root_ || doc->root_.IsNull()) doc->root_ = YAML::Node(YAML::NodeType::Map);
  return doc;
}

std::shared_ptr<YamlDoc> YamlDoc::load_layered(const std::string& file,
                                               const std::string& root_path) {
  return load_layered_impl(file, root_path, {});
}

std::shared_ptr<YamlDoc> YamlDoc::load_layered_impl(const std::string& file,
                                                    const std::string& root_path,
                                                    std::set<std::string> seen) {
  auto doc = load(file, root_path);
  std::error_code ec;
  seen.insert(std::filesystem::weakly_canonical(file, ec).string());
  if (!doc->root_.IsMap() || !doc->root_["extends"]) return doc;
  YamlNode ext = doc->root().at("extends");
  const std::string base_name = ext.as_string();
  const std::filesystem::path base_file =
      std::filesystem::path(file).parent_path() / (base_name + ".yaml");
  if (!std::filesystem::exists(base_file, ec))
    ext.fail(fmt::format("base '{}' not found (looked for {})", base_name, base_file.string()));
  if (seen.count(std::filesystem::weakly_canonical(base_file, ec).string()))
    ext.fail(fmt::format("'extends' forms a cycle: {} is already being loaded", base_file.string()));
  auto base = load_layered_impl(base_file.string(), root_path, seen);
  // Values from the base keep their origin; the base's own top-level keys are attributed to it.
  std::map<std::string, std::string> origin = base->origin_;
  for (const auto& kv : base->root_)
    origin.try_emplace(join_path(root_path, kv.first.as<std::string>()), base->file_);
  doc->root_.remove("extends");
  if (!base->root_.IsMap()) base->root_ = YAML::Node(YAML::NodeType::Map);
  merge_into(base->root_, doc->root_, root_path, file, origin);
  doc->root_ = base->root_;
  doc->origin_ = std::move(origin);
  return doc;
}

std::shared_ptr<YamlDoc> YamlDoc::from_string(const std::string& text, const std::string& name,
                                              const std::string& root_path) {
  auto doc = std::make_shared<YamlDoc>();
  doc->file_ = name;
  doc->root_path_ = root_path;
  doc->root_ = parse_text(text, name, root_path);
  if (!doc->root_ || doc->root_.IsNull()) doc->root_ = YAML::Node(YAML::NodeType::Map);
  return doc;
}

YamlNode YamlDoc::root() { return YamlNode(shared_from_this(), root_, root_path_); }

SourceLoc YamlDoc::loc_of(const std::string& path, const YAML::Node& node) const {
  SourceLoc loc;
  loc.key_path = path;
  loc.file = file_;
  // The longest recorded prefix of `path` says which layer the value came from.
  std::string best;
  for (const auto& [p, f] : origin_) {
    bool prefix = path == p || (path.size() > p.size() && path.compare(0, p.size(), p) == 0 &&
                                (path[p.size()] == '.' || path[p.size()] == '['));
    if (prefix && p.size() >= best.size()) {
      best = p;
      loc.file = f;
    }
  }
  if (best.empty() && (!node || node.Mark().is_null())) {
    // A map made only to hold overrides (e.g. `tiling:` created by --set tiling.stages=2) has no
    // place in the file: blame the layer that filled it.
    for (const auto& [p, f] : origin_)
      if (p.size() > path.size() && p.compare(0, path.size(), path) == 0 && p[path.size()] == '.') {
        loc.file = f;
        break;
      }
  }
  if (loc.file.rfind("--set", 0) == 0) return loc;  // command-line values have no line
  if (node && !node.Mark().is_null()) {
    loc.line = node.Mark().line + 1;
    loc.column = node.Mark().column + 1;
  }
  return loc;
}

void YamlDoc::set_override(const std::string& rel_path, const std::string& value,
                           const std::string& origin) {
  SourceLoc where{origin, 0, 0, join_path(root_path_, rel_path)};
  YAML::Node parsed;
  try {
    parsed = parse_text(value, origin, where.key_path);
  } catch (const ConfigError& e) {
    throw ConfigError(where, "malformed value '" + value + "': " + e.reason());
  }
  std::vector<std::string> parts;
  std::stringstream ss(rel_path);
  for (std::string part; std::getline(ss, part, '.');) {
    if (part.empty()) throw ConfigError(where, "malformed key path (empty component)");
    parts.push_back(part);
  }
  if (parts.empty()) throw ConfigError(where, "malformed key path (empty)");
  if (!root_.IsMap()) root_ = YAML::Node(YAML::NodeType::Map);
  // Walk by value: yaml-cpp nodes are handles, so assigning through them edits the tree.
  std::vector<YAML::Node> chain{root_};
  std::string path = root_path_;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    path = join_path(path, parts[i]);
    YAML::Node next = chain.back()[parts[i]];
    if (!next || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    } else if (!next.IsMap()) {
      throw ConfigError(where, fmt::format("cannot set below '{}': it is {}, not a map", path,
                                           kind_name(next)));
    }
    chain.push_back(next);
  }
  YAML::Node existing = chain.back()[parts.back()];
  if (existing && existing.IsMap() && !parsed.IsMap()) {
    std::vector<std::string> keys;
    for (const auto& kv : existing) keys.push_back(join_path(where.key_path, kv.first.as<std::string>()));
    throw ConfigError(where, fmt::format("'{}' is a group of keys, not a value; set one of: {}", where.key_path,
                                         join(keys)));
  }
  chain.back()[parts.back()] = parsed;
  origin_[join_path(root_path_, rel_path)] = origin;
}

void YamlDoc::overlay(const YAML::Node& map, const std::string& origin_file) {
  if (!root_.IsMap()) root_ = YAML::Node(YAML::NodeType::Map);
  merge_into(root_, map, root_path_, origin_file, origin_);
}

void YamlDoc::replace(const std::string& rel_path, YAML::Node node, const std::string& origin_file) {
  root_[rel_path] = node;
  origin_[join_path(root_path_, rel_path)] = origin_file;
}

void YamlDoc::check_unused(const YAML::Node& node, const std::string& path) const {
  if (node.IsSequence())
    for (size_t i = 0; i < node.size(); ++i) check_unused(node[i], fmt::format("{}[{}]", path, i));
  if (!node.IsMap()) return;
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const std::string p = join_path(path, key);
    if (!used_.count(p)) {
      std::vector<std::string> known;
      if (auto it = asked_.find(path); it != asked_.end()) known.assign(it->second.begin(), it->second.end());
      SourceLoc loc = loc_of(p, kv.first);
      std::string msg = "unknown key '" + key + "'" + did_you_mean(key, known);
      if (!known.empty() && did_you_mean(key, known).empty()) msg += "; known keys here: " + join(known);
      throw ConfigError(loc, msg);
    }
    check_unused(kv.second, p);
  }
}

void YamlDoc::finish() const { check_unused(root_, root_path_); }

std::pair<std::string, std::string> parse_set_arg(const std::string& arg) {
  auto eq = arg.find('=');
  SourceLoc where{"--set " + arg, 0, 0, ""};
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(where, "malformed --set: expected KEY.PATH=VALUE");
  std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
  if (value.empty()) throw ConfigError(where, "malformed --set: empty value for '" + key + "'");
  if (key.find(' ') != std::string::npos || key.front() == '.' || key.back() == '.' ||
      key.find("..") != std::string::npos)
    throw ConfigError(where, "malformed --set: bad key path '" + key + "'");
  return {key, value};
}

}  // namespace npusim
