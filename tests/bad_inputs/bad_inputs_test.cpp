// The bad-input corpus (tests/bad_inputs/manifest.yaml) run through the npusim binary, one test per
// case: each runs NPUSIM_BIN with the case's arguments in an empty scratch folder (its cwd, and the
// {out} of its arguments) under a 20 s limit, and must
//   - exit with the expected code (a signal or the time limit is a crash or a hang),
//   - print a stderr matching the case's regex (file:line:col and key path where one exists), with
//     no "internal error",
//   - print nothing on stdout (unless the case says `stdout: any`),
//   - leave the scratch folder empty: a refused command writes no partial output.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;

const fs::path kCorpus = fs::path(NPUSIM_SOURCE_DIR) / "tests" / "bad_inputs";
constexpr auto kTimeLimit = std::chrono::seconds(20);

struct Case {
  std::string name;
  std::string file;  // relative to the corpus folder; empty when the arguments alone are bad
  std::vector<std::string> args;
  int exit_code = 2;
  std::string stderr_regex;
  bool stdout_any = false;
};

// gtest prints a parameter in test listings (and CTest's names): the case's name, not its bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// {file}: the case's file; {dir}: the corpus folder; {src}: the source tree; {out}: a path inside
// the scratch folder (not created). In the regex the values are escaped.
std::string substitute(std::string text, const std::map<std::string, std::string>& vars, bool escape) {
  static const std::regex kSpecial(R"([.^$|()\[\]{}*+?\\])");
  for (const auto& [key, value] : vars) {
    const std::string v = escape ? std::regex_replace(value, kSpecial, R"(\$&)") : value;
    for (size_t pos; (pos = text.find(key)) != std::string::npos;) text.replace(pos, key.size(), v);
  }
  return text;
}

struct Manifest {
  std::vector<Case> cases;
  std::string error;  // why it could not be read
};

