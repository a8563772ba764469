#include <gtest/gtest.h>

#include "common/errors.hpp"
#include "common/text.hpp"
#include "common/yaml_reader.hpp"

namespace npusim {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(YamlReader, UnknownKeyNamesFileLineColumnPathAndNearestKey) {
  auto doc = YamlDoc::from_string("workload:\n  op: gemm\n  dtyp: fp16\n", "cfg.yaml");
  auto w = doc->root().at("workload");
  w.at("op").as_string();
  (void)w.get("dtype");
  std::string msg = error_of([&] { doc->finish(); });
  EXPECT_NE(msg.find("cfg.yaml:3:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("workload.dtyp"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'dtype'"), std::string::npos) << msg;
}

TEST(YamlReader, TypeErrorsSayWhatWasExpected) {
  auto doc = YamlDoc::from_string("m: abc\nl: 3\nf: 1.5\n", "t.yaml");
  auto r = doc->root();
  EXPECT_NE(error_of([&] { r.at("m").as_int(); }).find("expected an integer, found 'abc'"), std::string::npos);
  EXPECT_NE(error_of([&] { r.at("l").as_int_list(); }).find("expected a list"), std::string::npos);
  EXPECT_NE(error_of([&] { r.at("f").as_fraction(); }).find("fraction"), std::string::npos);
  EXPECT_NE(error_of([&] { r.at("missing"); }).find("missing required key"), std::string::npos);
}

TEST(YamlReader, OverridesReplaceValuesAndAreAttributedToTheCommandLine) {
  auto doc = YamlDoc::from_string("a:\n  b: 1\n", "t.yaml");
  doc->set_override("a.b", "7", "--set a.b=7");
  doc->set_override("a.c", "[1, 2]", "--set a.c=[1, 2]");
  auto a = doc->root().at("a");
  EXPECT_EQ(a.at("b").as_int(), 7);
  EXPECT_EQ(a.at("c").as_int_list().size(), 2u);
  EXPECT_EQ(a.at("b").loc().file, "--set a.b=7");
  EXPECT_THROW(doc->set_override("a.b.c", "1", "--set a.b.c=1"), ConfigError);  // a.b is a scalar
}

TEST(YamlReader, MalformedSetArgumentsAreRejected) {
  EXPECT_THROW(parse_set_arg("hardware.num_aic"), ConfigError);
  EXPECT_THROW(parse_set_arg("=3"), ConfigError);
  EXPECT_THROW(parse_set_arg("a..b=3"), ConfigError);
  EXPECT_THROW(parse_set_arg("a.b="), ConfigError);
  EXPECT_EQ(parse_set_arg("a.b=c=d").second, "c=d");
}

TEST(YamlReader, ReassigningAWalkDoesNotEditTheDocument) {
  auto doc = YamlDoc::from_string("a: {b: {c: 1}}\nz: 2\n", "t.yaml");
  std::optional<YamlNode> cur(doc->root());
  cur.emplace(cur->at("a"));
  cur.emplace(cur->at("b"));
  EXPECT_EQ(cur->at("c").as_int(), 1);
  EXPECT_EQ(doc->root().at("z").as_int(), 2);
}

TEST(Text, DidYouMeanPicksTheNearestCloseName) {
  EXPECT_EQ(did_you_mean("num_aicc", {"num_aic", "num_aiv", "freq_mhz"}), " (did you mean 'num_aic'?)");
  EXPECT_EQ(did_you_mean("zzzzzzzz", {"num_aic"}), "");
}

}  // namespace
}  // namespace npusim
