// The sweep file, its expansion into points, point ids and the resolved sweep (OUT/sweep.yaml).
#include "app/sweep.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>

#include "common/text.hpp"
#include "common/yaml_reader.hpp"

namespace npusim::app {
namespace fs = std::filesystem;

namespace {

// Sweeps beyond this are a typo (an axis pasted twice), not a plan.
constexpr size_t kMaxPoints = 1'000'000;
constexpr const char* kManifestFormat = "npusim-sweep/1";

std::string slurp(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

SourceLoc mark_loc(const std::string& file, const YAML::Mark& m, const std::string& key_path) {
  return m.is_null() ? SourceLoc{file, 0, 0, key_path}
                     : SourceLoc{file, m.line + 1, m.column + 1, key_path};
}

// A value as YAML text that `--set key=TEXT` parses back to the same node.
std::string value_text(const YAML::Node& n) {
  if (n.IsScalar()) {
    // Plain scalars pass through untouched (1.6TB/s, 60); others are quoted by the emitter.
    YAML::Emitter e;
    e << n.Scalar();
    return e.c_str();
  }
  YAML::Emitter e;
  e.SetSeqFormat(YAML::Flow);
  e.SetMapFormat(YAML::Flow);
  e << n;
  return e.c_str();
}

// The location of `key` itself (not its value) in the map `map`.
SourceLoc key_loc(const std::string& file, const YAML::Node& map, const std::string& key,
                  const std::string& path) {
  for (const auto& kv : map)
    if (kv.first.Scalar() == key) return mark_loc(file, kv.first.Mark(), path);
  return SourceLoc{file, 0, 0, path};
}

class AxisReader {
 public:
  explicit AxisReader(SweepSpec& spec) : spec_(spec) {}

  // One axis of `group` (the map holding it) into dimension `dim`.
  void read(const YamlNode& group, const std::string& key, size_t dim, const std::string& where) {
    const SourceLoc kloc = key_loc(spec_.file, group.raw(), key, where);
    if (auto [it, fresh] = seen_.emplace(key, kloc); !fresh)
      throw ConfigError(
          kloc, fmt::format("axis '{}' is given twice (first at line {})", key, it->second.line));
    if (key == "base")
      throw ConfigError(
          kloc,
          "the base config is the top-level `base:` key (a list of configs makes it an axis)");
    YamlNode v = group.at(key);
    if (!v.is_seq()) v.fail(fmt::format("expected a list of values for axis '{}'", key));
    if (v.size() == 0)
      throw ConfigError(kloc, fmt::format("empty axis '{}': give at least one value", key));
    SweepAxis a;
    a.key = key, a.where = where, a.loc = kloc, a.dim = dim;
    for (size_t i = 0; i < v.size(); ++i) {
      YamlNode x = v[i];
      if (x.is_null()) x.fail("expected a value, found nothing");
      a.values.push_back(value_text(x.raw()));
      a.value_locs.push_back(mark_loc(spec_.file, x.raw().Mark(), fmt::format("{}[{}]", where, i)));
    }
    v.consume_all();
    spec_.axes.push_back(std::move(a));
  }

 private:
  SweepSpec& spec_;
  std::map<std::string, SourceLoc> seen_;
};

constexpr const char* kPointHeader =
    "# npusim sweep point: the resolved config (npusim run config.yaml runs it again)\n";

// `text` (block YAML, top-level keys at column 0) without the entry of `key`.
std::string without_top_level_key(const std::string& text, const std::string& key) {
  std::string out;
  bool skipping = false;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    end = end == std::string::npos ? text.size() : end + 1;
    const std::string_view line(text.data() + pos, end - pos);
    if (!line.empty() && line[0] != ' ' && line[0] != '\n' && line[0] != '-')
      skipping = line.substr(0, key.size() + 1) == key + ":";
    if (!skipping) out.append(line);
    pos = end;
  }
  return out;
}

// "unknown key 'tokns'" -> "unknown key 'workload.tokns'": the whole path, as the user wrote it.
std::string with_full_key(std::string msg, const std::string& key_path) {
  const std::string leaf = key_path.substr(key_path.rfind('.') + 1);
  const std::string from = "unknown key '" + leaf + "'";
  if (msg.rfind(from, 0) == 0 && leaf != key_path)
    msg = "unknown key '" + key_path + "'" + msg.substr(from.size());
  return msg;
}

std::string describe_point(const SweepSpec& s, const PlannedPoint& p) {
  std::vector<std::string> kv;
  for (size_t a = 0; a < s.axes.size(); ++a) kv.push_back(s.axes[a].key + "=" + p.keys[a]);
  return fmt::format("sweep point {}: {}", p.index,
                     kv.empty() ? std::string("the base config") : join(kv));
}

// Re-throws a point's ConfigError at the sweep file's axis when an override caused it.
[[noreturn]] void rethrow_for_point(const ConfigError& e, const SweepSpec& s, const PlannedPoint& p,
                                    const std::vector<size_t>& pos) {
  const SourceLoc& l = e.loc();
  const std::string& msg = e.reason();
  if (l.file.rfind("--set ", 0) == 0) {
    const std::string arg = l.file.substr(6);
    const std::string key = arg.substr(0, arg.find('='));
    for (const auto& a : s.axes) {
      if (a.key != key) continue;
      // Mistakes in the key point at the axis, mistakes in a value at that value.
      const bool about_key = msg.find("unknown key") != std::string::npos ||
                             msg.find("key path") != std::string::npos ||
                             msg.find("a key below") != std::string::npos ||
                             msg.find("cannot set below") != std::string::npos;
      SourceLoc where = about_key ? a.loc : a.value_locs[pos[a.dim]];
      where.key_path = about_key ? a.where : where.key_path;
      const std::string suffix = about_key ? "" : fmt::format(" ({})", describe_point(s, p));
      throw ConfigError(where, with_full_key(msg, l.key_path.empty() ? key : l.key_path) + suffix);
    }
  }
  throw ConfigError(l, fmt::format("{} ({})", msg, describe_point(s, p)));
}

}  // namespace

size_t SweepSpec::num_points() const {
  size_t n = 1;
  for (size_t d : dims) n *= d;
  return n;
}

std::string hash_hex(const std::string& text) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64: offset basis and prime
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

SweepSpec load_sweep(const std::string& file) {
  auto doc = YamlDoc::load(file);
  YamlNode root = doc->root();
  if (!root.is_map())
    root.fail("expected a map with keys base and axes (and optionally name, zip)");
  SweepSpec s;
  s.file = file;
  s.text = slurp(file);
  s.name = root.get("name") ? root.at("name").as_string() : fs::path(file).stem().string();
  AxisReader reader(s);
  // Known keys for did-you-mean; they are read in file order below.
  root.has("axes");
  root.has("zip");

  YamlNode base = root.at("base");
  const fs::path dir = fs::path(file).parent_path();
  auto check_base = [&](const YamlNode& b) {
    std::string path = b.as_string();
    fs::path resolved = fs::path(path).is_relative() ? dir / path : fs::path(path);
    if (std::error_code ec; !fs::is_regular_file(resolved, ec))
      b.fail(fmt::format("base config '{}' not found (looked for {})", path, resolved.string()));
    return path;
  };
  if (base.is_seq()) {
    if (base.size() == 0) base.fail("empty list of base configs");
    SweepAxis a;
    a.key = "base", a.where = "base", a.dim = 0;
    a.loc = key_loc(file, root.raw(), "base", "base");
    for (size_t i = 0; i < base.size(); ++i) {
      s.bases.push_back(check_base(base[i]));
      a.values.push_back(s.bases.back());
      a.value_locs.push_back(base[i].loc());
    }
    s.axes.push_back(std::move(a));
    s.dims.push_back(s.bases.size());
  } else {
    s.bases.push_back(check_base(base));
  }

  // axes and zip add dimensions in the order the two keys appear in the file.
  for (const auto& kv : root.raw()) {
    const std::string top = kv.first.Scalar();
    if (top == "axes") {
      YamlNode axes = root.at("axes");
      if (!axes.is_map()) axes.fail("expected a map of key path -> list of values");
      for (const auto& key : axes.keys()) {
        reader.read(axes, key, s.dims.size(), "axes." + key);
        s.dims.push_back(s.axes.back().values.size());
      }
    } else if (top == "zip") {
      YamlNode zip = root.at("zip");
      if (!zip.is_seq()) zip.fail("expected a list of maps (each map's axes move in lock-step)");
      for (size_t g = 0; g < zip.size(); ++g) {
        YamlNode group = zip[g];
        if (!group.is_map() || group.keys().empty())
          group.fail("expected a map of key path -> list of values");
        const size_t first = s.axes.size();
        for (const auto& key : group.keys())
          reader.read(group, key, s.dims.size(), fmt::format("zip[{}].{}", g, key));
        for (size_t a = first + 1; a < s.axes.size(); ++a)
          if (s.axes[a].values.size() != s.axes[first].values.size())
            throw ConfigError(
                s.axes[a].loc,
                fmt::format("lock-step axes need equal lengths: '{}' has {} values, '{}' has {}",
                            s.axes[first].key, s.axes[first].values.size(), s.axes[a].key,
                            s.axes[a].values.size()));
        s.dims.push_back(s.axes[first].values.size());
      }
    }
  }
  doc->finish();
  size_t n = 1;
  for (size_t d : s.dims) {
    if (n > kMaxPoints / d)
      root.fail(fmt::format("the sweep has more than {} points; split it", kMaxPoints));
    n *= d;
  }
  return s;
}

SweepPlan plan_sweep(const SweepSpec& spec, bool keep_runs) {
  SweepPlan plan;
  plan.spec = spec;
  plan.command = "npusim sweep " + spec.file;
  const size_t n = spec.num_points();
  const fs::path dir = fs::path(spec.file).parent_path();
  std::map<std::string, size_t> first_of;
  std::vector<size_t> pos(spec.dims.size());
  plan.points.reserve(n);
  HardwareCacheScope hardware_cache;
  for (size_t i = 0; i < n; ++i) {
    // Mixed radix, the last dimension fastest.
    for (size_t d = spec.dims.size(), rest = i; d-- > 0;) {
      pos[d] = rest % spec.dims[d];
      rest /= spec.dims[d];
    }
    PlannedPoint p;
    p.index = i;
    std::string base = spec.bases.front();
    for (const auto& a : spec.axes) {
      const std::string& v = a.values[pos[a.dim]];
      p.keys.push_back(v);
      if (a.key == "base")
        base = v;
      else
        p.sets.push_back(a.key + "=" + v);
    }
    p.base = fs::path(base).is_relative() ? (dir / base).string() : base;
    LoadedRun run;
    try {
      run = load_run(p.base, p.sets);
    } catch (const ConfigError& e) {
      rethrow_for_point(e, spec, p, pos);
    }
    std::string hardware = fmt::format("# resolved hardware: {}\n", run.hw.name);
    for (const auto& v : sim::describe_hardware(run.hw))
      hardware += fmt::format("#   {} = {}{}{}\n", v.info.name, v.value,
                              v.info.unit.empty() ? "" : " ", v.info.unit);
    p.config_text = kPointHeader + run.resolved_config + hardware;
    // The id covers what the point computes: the config without its `hardware:` entry (a preset
    // name or overrides, however spelled) and the resolved hardware parameters instead.
    p.id = hash_hex(without_top_level_key(run.resolved_config, "hardware") + hardware);
    p.first = first_of.emplace(p.id, i).first->second;
    if (keep_runs && p.first == i) p.run = std::make_shared<const LoadedRun>(std::move(run));
    plan.points.push_back(std::move(p));
  }

  std::string identity = spec.name + "\n";
  for (const auto& a : spec.axes) identity += a.key + "\x1f";
  for (const auto& p : plan.points) identity += "\n" + p.id + "\x1f" + join(p.keys, "\x1f");
  plan.sweep_id = hash_hex(identity);

  YAML::Emitter e;
  e << YAML::Comment(
      "The resolved sweep, written by `npusim sweep` and read by `npusim merge`; do not edit.");
  e << YAML::BeginMap;
  e << YAML::Key << "format" << YAML::Value << kManifestFormat;
  e << YAML::Key << "name" << YAML::Value << spec.name;
  e << YAML::Key << "command" << YAML::Value << plan.command;
  e << YAML::Key << "sweep_id" << YAML::Value << plan.sweep_id;
  e << YAML::Key << "key_columns" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const auto& a : spec.axes) e << a.key;
  e << YAML::EndSeq;
  e << YAML::Key << "points" << YAML::Value << YAML::BeginSeq;
  for (const auto& p : plan.points) {
    e << YAML::Flow << YAML::BeginSeq << p.id;
    for (const auto& k : p.keys) e << k;
    e << YAML::EndSeq;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "source" << YAML::Value << YAML::Literal << spec.text;
  e << YAML::EndMap;
  plan.resolved_yaml = std::string(e.c_str()) + "\n";
  return plan;
}

SweepManifest manifest_of(const SweepPlan& plan) {
  SweepManifest m;
  m.file = "(in memory)";
  m.name = plan.spec.name, m.command = plan.command, m.sweep_id = plan.sweep_id,
  m.text = plan.resolved_yaml;
  for (const auto& a : plan.spec.axes) m.key_columns.push_back(a.key);
  for (const auto& p : plan.points) m.points.push_back({p.id, p.keys});
  return m;
}

SweepManifest read_manifest(const std::string& file) {
  if (std::error_code ec; !fs::exists(file, ec))
    throw ConfigError(SourceLoc{file, 0, 0, ""},
                      "not found: not the output folder of `npusim sweep`");
  auto doc = YamlDoc::load(file);
  YamlNode root = doc->root();
  SweepManifest m;
  m.file = file;
  m.text = slurp(file);
  YamlNode format = root.at("format");
  if (format.as_string() != kManifestFormat)
    format.fail(fmt::format("a resolved sweep of format '{}'; this npusim reads '{}'",
                            format.as_string(), kManifestFormat));
  m.name = root.at("name").as_string();
  m.command = root.at("command").as_string();
  m.sweep_id = root.at("sweep_id").as_string();
  YamlNode cols = root.at("key_columns");
  for (size_t i = 0; i < cols.size(); ++i) m.key_columns.push_back(cols[i].as_string());
  YamlNode points = root.at("points");
  for (size_t i = 0; i < points.size(); ++i) {
    YamlNode row = points[i];
    if (row.size() != 1 + m.key_columns.size())
      row.fail(fmt::format("expected [id, {} key values]", m.key_columns.size()));
    SweepManifest::Point p;
    p.id = row[0].as_string();
    for (size_t k = 1; k < row.size(); ++k) p.keys.push_back(row[k].as_string());
    m.points.push_back(std::move(p));
  }
  root.at("source").as_string();
  doc->finish();
  return m;
}

Shard parse_shard(const std::string& text) {
  const SourceLoc where{"--shard " + text, 0, 0, ""};
  const auto slash = text.find('/');
  auto number = [&](const std::string& s) -> int {
    if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos)
      throw ConfigError(where, "expected i/N with whole numbers, 1 <= i <= N (e.g. 3/16)");
    return std::stoi(s);
  };
  if (slash == std::string::npos) throw ConfigError(where, "expected i/N, 1 <= i <= N (e.g. 3/16)");
  Shard s{number(text.substr(0, slash)), number(text.substr(slash + 1))};
  if (s.count < 1 || s.index < 1 || s.index > s.count)
    throw ConfigError(where, fmt::format("shard {} of {} does not exist: expected 1 <= i <= N",
                                         s.index, s.count));
  return s;
}

}  // namespace npusim::app
