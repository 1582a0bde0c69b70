#include "agent/top.h"

#include <gtest/gtest.h>

namespace goldcache::cli {
namespace {

using nlohmann::json;

// A `stats` answer as the agent gives it, reduced to what top reads.
json Sample(double uptime, int pid = 42) {
  return {{"version", "0.1.0"},
          {"pid", pid},
          {"uptime_seconds", uptime},
          {"read_bytes", 0},
          {"overlay_ram_bytes", 0},
          {"overlay_disk_bytes", 0},
          {"cache", {{"used_bytes", 0}, {"capacity_bytes", 1 << 30}, {"hits", 0}, {"misses", 0}}},
          {"datastores", json::array({{{"name", "ds1"}, {"up", true}}})},
          {"templates", json::array()},
          {"desktops", json::array()},
          {"metrics", json::object()}};
}

json Desktop(const std::string& path, uint64_t read_ops, uint64_t write_ops, uint64_t read_bytes,
             uint64_t write_bytes, uint64_t ds_bytes = 0, double read_s = 0, double write_s = 0) {
  return {{"datastore", "ds1"},
          {"path", path},
          {"read_ops", read_ops},
          {"write_ops", write_ops},
          {"read_bytes", read_bytes},
          {"write_bytes", write_bytes},
          {"datastore_read_bytes", ds_bytes},
          {"read_latency_seconds", read_s},
          {"write_latency_seconds", write_s},
          {"overlay_ram_bytes", 4096},
          {"overlay_disk_bytes", 0},
          {"open_handles", 1}};
}

void SetCounter(json& sample, const std::string& name, double value,
                const std::string& datastore = "ds1") {
  sample["metrics"][name] = {
      {"type", "counter"},
      {"metrics", json::array({{{"labels", {{"datastore", datastore}}}, {"value", value}}})}};
}

TEST(TopRates, RatesAreCounterDifferencesOverTheAgentsClock) {
  json a = Sample(100), b = Sample(102);
  a["desktops"].push_back(Desktop("pool/a", 10, 100, 4096, 409600, 0, 0.010, 0.001));
  b["desktops"].push_back(
      Desktop("pool/a", 30, 300, 4096 + 8192, 409600 + 819200, 2048, 0.030, 0.003));
  a["templates"].push_back({{"datastore", "ds1"},
                            {"path", "templates/t"},
                            {"read_ops", 0},
                            {"read_bytes", 0},
                            {"datastore_read_bytes", 0},
                            {"read_latency_seconds", 0.0}});
  b["templates"].push_back({{"datastore", "ds1"},
                            {"path", "templates/t"},
                            {"read_ops", 4},
                            {"read_bytes", 4 << 20},
                            {"datastore_read_bytes", 1 << 20},
                            {"read_latency_seconds", 0.004},
                            {"open_handles", 3},
                            {"cached_bytes", 1 << 20}});
  SetCounter(a, "goldcache_datastore_read_ops_total", 5);
  SetCounter(b, "goldcache_datastore_read_ops_total", 9);
  SetCounter(a, "goldcache_datastore_read_bytes_total", 0);
  SetCounter(b, "goldcache_datastore_read_bytes_total", 1 << 20);
  a["read_bytes"] = 0;
  b["read_bytes"] = 4 << 20;
  b["cache"]["hits"] = 3;
  b["cache"]["misses"] = 1;

  auto r = TopRates(a, b);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_DOUBLE_EQ((*r)["interval_seconds"].get<double>(), 2.0);
  const json& d = (*r)["desktops"][0];
  EXPECT_DOUBLE_EQ(d["read_ops_per_second"].get<double>(), 10.0);
  EXPECT_DOUBLE_EQ(d["write_ops_per_second"].get<double>(), 100.0);
  EXPECT_DOUBLE_EQ(d["read_bytes_per_second"].get<double>(), 4096.0);
  EXPECT_DOUBLE_EQ(d["write_bytes_per_second"].get<double>(), 409600.0);
  EXPECT_DOUBLE_EQ(d["hit_ratio"].get<double>(), 0.75);
  EXPECT_NEAR(d["read_latency_seconds"].get<double>(), 0.001, 1e-12);  // 20 ms over 20 reads
  EXPECT_NEAR(d["write_latency_seconds"].get<double>(), 0.00001, 1e-12);
  const json& t = (*r)["templates"][0];
  EXPECT_DOUBLE_EQ(t["read_ops_per_second"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(t["hit_ratio"].get<double>(), 0.75);
  EXPECT_NEAR(t["read_latency_seconds"].get<double>(), 0.001, 1e-12);
  EXPECT_EQ(t["open_handles"], 3);
  const json& ds = (*r)["datastores"][0];
  EXPECT_DOUBLE_EQ(ds["read_ops_per_second"].get<double>(), 2.0);
  EXPECT_TRUE(ds["read_latency_seconds"].is_null());  // no histogram: nothing measured
  EXPECT_DOUBLE_EQ((*r)["offload_ratio"].get<double>(), 0.75);
  EXPECT_DOUBLE_EQ((*r)["cache"]["hit_ratio"].get<double>(), 0.75);
}

TEST(TopRates, NothingHappenedMeansNoRatioRatherThanAReassuringOne) {
  json a = Sample(10), b = Sample(11);
  a["desktops"].push_back(Desktop("pool/idle", 5, 5, 100, 100));
  b["desktops"].push_back(Desktop("pool/idle", 5, 5, 100, 100));
  auto r = TopRates(a, b);
  ASSERT_TRUE(r.ok());
  const json& d = (*r)["desktops"][0];
  EXPECT_EQ(d["read_ops_per_second"].get<double>(), 0.0);
  EXPECT_TRUE(d["hit_ratio"].is_null());
  EXPECT_TRUE(d["read_latency_seconds"].is_null());
  EXPECT_TRUE((*r)["offload_ratio"].is_null());
  EXPECT_TRUE((*r)["cache"]["hit_ratio"].is_null());
}

TEST(TopRates, AResetOrNewDesktopCountsFromZero) {
  json a = Sample(0), b = Sample(4);
  a["desktops"].push_back(Desktop("pool/reset", 1000, 1000, 1 << 20, 1 << 20));
  b["desktops"].push_back(Desktop("pool/reset", 8, 4, 4096, 4096));  // reset in between
  b["desktops"].push_back(Desktop("pool/new", 40, 0, 8192, 0));
  auto r = TopRates(a, b);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ((*r)["desktops"].size(), 2u);
  EXPECT_EQ((*r)["desktops"][0]["path"], "pool/new");  // 10 ops/s beats 3
  EXPECT_DOUBLE_EQ((*r)["desktops"][0]["read_ops_per_second"].get<double>(), 10.0);
  EXPECT_DOUBLE_EQ((*r)["desktops"][1]["read_ops_per_second"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ((*r)["desktops"][1]["write_ops_per_second"].get<double>(), 1.0);
}

TEST(TopRates, SamplesOfTwoAgentsOrOutOfOrderAreRefused) {
  EXPECT_FALSE(TopRates(Sample(1, 1), Sample(2, 2)).ok());
  EXPECT_FALSE(TopRates(Sample(2), Sample(2)).ok());
  EXPECT_FALSE(TopRates(Sample(3), Sample(2)).ok());
  EXPECT_FALSE(TopRates(json::array(), Sample(2)).ok());
}

TEST(TopFrame, BusiestFirstWithinEightyColumnsAndLongNamesShortenedFromTheLeft) {
  json a = Sample(0), b = Sample(1);
  const std::string long_name = "pool/a/very/deep/directory/of/desktops/vm017.qcow2";
  a["desktops"].push_back(Desktop(long_name, 0, 0, 0, 0));
  b["desktops"].push_back(Desktop(long_name, 5, 0, 5 << 20, 0));
  a["desktops"].push_back(Desktop("pool/busy", 0, 0, 0, 0));
  b["desktops"].push_back(Desktop("pool/busy", 900, 100, 1 << 30, 1 << 20));
  b["desktops"].push_back(Desktop("pool/idle", 0, 0, 0, 0));
  auto r = TopRates(a, b);
  ASSERT_TRUE(r.ok());
  auto lines = TopFrame(*r, 80, 0);
  std::vector<std::string> rows;
  bool in_desktops = false;
  for (const std::string& line : lines) {
    EXPECT_LE(line.size(), 80u) << line;
    if (line.rfind("DESKTOP", 0) == 0) {
      in_desktops = true;
    } else if (in_desktops && !line.empty()) {
      rows.push_back(line);
    }
  }
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].rfind("pool/busy ", 0), 0u) << rows[0];
  EXPECT_EQ(rows[1].rfind("...", 0), 0u) << rows[1];  // shortened, keeps the tail
  EXPECT_NE(rows[1].find("vm017.qcow2"), std::string::npos) << rows[1];
  EXPECT_EQ(rows[2].rfind("pool/idle ", 0), 0u) << rows[2];
  EXPECT_NE(rows[0].find("1.0G"), std::string::npos) << rows[0];  // 1 GiB/s read
}

TEST(TopFrame, AShortTerminalShowsTheBusiestAndSaysHowManyAreHidden) {
  json a = Sample(0), b = Sample(1);
  for (int i = 0; i < 40; ++i) {
    b["desktops"].push_back(Desktop("pool/vm" + std::to_string(100 + i), i, 0, 0, 0));
  }
  auto r = TopRates(a, b);
  ASSERT_TRUE(r.ok());
  auto lines = TopFrame(*r, 80, 24);
  EXPECT_EQ(lines.size(), 24u);
  EXPECT_NE(lines.back().find("more"), std::string::npos) << lines.back();
  bool busiest_shown = false;
  for (const auto& line : lines) busiest_shown |= line.rfind("pool/vm139 ", 0) == 0;
  EXPECT_TRUE(busiest_shown);
}

TEST(Compact, FormsFitTheirColumns) {
  EXPECT_EQ(CompactBytes(0), "0");
  EXPECT_EQ(CompactBytes(512), "512B");
  EXPECT_EQ(CompactBytes(1536), "1.5K");
  EXPECT_EQ(CompactBytes(999.6), "1.0K");
  EXPECT_EQ(CompactBytes(46.0 * (1 << 20)), "46M");
  EXPECT_EQ(CompactSeconds(0.00012), "120us");
  EXPECT_EQ(CompactSeconds(0.0012), "1.2ms");
  EXPECT_EQ(CompactSeconds(0.25), "250ms");
  EXPECT_EQ(CompactSeconds(12), "12s");
  EXPECT_EQ(CompactCount(0.5), "0.5");
  EXPECT_EQ(CompactCount(12345), "12345");
  EXPECT_EQ(CompactCount(123456), "123k");
  for (double v = 0.001; v < 1e13; v *= 1.7) {
    EXPECT_LE(CompactBytes(v).size(), 5u) << v;
    EXPECT_LE(CompactCount(v).size(), 5u) << v;
    if (v < 1000) {
      EXPECT_LE(CompactSeconds(v).size(), 5u) << v;
    }
  }
}

}  // namespace
}  // namespace goldcache::cli
