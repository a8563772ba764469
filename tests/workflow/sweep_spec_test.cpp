// Sweep files as a library call: expansion order (cartesian, zip, base lists), stable point ids,
// and every bad input named at its line and column in the sweep file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>

#include "app/sweep.hpp"
#include "common/errors.hpp"
#include "workflow_support.hpp"

namespace {

using namespace npusim;
using namespace npusim::workflow_test;

const std::string kData = std::string(NPUSIM_SOURCE_DIR) + "/tests/workflow/data/";

// A sweep file in a scratch folder whose base is the tiny GEMM.
std::string write_sweep(const std::string& name, const std::string& body) {
  const fs::path dir = scratch_dir(name);
  const fs::path file = dir / "sweep.yaml";
  std::ofstream(file) << "base: " << kData << "tiny_gemm.yaml\n" << body;
  return file.string();
}

// The ConfigError message of planning `file`, or "" when it plans.
std::string plan_error(const std::string& file) {
  try {
    app::plan_sweep(app::load_sweep(file), false);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(SweepSpec, CartesianProductInWrittenOrderLastAxisFastest) {
  app::SweepPlan plan = app::plan_sweep(app::load_sweep(kData + "small_sweep.yaml"), false);
  ASSERT_EQ(plan.points.size(), 6u);
  ASSERT_EQ(plan.spec.axes.size(), 2u);
  EXPECT_EQ(plan.spec.axes[0].key, "hardware");
  EXPECT_EQ(plan.spec.axes[1].key, "workload.m");
  const std::vector<std::vector<std::string>> want{
      {"ascend910b2", "256"}, {"ascend910b2", "512"}, {"ascend910b2", "1024"},
      {"ascend950pr", "256"}, {"ascend950pr", "512"}, {"ascend950pr", "1024"}};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(plan.points[i].keys, want[i]) << "point " << i;
  EXPECT_EQ(plan.points[4].sets,
            (std::vector<std::string>{"hardware=ascend950pr", "workload.m=512"}));
}

TEST(SweepSpec, ZipGroupMovesInLockStep) {
  app::SweepPlan plan = app::plan_sweep(app::load_sweep(kData + "zip_sweep.yaml"), false);
  ASSERT_EQ(plan.points.size(), 4u);
  const std::vector<std::vector<std::string>> want{{"256", "512", "1600"},
                                                   {"256", "512", "3200"},
                                                   {"512", "1024", "1600"},
                                                   {"512", "1024", "3200"}};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(plan.points[i].keys, want[i]) << "point " << i;
}

TEST(SweepSpec, BaseListIsTheFirstAxis) {
  const std::string file = write_sweep("baselist", "");
  std::ofstream(file)
      << "base: [" << kData << "tiny_gemm.yaml, " << NPUSIM_SOURCE_DIR
      << "/configs/workloads/gemv_like.yaml]\naxes:\n  hardware: [ascend910b2, ascend950pr]\n";
  app::SweepPlan plan = app::plan_sweep(app::load_sweep(file), false);
  ASSERT_EQ(plan.points.size(), 4u);
  EXPECT_EQ(plan.spec.axes[0].key, "base");
  EXPECT_EQ(plan.points[1].keys[1], "ascend950pr");
  EXPECT_NE(plan.points[1].base, plan.points[2].base);
}

TEST(SweepSpec, IdsAreStableDistinctAndFollowTheResolvedConfig) {
  const auto ids = [](const std::string& file) {
    std::vector<std::string> out;
    for (const auto& p : app::plan_sweep(app::load_sweep(file), false).points) out.push_back(p.id);
    return out;
  };
  const auto a = ids(kData + "small_sweep.yaml");
  EXPECT_EQ(a, ids(kData + "small_sweep.yaml"));
  EXPECT_EQ(std::set<std::string>(a.begin(), a.end()).size(), a.size());
  for (const auto& id : a) EXPECT_TRUE(std::regex_match(id, std::regex("[0-9a-f]{16}"))) << id;

  // The same configs in another order, with the bandwidth spelled with a unit: the same ids.
  const std::string swapped = write_sweep(
      "swapped", "axes:\n  workload.m: [1024, 512, 256]\n  hardware: [ascend950pr, ascend910b2]\n");
  const auto b = ids(swapped);
  EXPECT_EQ(std::set<std::string>(a.begin(), a.end()), std::set<std::string>(b.begin(), b.end()));
  const auto bw1 = ids(write_sweep("bw1", "axes:\n  hardware.hbm.peak_bw_gbs: [1600, 3200]\n"));
  const auto bw2 =
      ids(write_sweep("bw2", "axes:\n  hardware.hbm.peak_bw_gbs: [1.6TB/s, 3.2TB/s]\n"));
  EXPECT_EQ(bw1, bw2);
  // ascend910b2's own bandwidth is 1600 GB/s: the override changes nothing, so neither does the id.
  EXPECT_EQ(bw1[0], ids(write_sweep("plain", "axes:\n  workload.m: [256]\n"))[0]);
}

TEST(SweepSpec, RepeatedConfigIsOnePoint) {
  app::SweepPlan plan =
      app::plan_sweep(app::load_sweep(write_sweep(
                          "repeat", "axes:\n  hardware.hbm.peak_bw_gbs: [1600, 1.6TB/s, 3200]\n")),
                      false);
  ASSERT_EQ(plan.points.size(), 3u);
  EXPECT_EQ(plan.points[1].id, plan.points[0].id);
  EXPECT_EQ(plan.points[1].first, 0u);
  EXPECT_EQ(plan.points[2].first, 2u);
}

TEST(SweepSpec, UnknownKeyPathNamesTheAxisAndTheNearestKey) {
  const std::string file =
      write_sweep("typo", "axes:\n  workload.m: [256]\n  workload.dtyp: [fp16]\n");
  const std::string err = plan_error(file);
  EXPECT_NE(
      err.find(
          file +
          ":4:3: key 'axes.workload.dtyp': unknown key 'workload.dtyp' (did you mean 'dtype'?)"),
      std::string::npos)
      << err;
  const std::string top = write_sweep("toptypo", "axes:\n  workloda.m: [256]\n");
  EXPECT_NE(plan_error(top).find(top + ":3:3: key 'axes.workloda.m'"), std::string::npos)
      << plan_error(top);
  EXPECT_NE(plan_error(top).find("did you mean 'workload'"), std::string::npos) << plan_error(top);
  const std::string hw = write_sweep("hwtypo", "axes:\n  hardware.hbm.peak_bw: [1600]\n");
  EXPECT_NE(plan_error(hw).find(hw + ":3:3: key 'axes.hardware.hbm.peak_bw'"), std::string::npos)
      << plan_error(hw);
  EXPECT_NE(plan_error(hw).find("peak_bw_gbs"), std::string::npos) << plan_error(hw);
}

TEST(SweepSpec, BadValueIsNamedAtItsColumnWithThePoint) {
  const std::string file = write_sweep("badvalue", "axes:\n  workload.m: [256, -5]\n");
  const std::string err = plan_error(file);
  EXPECT_NE(err.find(file + ":3:21: key 'axes.workload.m[1]'"), std::string::npos) << err;
  EXPECT_NE(err.find("sweep point 1: workload.m=-5"), std::string::npos) << err;
  const std::string preset =
      write_sweep("badpreset", "axes:\n  hardware: [ascend910b2, ascend951]\n");
  EXPECT_NE(plan_error(preset).find(
                preset + ":3:27: key 'axes.hardware[1]': unknown hardware preset 'ascend951'"),
            std::string::npos)
      << plan_error(preset);
}

TEST(SweepSpec, MalformedSweepsAreRejectedWithTheReason) {
  struct Case {
    std::string body, expect;
  };
  const std::vector<Case> cases{
      {"axes:\n  workload.m: []\n", ":3:3: key 'axes.workload.m': empty axis 'workload.m'"},
      {"axes:\n  workload.m: 256\n", "expected a list of values"},
      {"zip:\n  - {workload.m: [256, 512], workload.n: [256]}\n",
       "lock-step axes need equal lengths"},
      {"axes:\n  workload.m: [256]\nzip:\n  - {workload.m: [512]}\n",
       "axis 'workload.m' is given twice (first at line 3)"},
      {"axis:\n  workload.m: [256]\n", "unknown key 'axis' (did you mean 'axes'?)"},
      {"axes:\n  base: [a.yaml]\n", "top-level `base:`"},
  };
  for (const auto& c : cases) {
    const std::string file = write_sweep("bad", c.body);
    const std::string err = plan_error(file);
    EXPECT_NE(err.find(c.expect), std::string::npos) << c.body << "\n-> " << err;
    EXPECT_EQ(err.rfind(file, 0), 0u) << err;
  }
  const std::string missing = write_sweep("nobase", "");
  std::ofstream(missing) << "base: nowhere.yaml\n";
  EXPECT_NE(plan_error(missing).find("base config 'nowhere.yaml' not found"), std::string::npos);
}

TEST(SweepSpec, ShardMustBeOneBasedWithinCount) {
  EXPECT_EQ(app::parse_shard("3/16").index, 3);
  EXPECT_EQ(app::parse_shard("16/16").count, 16);
  for (const char* bad : {"17/16", "0/16", "x/y", "3", "3/0", "-1/4", "1/"}) {
    try {
      app::parse_shard(bad);
      ADD_FAILURE() << bad << " accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("--shard ") + bad), std::string::npos)
          << e.what();
    }
  }
}

TEST(SweepSpec, ManifestRoundTrips) {
  app::SweepPlan plan = app::plan_sweep(app::load_sweep(kData + "zip_sweep.yaml"), false);
  const fs::path file = scratch_dir("manifest") / "sweep.yaml";
  std::ofstream(file) << plan.resolved_yaml;
  app::SweepManifest m = app::read_manifest(file.string());
  app::SweepManifest want = app::manifest_of(plan);
  EXPECT_EQ(m.sweep_id, want.sweep_id);
  EXPECT_EQ(m.key_columns, want.key_columns);
  ASSERT_EQ(m.points.size(), want.points.size());
  for (size_t i = 0; i < m.points.size(); ++i) {
    EXPECT_EQ(m.points[i].id, want.points[i].id);
    EXPECT_EQ(m.points[i].keys, want.points[i].keys);
  }
  EXPECT_EQ(m.text, plan.resolved_yaml);
}

}  // namespace
