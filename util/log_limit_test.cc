#include "util/log_limit.h"

#include <gtest/gtest.h>

namespace goldcache {
namespace {

using std::chrono::seconds;

TEST(LogLimitTest, LetsTheFirstThroughThenOnePerIntervalTellingHowManyWereHeld) {
  LogLimit limit(seconds(10));
  const auto t0 = LogLimit::Clock::time_point{} + seconds(1000);
  EXPECT_EQ(limit.Allow(t0), 0u);
  EXPECT_EQ(limit.Allow(t0 + seconds(1)), std::nullopt);
  EXPECT_EQ(limit.Allow(t0 + seconds(9)), std::nullopt);
  EXPECT_EQ(limit.Allow(t0 + seconds(10)), 2u);
  EXPECT_EQ(limit.Allow(t0 + seconds(11)), std::nullopt);
  // A quiet spell: the next one is let through at once.
  EXPECT_EQ(limit.Allow(t0 + seconds(100)), 1u);
  EXPECT_EQ(limit.Allow(t0 + seconds(200)), 0u);
}

}  // namespace
}  // namespace goldcache