const Manifest& manifest() {
  static const Manifest m = [] {
    Manifest out;
    const std::string file = (kCorpus / "manifest.yaml").string();
    try {
      const YAML::Node root = YAML::LoadFile(file);
      std::set<std::string> names;
      for (const auto& c : root["cases"]) {
        Case k;
        k.name = c["name"].as<std::string>();
        if (k.name.empty() || k.name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") != std::string::npos)
          throw std::runtime_error("case name '" + k.name + "': use lower-case letters, digits and _");
        if (!names.insert(k.name).second) throw std::runtime_error("case name '" + k.name + "' is repeated");
        if (c["file"]) k.file = c["file"].as<std::string>();
        k.args = c["args"].as<std::vector<std::string>>();
        if (c["exit"]) k.exit_code = c["exit"].as<int>();
        k.stderr_regex = c["stderr"].as<std::string>();
        if (c["stdout"]) k.stdout_any = c["stdout"].as<std::string>() == "any";
        for (const auto& kv : c) {
          static const std::set<std::string> kKeys{"name", "file", "args", "exit", "stderr", "stdout"};
          if (!kKeys.count(kv.first.as<std::string>()))
            throw std::runtime_error("case '" + k.name + "': unknown key '" + kv.first.as<std::string>() + "'");
        }
        out.cases.push_back(std::move(k));
      }
    } catch (const std::exception& e) {
      out.error = file + ": " + e.what();
    }
    return out;
  }();
  return m;
}

struct Outcome {
  int exit_code = -1;  // the exit status, or -signal when killed
  bool timed_out = false;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs NPUSIM_BIN with `args` in `cwd`; stdout and stderr go to files in `capture` (no pipes).
Outcome run(const std::vector<std::string>& args, const fs::path& cwd, const fs::path& capture) {
  Outcome o;
  const fs::path out_file = capture / "stdout", err_file = capture / "stderr";
  std::vector<std::string> copy = args;
  std::string bin = NPUSIM_BIN;
  std::vector<char*> argv{bin.data()};
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    o.err = "fork failed";
    return o;
  }
  if (pid == 0) {
    FILE* so = std::fopen(out_file.c_str(), "wb");
    FILE* se = std::fopen(err_file.c_str(), "wb");
    if (!so || !se || chdir(cwd.c_str()) != 0) _exit(126);
    dup2(fileno(so), STDOUT_FILENO);
    dup2(fileno(se), STDERR_FILENO);
    unsetenv("NPUSIM_CONFIG_DIR");  // the presets of this source tree
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + kTimeLimit;
  while (true) {
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0) {
      o.err = "waitpid failed";
      return o;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      o.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? -WTERMSIG(status) : -1000;
  o.out = slurp(out_file);
  o.err = slurp(err_file);
  return o;
}

// What is wrong with an outcome, one line each; empty when the case passes.
std::vector<std::string> problems(const Case& c, const Outcome& o, const std::string& regex,
                                  const std::vector<std::string>& left_behind) {
  std::vector<std::string> p;
  if (o.timed_out) p.push_back("hang: killed after 20 s");
  else if (o.exit_code < 0) p.push_back("crash: killed by signal " + std::to_string(-o.exit_code));
  else if (o.exit_code != c.exit_code)
    p.push_back("exit code " + std::to_string(o.exit_code) + ", expected " + std::to_string(c.exit_code));
  if (o.err.find("internal error") != std::string::npos) p.push_back("stderr reports an internal error");
  try {
    if (!std::regex_search(o.err, std::regex(regex))) p.push_back("stderr does not match /" + regex + "/");
  } catch (const std::regex_error& e) {
    p.push_back("bad regex in the manifest: /" + regex + "/: " + e.what());
  }
  if (!c.stdout_any && !o.out.empty()) p.push_back("stdout is not empty");
  for (const auto& f : left_behind) p.push_back("left partial output: " + f);
  return p;
}

class BadInput : public ::testing::TestWithParam<Case> {};

TEST(BadInputManifest, Loads) {
  const Manifest& m = manifest();
  ASSERT_TRUE(m.error.empty()) << m.error;
  EXPECT_GE(m.cases.size(), 100u);
  for (const auto& c : m.cases) {
    if (!c.file.empty()) {
      EXPECT_TRUE(fs::exists(kCorpus / c.file)) << c.name << ": no file " << c.file;
    }
  }
}

TEST_P(BadInput, FailsCleanly) {
  const Case& c = GetParam();
  std::string tmpl = (fs::temp_directory_path() / "npusim_bad_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const fs::path root = tmpl, scratch = root / "scratch", capture = root / "capture";
  fs::create_directories(scratch);
  fs::create_directories(capture);
  const std::map<std::string, std::string> vars{
      {"{file}", c.file.empty() ? "" : (kCorpus / c.file).string()},
      {"{dir}", kCorpus.string()},
      {"{src}", NPUSIM_SOURCE_DIR},
      {"{out}", (scratch / "out").string()}};
  std::vector<std::string> args;
  for (const auto& a : c.args) args.push_back(substitute(a, vars, false));
  const Outcome o = run(args, scratch, capture);
  std::vector<std::string> left_behind;
  for (const auto& e : fs::recursive_directory_iterator(scratch)) left_behind.push_back(e.path().string());
  const std::vector<std::string> wrong = problems(c, o, substitute(c.stderr_regex, vars, true), left_behind);
  std::error_code ec;
  fs::remove_all(root, ec);

  std::string command = "npusim";
  for (const auto& a : args) command += " " + a;
  std::string report = "$ " + command + "\nexit code: " + std::to_string(o.exit_code) + "\n--- stderr ---\n" + o.err +
                       "--- stdout ---\n" + o.out + "--------------\n";
  std::string list;
  for (const auto& w : wrong) list += "  " + w + "\n";
  EXPECT_TRUE(wrong.empty()) << list << report;
}

INSTANTIATE_TEST_SUITE_P(Corpus, BadInput, ::testing::ValuesIn(manifest().cases),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(BadInput);  // an unreadable manifest: Loads fails

}  // namespace
