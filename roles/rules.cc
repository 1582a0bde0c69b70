#include "roles/rules.h"

#include <bitset>
#include <utility>

namespace goldcache::roles {
namespace {

// One position of a component pattern.
struct Token {
  enum Kind { kLiteral, kAny, kStar, kClass };
  explicit Token(Kind k, char c = 0) : kind(k), literal(c) {}

  Kind kind;
  char literal;          // kLiteral
  std::bitset<256> set;  // kClass: the bytes it accepts ('/' never)

  bool MatchesChar(char c) const {
    switch (kind) {
      case kLiteral:
        return c == literal;
      case kAny:
        return true;
      case kClass:
        return set.test(static_cast<unsigned char>(c));
      case kStar:
        break;
    }
    return false;
  }
};

// One '/'-separated part of a pattern: "**" or a sequence of tokens.
struct Component {
  bool any_components = false;  // "**"
  std::vector<Token> tokens;
};

// Wildcard match where `star(i)` says which pattern elements match any run
// and `one(i, j)` whether element i matches text element j. Greedy with one
// backtrack point: correct because a later star can absorb whatever an
// earlier one would have (the classic linear-time wildcard algorithm).
template <typename IsStar, typename MatchesOne>
bool WildcardMatch(size_t pattern_len, size_t text_len, IsStar star, MatchesOne one) {
  constexpr size_t kNone = static_cast<size_t>(-1);
  size_t p = 0, t = 0, star_p = kNone, star_t = 0;
  while (t < text_len) {
    if (p < pattern_len && star(p)) {
      star_p = p++;
      star_t = t;
    } else if (p < pattern_len && one(p, t)) {
      ++p;
      ++t;
    } else if (star_p != kNone) {
      p = star_p + 1;
      t = ++star_t;
    } else {
      return false;
    }
  }
  while (p < pattern_len && star(p)) ++p;
  return p == pattern_len;
}

bool MatchComponent(const std::vector<Token>& tokens, std::string_view text) {
  return WildcardMatch(
      tokens.size(), text.size(), [&](size_t i) { return tokens[i].kind == Token::kStar; },
      [&](size_t i, size_t j) { return tokens[i].MatchesChar(text[j]); });
}

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> parts;
  if (path.empty()) return parts;  // the root: no components
  size_t start = 0;
  while (true) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) {
      parts.push_back(path.substr(start));
      return parts;
    }
    parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
}

Status PatternError(const std::string& glob, const std::string& why) {
  return Status::Error(Code::kInvalidArgument, "invalid rule pattern \"" + glob + "\": " + why);
}

// Parses "[...]" starting at glob[i] == '['; leaves i on the closing ']'.
Result<Token> ParseClass(const std::string& glob, size_t& i) {
  Token token(Token::kClass);
  size_t j = i + 1;
  bool negated = j < glob.size() && (glob[j] == '!' || glob[j] == '^');
  if (negated) ++j;
  bool first = true;
  for (; j < glob.size() && glob[j] != '/' && (first || glob[j] != ']'); ++j, first = false) {
    unsigned char lo = static_cast<unsigned char>(glob[j]);
    if (lo == '\\' && j + 1 < glob.size() && glob[j + 1] != '/') lo = glob[++j];
    unsigned char hi = lo;
    if (j + 2 < glob.size() && glob[j + 1] == '-' && glob[j + 2] != ']' && glob[j + 2] != '/') {
      hi = static_cast<unsigned char>(glob[j + 2]);
      j += 2;
      if (hi < lo) return PatternError(glob, "range in '[...]' runs backwards");
    }
    for (unsigned c = lo; c <= hi; ++c) token.set.set(c);
  }
  if (j >= glob.size() || glob[j] != ']') return PatternError(glob, "unterminated '['");
  if (negated) token.set.flip();
  token.set.reset('/');
  i = j;
  return token;
}

