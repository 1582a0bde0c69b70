#include "util/units.h"

#include <gtest/gtest.h>

#include <chrono>
#include <limits>
#include <string>

namespace goldcache {
namespace {

using std::chrono::milliseconds;

uint64_t SizeOk(std::string_view text) {
  Result<uint64_t> r = ParseSize(text);
  EXPECT_TRUE(r.ok()) << text << ": " << r.status().ToString();
  return r.ok() ? *r : 0;
}

void ExpectSizeRejected(std::string_view text) {
  Result<uint64_t> r = ParseSize(text);
  ASSERT_FALSE(r.ok()) << text << " parsed as " << *r;
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("\"" + std::string(text) + "\""), std::string::npos)
      << "message does not quote the input: " << r.status().message();
}

TEST(ParseSizeTest, AcceptsPlainBytes) {
  EXPECT_EQ(SizeOk("0"), 0u);
  EXPECT_EQ(SizeOk("4096"), 4096u);
  EXPECT_EQ(SizeOk("4096B"), 4096u);
  EXPECT_EQ(SizeOk("18446744073709551615"), std::numeric_limits<uint64_t>::max());
}

TEST(ParseSizeTest, BinaryUnitsArePowersOf1024) {
  EXPECT_EQ(SizeOk("64KiB"), 64u * 1024);
  EXPECT_EQ(SizeOk("1MiB"), 1024u * 1024);
  EXPECT_EQ(SizeOk("200GiB"), 200ull << 30);
  EXPECT_EQ(SizeOk("1TiB"), 1ull << 40);
  EXPECT_EQ(SizeOk("1PiB"), 1ull << 50);
  EXPECT_EQ(SizeOk("15EiB"), 15ull << 60);
}

TEST(ParseSizeTest, BareLettersArePowersOf1024) {
  EXPECT_EQ(SizeOk("64K"), 64u * 1024);
  EXPECT_EQ(SizeOk("256M"), 256ull << 20);
  EXPECT_EQ(SizeOk("2G"), 2ull << 30);
  EXPECT_EQ(SizeOk("1T"), 1ull << 40);
}

TEST(ParseSizeTest, VendorUnitsArePowersOf1000) {
  EXPECT_EQ(SizeOk("1KB"), 1000u);
  EXPECT_EQ(SizeOk("5MB"), 5000000u);
  EXPECT_EQ(SizeOk("2GB"), 2000000000u);
  EXPECT_EQ(SizeOk("1TB"), 1000000000000u);
}

TEST(ParseSizeTest, AcceptsCaseBlanksAndWholeFractions) {
  EXPECT_EQ(SizeOk("64kib"), 64u * 1024);
  EXPECT_EQ(SizeOk("64k"), 64u * 1024);
  EXPECT_EQ(SizeOk(" 64 KiB "), 64u * 1024);
  EXPECT_EQ(SizeOk("1.5GiB"), 3ull << 29);
  EXPECT_EQ(SizeOk("0.5K"), 512u);
  EXPECT_EQ(SizeOk("1.5KB"), 1500u);
  EXPECT_EQ(SizeOk(".5M"), 512u * 1024);
}

TEST(ParseSizeTest, RejectsGarbageNegativeFractionalBytesAndOverflow) {
  for (const char* bad :
       {"", "   ", "abc", "KiB", "64 XB", "64KiBs", "1.2.3", "4096 4096", "-1", "-64KiB", "1.5",
        "0.1K", "18446744073709551616", "16EiB", "17179869184GiB", "99999999999999999999999999",
        "1.0000000000000000001K", "0x10", "1e3"}) {
    SCOPED_TRACE(bad);
    ExpectSizeRejected(bad);
  }
}

TEST(ParseSizeTest, MessageNamesTheAcceptedUnits) {
  Result<uint64_t> r = ParseSize("10 XB");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("KiB"), std::string::npos) << r.status().message();
}

milliseconds DurationOk(std::string_view text) {
  Result<milliseconds> r = ParseDuration(text);
  EXPECT_TRUE(r.ok()) << text << ": " << r.status().ToString();
  return r.ok() ? *r : milliseconds(-1);
}

TEST(ParseDurationTest, AcceptsEachUnit) {
  EXPECT_EQ(DurationOk("250ms"), milliseconds(250));
  EXPECT_EQ(DurationOk("30s"), milliseconds(30'000));
  EXPECT_EQ(DurationOk("5m"), milliseconds(300'000));
  EXPECT_EQ(DurationOk("1h"), milliseconds(3'600'000));
  EXPECT_EQ(DurationOk("2d"), milliseconds(172'800'000));
  EXPECT_EQ(DurationOk("0"), milliseconds(0));
}

TEST(ParseDurationTest, BareNumberIsSeconds) {
  EXPECT_EQ(DurationOk("30"), milliseconds(30'000));
  EXPECT_EQ(DurationOk("1.5"), milliseconds(1'500));
}

TEST(ParseDurationTest, CombinesPartsLargestFirst) {
  EXPECT_EQ(DurationOk("1h30m"), milliseconds(5'400'000));
  EXPECT_EQ(DurationOk("2m 30s"), milliseconds(150'000));
  EXPECT_EQ(DurationOk("1s500ms"), milliseconds(1'500));
  EXPECT_EQ(DurationOk(" 30 s "), milliseconds(30'000));
  EXPECT_EQ(DurationOk("1.5s"), milliseconds(1'500));
  EXPECT_EQ(DurationOk("30S"), milliseconds(30'000));
}

TEST(ParseDurationTest, RejectsGarbageNegativeAndOverflow) {
  for (const char* bad : {"", "abc", "s", "-1s", "-5", "10x", "1.5ms", "30m1h", "1s1s", "1h30",
                          "30 5", "999999999999999999d", "9223372036854775808ms"}) {
    SCOPED_TRACE(bad);
    Result<milliseconds> r = ParseDuration(bad);
    ASSERT_FALSE(r.ok()) << "parsed as " << r->count() << "ms";
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("\"" + std::string(bad) + "\""), std::string::npos)
        << r.status().message();
  }
}

TEST(FormatBytesTest, PicksTheLargestWholeUnit) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1 KiB");
  EXPECT_EQ(FormatBytes(64 * 1024), "64 KiB");
  EXPECT_EQ(FormatBytes(3ull << 29), "1.5 GiB");
  EXPECT_EQ(FormatBytes(200ull << 30), "200 GiB");
  EXPECT_EQ(FormatBytes(1ull << 40), "1 TiB");
  EXPECT_EQ(FormatBytes(std::numeric_limits<uint64_t>::max()), "16 EiB");
}

TEST(FormatBytesTest, RoundsToTenthsAndCarriesIntoTheNextUnit) {
  EXPECT_EQ(FormatBytes(1024 + 100), "1.1 KiB");
  EXPECT_EQ(FormatBytes((1ull << 20) - 1), "1 MiB");
  EXPECT_EQ(FormatBytes(1023 * 1024 + 900), "1023.9 KiB");
}

}  // namespace
}  // namespace goldcache
