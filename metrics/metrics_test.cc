#include "metrics/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>
#include <vector>

namespace goldcache::metrics {
namespace {

TEST(RegistryTest, SameNameAndLabelsGiveTheSameMetric) {
  Registry r;
  Counter& a = r.GetCounter("x_total", "help", {{"k", "v"}});
  Counter& b = r.GetCounter("x_total", "other help", {{"k", "v"}});
  Counter& c = r.GetCounter("x_total", "help", {{"k", "w"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
}

TEST(RegistryTest, LabelOrderDoesNotMatter) {
  Registry r;
  Gauge& a = r.GetGauge("g", "help", {{"a", "1"}, {"b", "2"}});
  Gauge& b = r.GetGauge("g", "help", {{"b", "2"}, {"a", "1"}});
  EXPECT_EQ(&a, &b);
}

TEST(RegistryTest, ReferencesStayValidWhileRegistryGrows) {
  Registry r;
  Counter& first = r.GetCounter("first_total", "h");
  first.Add(7);
  for (int i = 0; i < 1000; ++i) {
    r.GetCounter("c" + std::to_string(i) + "_total", "h", {{"i", std::to_string(i)}}).Add(1);
  }
  first.Add(1);
  EXPECT_EQ(r.GetCounter("first_total", "h").Value(), 8u);
}

TEST(RegistryTest, RendersPrometheusTextExactly) {
  Registry r;
  r.GetCounter("goldcache_datastore_read_bytes_total", "Bytes read from the datastore.").Add(4096);
  Counter& hits =
      r.GetCounter("goldcache_read_bytes_total", "Bytes served, by source.", {{"source", "cache"}});
  hits.Add(3);
  r.GetCounter("goldcache_read_bytes_total", "ignored", {{"source", "datastore"}}).Add(1);
  r.GetGauge("goldcache_cache_used_bytes", "Bytes held by the read cache.").Set(-5);
  Histogram& h =
      r.GetHistogram("goldcache_latency_seconds", "Latency.", {{"op", "read"}}, {0.25, 0.5, 2});
  h.Observe(0.125);
  h.Observe(0.25);  // on a bound: counts in that bucket (le means <=)
  h.Observe(1.0);
  h.Observe(100.0);
  r.AddCallbackGauge("goldcache_free_ratio", "Free space\\ratio.\nSecond line.",
                     {{"path", "C:\\dir \"q\"\n"}}, [] { return 0.25; });

  EXPECT_EQ(r.RenderPrometheus(),
            "# HELP goldcache_cache_used_bytes Bytes held by the read cache.\n"
            "# TYPE goldcache_cache_used_bytes gauge\n"
            "goldcache_cache_used_bytes -5\n"
            "# HELP goldcache_datastore_read_bytes_total Bytes read from the datastore.\n"
            "# TYPE goldcache_datastore_read_bytes_total counter\n"
            "goldcache_datastore_read_bytes_total 4096\n"
            "# HELP goldcache_free_ratio Free space\\\\ratio.\\nSecond line.\n"
            "# TYPE goldcache_free_ratio gauge\n"
            "goldcache_free_ratio{path=\"C:\\\\dir \\\"q\\\"\\n\"} 0.25\n"
            "# HELP goldcache_latency_seconds Latency.\n"
            "# TYPE goldcache_latency_seconds histogram\n"
            "goldcache_latency_seconds_bucket{op=\"read\",le=\"0.25\"} 2\n"
            "goldcache_latency_seconds_bucket{op=\"read\",le=\"0.5\"} 2\n"
            "goldcache_latency_seconds_bucket{op=\"read\",le=\"2\"} 3\n"
            "goldcache_latency_seconds_bucket{op=\"read\",le=\"+Inf\"} 4\n"
            "goldcache_latency_seconds_sum{op=\"read\"} 101.375\n"
            "goldcache_latency_seconds_count{op=\"read\"} 4\n"
            "# HELP goldcache_read_bytes_total Bytes served, by source.\n"
            "# TYPE goldcache_read_bytes_total counter\n"
            "goldcache_read_bytes_total{source=\"cache\"} 3\n"
            "goldcache_read_bytes_total{source=\"datastore\"} 1\n");
}

TEST(RegistryTest, HistogramWithoutLabelsRendersOnlyLe) {
  Registry r;
  r.GetHistogram("h_seconds", "h", {}, {1}).Observe(3);
  EXPECT_EQ(r.RenderPrometheus(),
            "# HELP h_seconds h\n"
            "# TYPE h_seconds histogram\n"
            "h_seconds_bucket{le=\"1\"} 0\n"
            "h_seconds_bucket{le=\"+Inf\"} 1\n"
            "h_seconds_sum 3\n"
            "h_seconds_count 1\n");
}

TEST(RegistryTest, CallbackGaugeSpecialValuesUseExpositionSpelling) {
  Registry r;
  r.AddCallbackGauge("a", "h", {}, [] { return std::numeric_limits<double>::infinity(); });
  r.AddCallbackGauge("b", "h", {}, [] { return std::nan(""); });
  r.AddCallbackGauge("c", "h", {}, [] { return 1e21; });
  EXPECT_EQ(r.RenderPrometheus(),
            "# HELP a h\n# TYPE a gauge\na +Inf\n"
            "# HELP b h\n# TYPE b gauge\nb NaN\n"
            "# HELP c h\n# TYPE c gauge\nc 1e+21\n");
}

TEST(RegistryTest, CallbackGaugeIsReplacedByRegisteringAgain) {
  Registry r;
  r.AddCallbackGauge("g", "h", {}, [] { return 1.0; });
  r.AddCallbackGauge("g", "h", {}, [] { return 2.0; });
  EXPECT_EQ(r.RenderPrometheus(), "# HELP g h\n# TYPE g gauge\ng 2\n");
}

TEST(RegistryTest, RendersJson) {
  Registry r;
  r.GetCounter("c_total", "a counter", {{"k", "v"}}).Add(2);
  r.GetGauge("g", "a gauge").Set(-1);
  Histogram& h = r.GetHistogram("h", "a histogram", {}, {1});
  h.Observe(0.5);
  h.Observe(5);
  nlohmann::json expected = nlohmann::json::parse(R"({
    "c_total": {"type": "counter", "help": "a counter",
                "metrics": [{"labels": {"k": "v"}, "value": 2}]},
    "g": {"type": "gauge", "help": "a gauge", "metrics": [{"labels": {}, "value": -1}]},
    "h": {"type": "histogram", "help": "a histogram",
          "metrics": [{"labels": {}, "count": 2, "sum": 5.5,
                       "buckets": [{"le": 1.0, "count": 1}, {"le": "+Inf", "count": 2}]}]}
  })");
  EXPECT_EQ(r.RenderJson(), expected) << r.RenderJson().dump(2);
}

TEST(HistogramTest, CountsPerBucketAndNaNGoesToInf) {
  Histogram h({1, 2});
  h.Observe(-3);
  h.Observe(1.5);
  h.Observe(std::nan(""));
  EXPECT_EQ(h.BucketCount(0), 1u);
  EXPECT_EQ(h.BucketCount(1), 1u);
  EXPECT_EQ(h.BucketCount(2), 1u);
  EXPECT_EQ(h.Count(), 3u);
}

TEST(LatencyBucketsTest, SpanFiftyMicrosecondsToTenSecondsIncreasing) {
  std::vector<double> b = LatencyBuckets();
  ASSERT_FALSE(b.empty());
  EXPECT_DOUBLE_EQ(b.front(), 50e-6);
  EXPECT_DOUBLE_EQ(b.back(), 10.0);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]);
}

TEST(RegistryTest, EightThreadsCountEveryUpdate) {
  Registry r;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 100000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&r] {
      // Each thread looks the metrics up itself, racing registration too.
      Counter& c = r.GetCounter("ops_total", "h");
      Gauge& g = r.GetGauge("inflight", "h");
      Histogram& h = r.GetHistogram("lat_seconds", "h", {}, LatencyBuckets());
      for (int i = 0; i < kPerThread; ++i) {
        c.Add(1);
        g.Add(2);
        g.Add(-1);
        h.Observe(0.001);
      }
    });
  }
  std::thread scraper([&r] {
    for (int i = 0; i < 50; ++i) (void)r.RenderPrometheus();
  });
  for (auto& t : threads) t.join();
  scraper.join();
  EXPECT_EQ(r.GetCounter("ops_total", "h").Value(), uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(r.GetGauge("inflight", "h").Value(), int64_t{kThreads} * kPerThread);
  Histogram& h = r.GetHistogram("lat_seconds", "h", {}, LatencyBuckets());
  EXPECT_EQ(h.Count(), uint64_t{kThreads} * kPerThread);
  EXPECT_NEAR(h.Sum(), 0.001 * kThreads * kPerThread, 1e-6);
}

using RegistryDeathTest = ::testing::Test;

TEST(RegistryDeathTest, NameWithTwoTypesAborts) {
  Registry r;
  r.GetCounter("x", "h");
  EXPECT_DEATH(r.GetGauge("x", "h"),
               "metric \"x\" registered as gauge but it already is a counter");
}

TEST(RegistryDeathTest, InvalidNamesAbort) {
  Registry r;
  EXPECT_DEATH(r.GetCounter("9lives", "h"), "invalid metric name");
  EXPECT_DEATH(r.GetCounter("ok", "h", {{"bad-label", "v"}}), "invalid label name");
  EXPECT_DEATH(r.GetHistogram("ok_h", "h", {{"le", "1"}}, {1}), "invalid label name");
  EXPECT_DEATH(r.GetCounter("ok", "h", {{"a", "1"}, {"a", "2"}}), "repeats label");
}

TEST(RegistryDeathTest, UnsortedBoundsAbort) {
  Registry r;
  EXPECT_DEATH(r.GetHistogram("h", "h", {}, {2, 1}), "strictly increasing");
}

}  // namespace
}  // namespace goldcache::metrics
