#include "agent/control_protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <string_view>

namespace goldcache::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using json = nlohmann::json;

TEST(JsonNestingDepthTest, CountsObjectsAndArraysOutsideStrings) {
  EXPECT_EQ(JsonNestingDepth("7", 16), 0);
  EXPECT_EQ(JsonNestingDepth("{}", 16), 1);
  EXPECT_EQ(JsonNestingDepth("{\"a\":[1,{\"b\":[]}],\"c\":{}}", 16), 4);
  EXPECT_EQ(JsonNestingDepth("[[]][[[]]]", 16), 3);
  // Brackets in strings, escaped quotes and backslashes do not count.
  EXPECT_EQ(JsonNestingDepth(R"({"a":"[[[{{{"})", 16), 1);
  EXPECT_EQ(JsonNestingDepth(R"({"a":"\"[[[","b":"\\"})", 16), 1);
  EXPECT_EQ(JsonNestingDepth(R"({"a":"\\\"[["})", 16), 1);
}

TEST(JsonNestingDepthTest, StopsCountingPastTheLimit) {
  std::string deep(100000, '[');
  EXPECT_EQ(JsonNestingDepth(deep, 16), 17);
  EXPECT_EQ(JsonNestingDepth(std::string(16, '[') + std::string(16, ']'), 16), 16);
}

TEST(DecodeControlRequestTest, DecodesAnObjectWithACommand) {
  auto request = DecodeControlRequest(R"({"command":"warm","path":"/run/goldcache/ds1/t.img"})");
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  EXPECT_EQ(request->command, "warm");
  EXPECT_EQ(request->body["path"], "/run/goldcache/ds1/t.img");
}

TEST(DecodeControlRequestTest, RefusesWhatIsNotARequest) {
  for (const char* bad : {"", "{", "[]", "\"warm\"", "{\"path\":\"x\"}", "{\"command\":null}",
                          "{\"command\":\"a\"} trailing", "\xff"}) {
    auto request = DecodeControlRequest(bad);
    ASSERT_FALSE(request.ok()) << bad;
    EXPECT_EQ(request.status().code(), Code::kInvalidArgument);
    EXPECT_THAT(request.status().message(), StartsWith("malformed request: ")) << bad;
  }
}

TEST(DecodeControlRequestTest, RefusesANulByte) {
  // nlohmann would stop at the NUL and accept the object before it.
  using namespace std::string_view_literals;
  auto request = DecodeControlRequest("{\"command\":\"status\"}\0[[[["sv);
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().message(), "malformed request: NUL byte in the request");
}

TEST(DecodeControlRequestTest, RefusesDeepNestingBeforeParsing) {
  std::string deep =
      "{\"command\":\"x\",\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  auto request = DecodeControlRequest(deep);
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(request.status().message(), HasSubstr("nested deeper than 16 levels"));
  // Unbalanced, as a truncated attack would be: refused the same way.
  EXPECT_FALSE(DecodeControlRequest(std::string(100000, '{')).ok());
}

TEST(DecodeControlRequestTest, RefusesOversizedLines) {
  std::string huge = "{\"command\":\"x\",\"a\":\"" + std::string(kMaxRequestBytes, 'a') + "\"}";
  auto request = DecodeControlRequest(huge);
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(request.status().message(), StartsWith("request larger than 1 MiB"));
}

TEST(SummarizeRequestTest, ShowsCommandAndScalarsButNotNestedValues) {
  json body = {{"command", "warm"},
               {"path", "/run/goldcache/ds1/templates/win11.img"},
               {"rate", 100},
               {"pin", true},
               {"opts", {{"a", 1}, {"b", 2}}},
               {"list", {1, 2, 3}}};
  EXPECT_EQ(SummarizeRequest(body),
            "\"warm\" list=[3 items] opts={2 keys} path=\"/run/goldcache/ds1/templates/win11.img\" "
            "pin=true rate=100");
}

TEST(SummarizeRequestTest, EscapesAndCutsWhatAClientSent) {
  json body = {{"command", "re\nset"}, {"odd key", std::string(1000, 'x')}};
  std::string summary = SummarizeRequest(body);
  EXPECT_EQ(summary.find('\n'), std::string::npos);
  EXPECT_THAT(summary, StartsWith("\"re\\x0aset\" \"odd key\"=\"xxx"));
  EXPECT_LT(summary.size(), 200u);
}

TEST(SummarizeRequestTest, StaysBoundedWithManyKeys) {
  json body = {{"command", "warm"}};
  for (int i = 0; i < 10000; ++i) body["k" + std::to_string(i)] = i;
  EXPECT_LE(SummarizeRequest(body, 512).size(), 512u + 3);
}

TEST(SummarizeRequestTest, NeverRecursesIntoADeepDocument) {
  // Built in a loop: nlohmann's parser and destructor do not recurse, and
  // neither may the summary.
  json deep = json::array();
  json* inner = &deep;
  for (int i = 0; i < 100000; ++i) {
    inner->push_back(json::array());
    inner = &(*inner)[0];
  }
  json body = {{"command", "x"}};
  body["deep"] = std::move(deep);
  EXPECT_EQ(SummarizeRequest(body), "\"x\" deep=[1 items]");
}

}  // namespace
}  // namespace goldcache::agent