Result<std::vector<Component>> CompilePattern(const std::string& glob) {
  if (glob.empty()) return PatternError(glob, "empty");
  if (glob.front() == '/') {
    return PatternError(glob, "patterns are relative to the datastore root (no leading '/')");
  }
  if (glob.back() == '/') return PatternError(glob, "trailing '/' (use \"dir/**\" for a tree)");

  std::vector<Component> components;
  Component current;
  size_t component_start = 0;
  auto finish_component = [&](size_t end) -> Status {
    std::string_view raw(glob.data() + component_start, end - component_start);
    if (raw.empty()) return PatternError(glob, "empty path component");
    if (raw == "." || raw == "..") return PatternError(glob, "'.' and '..' never match");
    if (raw == "**") {
      // "a/**/**/b" means the same as "a/**/b".
      if (components.empty() || !components.back().any_components) {
        components.push_back(Component{true, {}});
      }
    } else {
      components.push_back(std::move(current));
    }
    current = Component{};
    component_start = end + 1;
    return Status::Ok();
  };

  for (size_t i = 0; i < glob.size(); ++i) {
    char c = glob[i];
    if (c == '/') {
      GC_RETURN_IF_ERROR(finish_component(i));
    } else if (c == '*') {
      // Runs of '*' within a component mean one '*'.
      if (current.tokens.empty() || current.tokens.back().kind != Token::kStar) {
        current.tokens.push_back(Token(Token::kStar));
      }
    } else if (c == '?') {
      current.tokens.push_back(Token(Token::kAny));
    } else if (c == '[') {
      Result<Token> token = ParseClass(glob, i);
      if (!token.ok()) return token.status();
      current.tokens.push_back(std::move(*token));
    } else if (c == '\\') {
      if (i + 1 >= glob.size()) return PatternError(glob, "ends in a lone '\\'");
      if (glob[i + 1] == '/') return PatternError(glob, "'/' cannot be escaped");
      current.tokens.push_back(Token(Token::kLiteral, glob[++i]));
    } else {
      current.tokens.push_back(Token(Token::kLiteral, c));
    }
  }
  GC_RETURN_IF_ERROR(finish_component(glob.size()));
  return components;
}

}  // namespace

struct RuleSet::Compiled {
  std::vector<Component> components;
  Role role;
};

const char* RoleName(Role role) {
  switch (role) {
    case Role::kTemplate:
      return "template";
    case Role::kNonpersistent:
      return "nonpersistent";
    case Role::kPassthrough:
      return "passthrough";
  }
  return "unknown";
}

Result<Role> ParseRole(std::string_view name) {
  for (Role role : {Role::kTemplate, Role::kNonpersistent, Role::kPassthrough}) {
    if (name == RoleName(role)) return role;
  }
  return Status::Error(Code::kInvalidArgument,
                       "unknown role \"" + std::string(name) +
                           "\" (expected template, nonpersistent or passthrough)");
}

RuleSet::RuleSet() : compiled_(std::make_shared<const std::vector<Compiled>>()) {}

Result<RuleSet> RuleSet::Create(std::vector<Rule> rules) {
  auto compiled = std::make_shared<std::vector<Compiled>>();
  compiled->reserve(rules.size());
  for (const Rule& rule : rules) {
    Result<std::vector<Component>> components = CompilePattern(rule.glob);
    if (!components.ok()) return components.status();
    compiled->push_back(Compiled{std::move(*components), rule.role});
  }
  RuleSet set;
  set.rules_ = std::move(rules);
  set.compiled_ = std::move(compiled);
  return set;
}

Role RuleSet::RoleOf(std::string_view path) const {
  if (path.ends_with(kOwnFileSuffix) ||
      (path.ends_with(".tmp") && path.substr(0, path.size() - 4).ends_with(kOwnFileSuffix))) {
    return Role::kPassthrough;
  }
  std::vector<std::string_view> parts = SplitPath(path);
  for (const Compiled& rule : *compiled_) {
    const std::vector<Component>& pattern = rule.components;
    bool matched = WildcardMatch(
        pattern.size(), parts.size(), [&](size_t i) { return pattern[i].any_components; },
        [&](size_t i, size_t j) { return MatchComponent(pattern[i].tokens, parts[j]); });
    if (matched) return rule.role;
  }
  return Role::kPassthrough;
}

}  // namespace goldcache::roles
