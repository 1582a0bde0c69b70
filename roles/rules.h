// Roles of files: which datastore paths are templates, which are desktops'
// nonpersistent disks, and which pass through untouched (docs/design.md §3).
//
// A RuleSet is an ordered list of (glob, role). RoleOf(path) returns the role
// of the first rule whose glob matches the whole path, and kPassthrough when
// none does. Paths are relative to the datastore root: "" is the root, no
// leading '/'.
//
// Glob syntax, always matched against the whole path:
//   *      any run of characters within one component (never '/')
//   ?      one character other than '/'
//   [abc]  one of a, b, c; ranges [a-z]; negated [!abc] or [^abc]; a ']'
//          right after '[' (or '[!') is literal; never matches '/'
//   **     as a whole component: any number of components, including none.
//          So "templates/**" matches "templates/a.img", "templates/x/y.img"
//          and the directory "templates" itself: a directory under a rule
//          carries its role, which is what lets the agent refuse to create
//          a file in a template directory. Elsewhere "**" acts as "*".
//   \c     the character c, literally
// A pattern is rejected (kInvalidArgument, message quoting it) when it is
// empty, starts or ends with '/', has an empty, "." or ".." component, has an
// unterminated '[', or ends in a lone '\'.
//
// goldcache's own files on the datastore, the manifests `goldcache publish`
// writes beside a template (NAME + kOwnFileSuffix, and NAME + kOwnFileSuffix
// + ".tmp" while one is written), are passthrough whatever the rules say:
// never a template to cache nor a desktop to give an overlay.
//
// Thread safety: a RuleSet is immutable; concurrent RoleOf calls are safe.
// Copies are cheap (the compiled form is shared).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace goldcache::roles {

enum class Role { kTemplate, kNonpersistent, kPassthrough };

// Equals index::kManifestSuffix (checked where both are seen: templates.cc).
inline constexpr std::string_view kOwnFileSuffix = ".goldcache-manifest";

// "template", "nonpersistent", "passthrough": the words of the config file.
const char* RoleName(Role role);
// Inverse of RoleName; kInvalidArgument naming the accepted words otherwise.
Result<Role> ParseRole(std::string_view name);

struct Rule {
  std::string glob;
  Role role;
};

class RuleSet {
 public:
  // No rules: every path is passthrough.
  RuleSet();

  static Result<RuleSet> Create(std::vector<Rule> rules);

  Role RoleOf(std::string_view path) const;

  // The rules as given, in order (for /stats and logs).
  const std::vector<Rule>& rules() const { return rules_; }

 private:
  struct Compiled;
  std::vector<Rule> rules_;
  std::shared_ptr<const std::vector<Compiled>> compiled_;
};

}  // namespace goldcache::roles
