// The report reader: one flat view of a run's JSON, a sweep's JSON and a sweep's HDF5, and typed
// errors that name the file and what is wrong with it.
#include "reports/report_reader.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "report_test_support.hpp"
#include "reports/writers.hpp"

namespace npusim {
namespace {

std::string error_reading(const std::string& path) {
  try {
    reports::read_report(path);
  } catch (const reports::ReportError& e) {
    return e.what();
  }
  return "no error";
}

std::string write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(ReportReader, ReadsARunJsonAsOnePointWithoutKeys) {
  const reports::RunReport r = test::synthetic_sweep(1, 3).points[0].report;
  const std::string file = test::temp_folder("run_json") + "/run.json";
  reports::write_file_atomic(file, reports::to_json(r).dump(2));
  const reports::FlatReport f = reports::read_report(file);
  EXPECT_EQ(f.format, "run-json");
  EXPECT_EQ(f.source, file);
  EXPECT_TRUE(f.key_columns.empty());
  ASSERT_EQ(f.points.size(), 1u);
  EXPECT_EQ(f.points[0].id, "point_0.yaml@ascend910b2");
  EXPECT_EQ(f.metric_names, reports::point_metric_names());
  const auto m = reports::point_metrics(r);
  for (size_t i = 0; i < m.size(); ++i)
    EXPECT_EQ(f.points[0].metrics[i], m[i].second) << m[i].first;
  EXPECT_EQ(*f.metric_index("cycles"), 0u);
  EXPECT_FALSE(f.metric_index("nope").has_value());
}

TEST(ReportReader, RecognisesHdf5ByItsSignatureNotItsName) {
  const std::string dir = test::temp_folder("h5_name");
  reports::write_hdf5(test::synthetic_sweep(2, 1), dir + "/looks_like.json");
  EXPECT_EQ(reports::read_report(dir + "/looks_like.json").format, "hdf5");
  reports::write_file_atomic(dir + "/looks_like.h5",
                             reports::to_json(test::synthetic_sweep(2, 1)).dump());
  EXPECT_EQ(reports::read_report(dir + "/looks_like.h5").format, "sweep-json");
}

TEST(ReportReader, ASweepJsonWithoutStoredMetricsTakesThemFromTheReports) {
  const reports::SweepReport s = test::synthetic_sweep(3, 2);
  nlohmann::json j = reports::to_json(s);
  for (auto& p : j["points"]) p.erase("metrics");
  const reports::FlatReport f = reports::flatten_report(j, "inline");
  ASSERT_EQ(f.points.size(), 3u);
  EXPECT_EQ(f.points[2].metrics,
            reports::flatten_report(reports::to_json(s), "x").points[2].metrics);
}

TEST(ReportReaderErrors, AMissingFileNamesTheFile) {
  const std::string file = test::temp_folder("missing") + "/nope.json";
  const std::string e = error_reading(file);
  EXPECT_NE(e.find("report '" + file + "': cannot open it"), std::string::npos) << e;
  EXPECT_NE(error_reading(test::temp_folder("folder")).find("is a folder"), std::string::npos);
}

TEST(ReportReaderErrors, TextAndForeignJsonAreNotReports) {
  const std::string dir = test::temp_folder("not_report");
  EXPECT_NE(error_reading(write_text(dir + "/a.json", "hello, world"))
                .find("not an npusim report: neither HDF5 nor JSON"),
            std::string::npos);
  EXPECT_NE(error_reading(write_text(dir + "/b.json", "{\"name\": 1}")).find("no schema_version"),
            std::string::npos);
  EXPECT_NE(
      error_reading(write_text(dir + "/c.json", "{\"schema_version\": 1}")).find("neither a run"),
      std::string::npos);
  EXPECT_NE(error_reading(write_text(dir + "/d.json", "")).find("not an npusim report"),
            std::string::npos);
  // An HDF5 signature followed by garbage.
  EXPECT_NE(
      error_reading(write_text(dir + "/e.h5", std::string("\x89HDF\r\n\x1a\n", 8) + "garbage"))
          .find("cannot open it as HDF5"),
      std::string::npos);
}

TEST(ReportReaderErrors, AnotherSchemaMajorIsRefused) {
  const std::string dir = test::temp_folder("schema");
  nlohmann::json j = reports::to_json(test::synthetic_sweep(1, 1));
  j["schema_version"] = 2;
  const std::string e = error_reading(write_text(dir + "/s2.json", j.dump()));
  EXPECT_NE(e.find("report schema 2, this npusim reads schema 1"), std::string::npos) << e;
  EXPECT_NE(e.find("s2.json"), std::string::npos) << e;
  j["schema_version"] = 1.3;  // a minor revision reads
  EXPECT_NO_THROW(reports::flatten_report(j, "minor"));
}

TEST(ReportReaderErrors, ABrokenRunReportNamesTheKey) {
  nlohmann::json j = reports::to_json(test::synthetic_sweep(1, 1).points[0].report);
  j["kernels"][0].erase("utilization");
  const std::string e =
      error_reading(write_text(test::temp_folder("broken") + "/run.json", j.dump()));
  EXPECT_NE(e.find("'kernels[0].utilization' is missing"), std::string::npos) << e;
}

TEST(ReportReaderErrors, AreConfigErrorsForTheCommandLine) {
  try {
    reports::read_report("/no/such/report.json");
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    SUCCEED();
  }
}

}  // namespace
}  // namespace npusim
