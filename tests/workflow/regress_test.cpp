// `npusim regress`: a suite against its baseline (exact cycles, or a tolerance), validation,
// --update-baseline with its diff, JUnit XML, and bad suites or baselines (exit 2).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "workflow_support.hpp"

namespace {

using namespace npusim::workflow_test;

const std::string kGemm = std::string(NPUSIM_SOURCE_DIR) + "/tests/workflow/data/tiny_gemm.yaml";
const std::string kAdd = std::string(NPUSIM_SOURCE_DIR) + "/configs/workloads/add_8192.yaml";

// A two-case suite (a GEMM and a small add, both validated) in a scratch folder.
fs::path write_suite(const fs::path& dir, const std::string& extra_case = "",
                     const std::string& head = "") {
  const fs::path file = dir / "suite.yaml";
  std::ofstream(file) << "name: mini\n"
                      << head << "cases:\n"
                      << "  - {name: gemm, config: " << kGemm << "}\n"
                      << "  - name: add\n    config: " << kAdd
                      << "\n    set: [\"workload.shape=[256, 1024]\"]\n"
                      << extra_case;
  return file;
}

nlohmann::json read_json(const fs::path& p) {
  return nlohmann::json::parse(slurp(p));
}

TEST(Regress, MissingBaselineAsksForUpdate) {
  const fs::path dir = scratch_dir("rg_missing");
  Result r = run_npusim({"regress", write_suite(dir).string()}, dir);
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_NE(r.err.find("suite.baseline.json: baseline not found; create it with"),
            std::string::npos)
      << r;
}

TEST(Regress, UpdateThenPassWithJunit) {
  const fs::path dir = scratch_dir("rg_pass");
  const fs::path suite = write_suite(dir);
  Result u = run_npusim({"regress", suite.string(), "--update-baseline"}, dir);
  ASSERT_EQ(u.exit_code, 0) << u;
  EXPECT_NE(u.out.find("gemm: new,"), std::string::npos) << u;
  const auto b = read_json(dir / "suite.baseline.json");
  EXPECT_EQ(b["format"], "npusim-regress-baseline/1");
  ASSERT_TRUE(b["cases"].contains("gemm"));
  EXPECT_GT(b["cases"]["gemm"]["cycles"].get<uint64_t>(), 0u);
  EXPECT_EQ(b["cases"]["add"]["kernels"].size(), 1u);

  Result r = run_npusim({"regress", suite.string(), "--junit", (dir / "junit.xml").string()}, dir);
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_NE(r.out.find("2 of 2 cases passed"), std::string::npos) << r;
  const std::string xml = slurp(dir / "junit.xml");
  EXPECT_NE(xml.find("<testsuite name=\"mini\" tests=\"2\" failures=\"0\" errors=\"0\""),
            std::string::npos)
      << xml;
  EXPECT_NE(xml.find("<testcase classname=\"npusim.regress.mini\" name=\"gemm\""),
            std::string::npos)
      << xml;
  EXPECT_EQ(xml.find("<failure"), std::string::npos) << xml;

  // A second update changes nothing.
  Result again = run_npusim({"regress", suite.string(), "--update-baseline"}, dir);
  EXPECT_NE(again.out.find("updated: no change"), std::string::npos) << again;
}

TEST(Regress, ChangedCyclesFailExactlyAndPassWithinTolerance) {
  const fs::path dir = scratch_dir("rg_fail");
  const fs::path suite = write_suite(dir);
  ASSERT_EQ(run_npusim({"regress", suite.string(), "--update-baseline"}, dir).exit_code, 0);
  auto b = read_json(dir / "suite.baseline.json");
  const uint64_t cycles = b["cases"]["gemm"]["cycles"];
  b["cases"]["gemm"]["cycles"] = cycles + 10;
  std::ofstream(dir / "edited.json") << b.dump(2);

  Result r = run_npusim({"regress", suite.string(), "--baseline", (dir / "edited.json").string(),
                         "--junit", (dir / "junit.xml").string()},
                        dir);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_NE(r.out.find("FAIL: cycles " + std::to_string(cycles) + " vs baseline " +
                       std::to_string(cycles + 10)),
            std::string::npos)
      << r;
  const std::string xml = slurp(dir / "junit.xml");
  EXPECT_NE(xml.find("failures=\"1\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("<failure type=\"regression\" message=\"cycles"), std::string::npos) << xml;

  // The suite allows 1%: ten cycles in thousands pass.
  const fs::path tolerant = dir / "tolerant";
  fs::create_directories(tolerant);
  Result t = run_npusim({"regress", write_suite(tolerant, "", "tolerance: {cycles: 1%}\n").string(),
                         "--baseline", (dir / "edited.json").string()},
                        dir);
  EXPECT_EQ(t.exit_code, 0) << t;

  // --update-baseline prints the change and rewrites the file.
  Result u = run_npusim({"regress", suite.string(), "--baseline", (dir / "edited.json").string(),
                         "--update-baseline"},
                        dir);
  ASSERT_EQ(u.exit_code, 0) << u;
  EXPECT_NE(u.out.find("gemm: " + std::to_string(cycles + 10) + " -> " + std::to_string(cycles) +
                       " cycles"),
            std::string::npos)
      << u;
  EXPECT_EQ(read_json(dir / "edited.json")["cases"]["gemm"]["cycles"].get<uint64_t>(), cycles);
}

TEST(Regress, NewCaseWithoutBaselineFails) {
  const fs::path dir = scratch_dir("rg_new");
  ASSERT_EQ(run_npusim({"regress", write_suite(dir).string(), "--update-baseline"}, dir).exit_code,
            0);
  const fs::path suite = write_suite(
      dir, "  - {name: gemm_b, config: " + kGemm + ", set: [workload.m=512], validate: false}\n");
  Result r = run_npusim({"regress", suite.string()}, dir);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_NE(r.out.find("no baseline entry"), std::string::npos) << r;
}

TEST(Regress, BadSuiteExitsTwo) {
  const fs::path dir = scratch_dir("rg_bad");
  struct Case {
    std::string body, expect;
  };
  const std::vector<Case> cases{
      {"cases:\n  - {name: a, config: " + kGemm + ", validat: false}\n",
       "unknown key 'validat' (did you mean 'validate'?)"},
      {"cases:\n  - {name: a, config: nowhere.yaml}\n", "config 'nowhere.yaml' not found"},
      {"cases:\n  - {name: a, config: " + kGemm + ", tolerance: {cycles: 2}}\n",
       "expected a percentage such as 0.5%"},
      {"cases:\n  - {name: a, config: " + kGemm + "}\n  - {name: a, config: " + kGemm + "}\n",
       "empty or repeated"},
      {"cases:\n  - {name: a, config: " + kGemm + ", set: [workload.mm=3]}\n", "case 'a': "},
  };
  for (const auto& c : cases) {
    std::ofstream(dir / "bad.yaml") << c.body;
    std::ofstream(dir / "bad.baseline.json")
        << R"({"format": "npusim-regress-baseline/1", "suite": "bad", "cases": {}})";
    Result r = run_npusim({"regress", (dir / "bad.yaml").string()}, dir);
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r;
  }
  // A baseline of another format.
  std::ofstream(dir / "bad.yaml") << "cases:\n  - {name: a, config: " << kGemm << "}\n";
  std::ofstream(dir / "bad.baseline.json") << R"({"format": "something-else", "cases": {}})";
  Result r = run_npusim({"regress", (dir / "bad.yaml").string()}, dir);
  EXPECT_EQ(r.exit_code, 2) << r;
  EXPECT_NE(r.err.find("not a baseline of format"), std::string::npos) << r;
}

}  // namespace
