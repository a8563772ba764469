// The sweep report's files: CSV for spreadsheets, HDF5 for pandas (read back through the report
// reader here; tests/reports/h5_check.py checks it with h5py and pandas), both written atomically.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "report_test_support.hpp"
#include "reports/report_reader.hpp"
#include "reports/writers.hpp"
#include "test_support.hpp"

namespace npusim {
namespace {

namespace fs = std::filesystem;

bool same(double a, double b) {
  return a == b || (std::isnan(a) && std::isnan(b));
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

TEST(SweepCsv, QuotesFieldsAndPrintsNumbersThatRoundTrip) {
  const reports::SweepReport s = test::synthetic_sweep(4, 2);
  const std::string csv = reports::to_csv(s);
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "id,hardware,workload.tokens,cycles,time_us,critical_path_us,kernels,flops,tflops,cube,"
            "vector,mte1,mte2,"
            "mte3,fixpipe,hbm_bw,hbm_read_bytes,hbm_write_bytes,l2_hit_rate,validation_passed");
  EXPECT_NE(csv.find("\"ascend910b2, \"\"fast\"\"\""), std::string::npos)
      << "RFC 4180: quoted, quotes doubled";
  const std::string file = test::temp_folder("csv") + "/sweep.csv";
  reports::write_file_atomic(file, csv);
  const auto rows = test::read_csv(file);
  ASSERT_EQ(rows.size(), 4u);
  for (size_t p = 0; p < rows.size(); ++p) {
    EXPECT_EQ(rows[p].at("id"), s.points[p].id);
    EXPECT_EQ(rows[p].at("hardware"), s.points[p].keys[0]);
    EXPECT_EQ(rows[p].at("workload.tokens"), s.points[p].keys[1]);
    for (const auto& [name, value] : reports::point_metrics(s.points[p].report)) {
      const std::string& cell = rows[p].at(name);
      if (std::isnan(value)) {
        EXPECT_EQ(cell, "") << name << ": NaN is an empty cell";
      } else {
        EXPECT_EQ(std::strtod(cell.c_str(), nullptr), value) << name << " = " << cell;
      }
    }
  }
  EXPECT_EQ(rows[3].at("validation_passed"), "0") << "point 3's validated kernel fails";
  EXPECT_EQ(test::read_csv(file).size(), 4u);
  const std::string unvalidated = reports::to_csv(test::synthetic_sweep(1, 1));
  EXPECT_EQ(unvalidated.back(), '\n');
  EXPECT_EQ(unvalidated[unvalidated.size() - 2], ',') << "validation_passed is last and empty";
}

void expect_same_points(const reports::FlatReport& f, const reports::SweepReport& s) {
  EXPECT_EQ(f.schema_version, reports::kSchemaVersion);
  EXPECT_EQ(f.key_columns, s.key_columns);
  EXPECT_EQ(f.metric_names, reports::point_metric_names());
  ASSERT_EQ(f.points.size(), s.points.size());
  for (size_t p = 0; p < s.points.size(); ++p) {
    EXPECT_EQ(f.points[p].id, s.points[p].id);
    EXPECT_EQ(f.points[p].keys, s.points[p].keys);
    const auto m = reports::point_metrics(s.points[p].report);
    ASSERT_EQ(f.points[p].metrics.size(), m.size());
    for (size_t i = 0; i < m.size(); ++i)
      EXPECT_TRUE(same(f.points[p].metrics[i], m[i].second)) << p << " " << m[i].first;
  }
}

TEST(SweepHdf5, ReadsBackTheSamePointsAsTheJson) {
  const reports::SweepReport s = test::synthetic_sweep(7, 3);
  const std::string dir = test::temp_folder("h5");
  reports::write_hdf5(s, dir + "/sweep.h5");
  reports::write_file_atomic(dir + "/sweep.json", reports::to_json(s).dump(2));
  const reports::FlatReport h5 = reports::read_report(dir + "/sweep.h5");
  EXPECT_EQ(h5.format, "hdf5");
  expect_same_points(h5, s);
  const reports::FlatReport json = reports::read_report(dir + "/sweep.json");
  EXPECT_EQ(json.format, "sweep-json");
  expect_same_points(json, s);
  EXPECT_EQ(files_in(dir).size(), 2u) << "no temporary left behind";
}

TEST(SweepHdf5, WritesAnEmptySweep) {
  reports::SweepReport s = test::synthetic_sweep(0, 0);
  const std::string file = test::temp_folder("h5_empty") + "/empty.h5";
  reports::write_hdf5(s, file);
  const reports::FlatReport f = reports::read_report(file);
  EXPECT_EQ(f.key_columns, s.key_columns);
  EXPECT_TRUE(f.points.empty());
}

TEST(SweepHdf5, ReplacesAnExistingFileWhole) {
  const std::string file = test::temp_folder("h5_replace") + "/sweep.h5";
  reports::write_hdf5(test::synthetic_sweep(9, 2), file);
  reports::write_hdf5(test::synthetic_sweep(2, 2), file);
  EXPECT_EQ(reports::read_report(file).points.size(), 2u);
}

TEST(SweepHdf5, AMissingFolderThrowsNamingThePathAndLeavesNoFile) {
  const std::string dir = test::temp_folder("h5_missing");
  const std::string file = dir + "/no/such/folder/sweep.h5";
  try {
    reports::write_hdf5(test::synthetic_sweep(2, 1), file);
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot write '" + file + "'"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(files_in(dir).empty());
}

TEST(SweepHdf5, AReadOnlyFolderThrowsAndLeavesNoFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes into read-only folders";
  const std::string dir = test::temp_folder("h5_readonly");
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
  EXPECT_THROW(reports::write_hdf5(test::synthetic_sweep(2, 1), dir + "/sweep.h5"),
               std::runtime_error);
  fs::permissions(dir, fs::perms::owner_all);
  EXPECT_TRUE(files_in(dir).empty());
}

// The rename is the last step: when it fails (the target is a folder) the complete temporary file
// must go too.
TEST(SweepHdf5, AFailedRenameRemovesTheTemporary) {
  const std::string dir = test::temp_folder("h5_rename");
  fs::create_directories(dir + "/sweep.h5/inside");
  try {
    reports::write_hdf5(test::synthetic_sweep(3, 2), dir + "/sweep.h5");
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("sweep.h5"), std::string::npos) << e.what();
  }
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"sweep.h5"});
}

TEST(SweepHdf5, RejectsColumnNamesThatCollide) {
  reports::SweepReport s = test::synthetic_sweep(2, 1);
  s.key_columns[0] = "cycles";  // a key column named like a metric
  const std::string dir = test::temp_folder("h5_collide");
  try {
    reports::write_hdf5(s, dir + "/sweep.h5");
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("two columns named 'cycles'"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(files_in(dir).empty());
}

}  // namespace
}  // namespace npusim
