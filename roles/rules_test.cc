#include "roles/rules.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

namespace goldcache::roles {
namespace {

using ::testing::HasSubstr;

RuleSet MustCreate(std::vector<Rule> rules) {
  Result<RuleSet> set = RuleSet::Create(std::move(rules));
  EXPECT_TRUE(set.ok()) << set.status().ToString();
  return set.ok() ? *set : RuleSet();
}

bool Matches(const std::string& glob, const std::string& path) {
  return MustCreate({{glob, Role::kTemplate}}).RoleOf(path) == Role::kTemplate;
}

// glob, path, whether the path matches.
using Case = std::tuple<std::string, std::string, bool>;
class GlobMatrixTest : public ::testing::TestWithParam<Case> {};

TEST_P(GlobMatrixTest, MatchesWholePath) {
  const auto& [glob, path, expected] = GetParam();
  EXPECT_EQ(Matches(glob, path), expected) << "glob \"" << glob << "\" path \"" << path << "\"";
}

INSTANTIATE_TEST_SUITE_P(
    Globs, GlobMatrixTest,
    ::testing::Values(
        // "**" spans any number of components, including none.
        Case{"templates/**", "templates/a.img", true},
        Case{"templates/**", "templates/x/y.img", true},
        Case{"templates/**", "templates", true},  // the directory itself carries the role
        Case{"templates/**", "templatesX/a.img", false},
        Case{"templates/**", "pool/templates/a.img", false}, Case{"templates/**", "", false},
        Case{"**", "", true}, Case{"**", "a/b/c", true}, Case{"**/*.img", "a.img", true},
        Case{"**/*.img", "x/y/a.img", true}, Case{"**/*.img", "x/y/a.qcow2", false},
        Case{"a/**/b", "a/b", true}, Case{"a/**/b", "a/x/y/b", true},
        Case{"a/**/b", "a/x/y/bb", false}, Case{"a/**/**/b", "a/b", true},
        Case{"a/**/b/**", "a/x/b/c/b/d", true},
        // "*" and "?" stay inside one component.
        Case{"pool/*", "pool/vm1.qcow2", true}, Case{"pool/*", "pool", false},
        Case{"pool/*", "pool/x/vm1.qcow2", false}, Case{"pool/*.qcow2", "pool/.qcow2", true},
        Case{"pool/vm*.qcow2", "pool/vm017.qcow2", true},
        Case{"pool/vm*.qcow2", "pool/vm017.raw", false}, Case{"*", "a", true},
        Case{"*", "a/b", false}, Case{"*a*b*", "xxaybzz", true}, Case{"*a*b", "ab_ab_b", true},
        Case{"*a*b", "ab_a", false}, Case{"pool/vm??.img", "pool/vm17.img", true},
        Case{"pool/vm??.img", "pool/vm1.img", false}, Case{"a?b", "a/b", false},
        Case{"a**b", "axyzb", true},  // "**" inside a component is "*"
        Case{"a**b", "ax/yb", false},
        // Classes.
        Case{"vm[0-9].img", "vm7.img", true}, Case{"vm[0-9].img", "vmx.img", false},
        Case{"vm[abc]", "vmb", true}, Case{"vm[!abc]", "vmb", false}, Case{"vm[!abc]", "vmd", true},
        Case{"vm[^abc]", "vmd", true}, Case{"x[]]", "x]", true}, Case{"x[!]]", "x]", false},
        Case{"x[a-]", "x-", true},
        Case{"a[!x]b", "a/b", false},  // a negated class still never matches '/'
        // Literals and escapes.
        Case{"templates/win11.img", "templates/win11.img", true},
        Case{"templates/win11.img", "templates/win11.img.bak", false},
        Case{"templates/win11.img", "Templates/win11.img", false}, Case{"a\\*b", "a*b", true},
        Case{"a\\*b", "axb", false}, Case{"a\\[b", "a[b", true}));

TEST(RuleSetTest, FirstMatchingRuleWins) {
  RuleSet rules = MustCreate({{"pool/persistent/**", Role::kPassthrough},
                              {"pool/**", Role::kNonpersistent},
                              {"templates/**", Role::kTemplate},
                              {"**/*.img", Role::kTemplate}});
  EXPECT_EQ(rules.RoleOf("pool/persistent/vm1.qcow2"), Role::kPassthrough);
  EXPECT_EQ(rules.RoleOf("pool/vm1.qcow2"), Role::kNonpersistent);
  EXPECT_EQ(rules.RoleOf("pool/vm1.img"), Role::kNonpersistent);
  EXPECT_EQ(rules.RoleOf("templates/win11.img"), Role::kTemplate);
  EXPECT_EQ(rules.RoleOf("iso/debian.img"), Role::kTemplate);
}

TEST(RuleSetTest, UnmatchedPathsAndTheRootArePassthrough) {
  RuleSet rules = MustCreate({{"templates/**", Role::kTemplate}});
  EXPECT_EQ(rules.RoleOf(""), Role::kPassthrough);
  EXPECT_EQ(rules.RoleOf("vm-configs/vm1.xml"), Role::kPassthrough);
  EXPECT_EQ(RuleSet().RoleOf("templates/a.img"), Role::kPassthrough);
}

TEST(RuleSetTest, ManifestsBesideFilesArePassthroughWhateverTheRules) {
  auto rules =
      RuleSet::Create({{"templates/**", Role::kTemplate}, {"pool/**", Role::kNonpersistent}});
  ASSERT_TRUE(rules.ok()) << rules.status().ToString();
  EXPECT_EQ(rules->RoleOf("templates/win11.img.goldcache-manifest"), Role::kPassthrough);
  EXPECT_EQ(rules->RoleOf("templates/win11.img.goldcache-manifest.tmp"), Role::kPassthrough);
  EXPECT_EQ(rules->RoleOf("pool/d1.raw.goldcache-manifest"), Role::kPassthrough);
  EXPECT_EQ(rules->RoleOf("templates/win11.img"), Role::kTemplate);
  EXPECT_EQ(rules->RoleOf("templates/win11.goldcache-manifest.img"), Role::kTemplate);
  EXPECT_EQ(rules->RoleOf("pool/x.tmp"), Role::kNonpersistent);
}

TEST(RuleSetTest, TemplateDirectoryItselfIsTemplate) {
  RuleSet rules =
      MustCreate({{"templates/**", Role::kTemplate}, {"pool/**", Role::kNonpersistent}});
  EXPECT_EQ(rules.RoleOf("templates"), Role::kTemplate);
  EXPECT_EQ(rules.RoleOf("templates/sub"), Role::kTemplate);
  EXPECT_EQ(rules.RoleOf("pool"), Role::kNonpersistent);
}

TEST(RuleSetTest, KeepsRulesInOrderAndCopiesShareThem) {
  RuleSet rules = MustCreate({{"a/**", Role::kTemplate}, {"b/**", Role::kNonpersistent}});
  ASSERT_EQ(rules.rules().size(), 2u);
  EXPECT_EQ(rules.rules()[1].glob, "b/**");
  RuleSet copy = rules;
  EXPECT_EQ(copy.RoleOf("b/x"), Role::kNonpersistent);
}

TEST(RuleSetTest, RejectsInvalidPatternsQuotingThem) {
  for (const char* bad : {"", "templates/[abc", "[", "x[!", "a[b/c]", "/templates/**", "templates/",
                          "a//b", "a/./b", "../x", "a\\", "[z-a]"}) {
    SCOPED_TRACE(bad);
    Result<RuleSet> set =
        RuleSet::Create({{"pool/**", Role::kNonpersistent}, {bad, Role::kTemplate}});
    ASSERT_FALSE(set.ok());
    EXPECT_EQ(set.status().code(), Code::kInvalidArgument);
    EXPECT_THAT(set.status().message(), HasSubstr("\"" + std::string(bad) + "\""));
  }
  Result<RuleSet> set = RuleSet::Create({{"templates/[abc", Role::kTemplate}});
  EXPECT_THAT(set.status().message(), HasSubstr("unterminated '['"));
}

TEST(RoleTest, NamesRoundTrip) {
  for (Role role : {Role::kTemplate, Role::kNonpersistent, Role::kPassthrough}) {
    Result<Role> parsed = ParseRole(RoleName(role));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, role);
  }
  EXPECT_STREQ(RoleName(Role::kNonpersistent), "nonpersistent");
  Result<Role> bad = ParseRole("golden");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("\"golden\""));
}

}  // namespace
}  // namespace goldcache::roles
