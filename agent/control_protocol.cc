#include "agent/control_protocol.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

namespace goldcache::agent {
namespace {

constexpr size_t kMaxLoggedString = 128;

// Appends `s` as a quoted string, at most kMaxLoggedString bytes of it, with
// quotes, backslashes and bytes outside printable ASCII escaped: a log line
// stays one line and readable whatever a client sent.
void AppendQuoted(std::string& out, std::string_view s) {
  out += '"';
  size_t shown = std::min(s.size(), kMaxLoggedString);
  for (size_t i = 0; i < shown; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof(hex), "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (shown < s.size()) out += "...";
  out += '"';
}

// A key as it is when it is a plain word, quoted otherwise.
void AppendKey(std::string& out, std::string_view key) {
  bool plain = !key.empty() && key.size() <= kMaxLoggedString;
  for (char c : key) {
    plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-');
  }
  if (plain) {
    out += key;
  } else {
    AppendQuoted(out, key);
  }
}

// A value without looking inside it: scalars as JSON, containers by size.
void AppendShallow(std::string& out, const nlohmann::json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::string:
      AppendQuoted(out, v.get_ref<const std::string&>());
      break;
    case nlohmann::json::value_t::object:
      out += "{" + std::to_string(v.size()) + " keys}";
      break;
    case nlohmann::json::value_t::array:
      out += "[" + std::to_string(v.size()) + " items]";
      break;
    case nlohmann::json::value_t::binary:
      out += "<binary>";
      break;
    default:
      out += v.dump();  // null, boolean, number, discarded: no children
      break;
  }
}

}  // namespace

int JsonNestingDepth(std::string_view text, int limit) {
  int depth = 0;
  int deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '{':
      case '[':
        if (++depth > deepest) {
          deepest = depth;
          if (deepest > limit) return limit + 1;
        }
        break;
      case '}':
      case ']':
        --depth;  // below zero only in text the parser rejects anyway
        break;
      default:
        break;
    }
  }
  return deepest;
}

Result<ControlRequest> DecodeControlRequest(std::string_view line) {
  if (line.size() > kMaxRequestBytes) {
    return Status::Error(Code::kInvalidArgument,
                         "request larger than " + std::to_string(kMaxRequestBytes >> 20) + " MiB");
  }
  // nlohmann takes a NUL byte for the end of the input and would accept
  // whatever follows unread; no JSON text holds one.
  if (line.find('\0') != std::string_view::npos) {
    return Status::Error(Code::kInvalidArgument, "malformed request: NUL byte in the request");
  }
  if (JsonNestingDepth(line, kMaxRequestDepth) > kMaxRequestDepth) {
    return Status::Error(Code::kInvalidArgument,
                         "malformed request: objects and arrays nested deeper than " +
                             std::to_string(kMaxRequestDepth) + " levels");
  }
  ControlRequest request;
  request.body = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.body.is_discarded() || !request.body.is_object()) {
    return Status::Error(Code::kInvalidArgument,
                         "malformed request: expected one JSON object on one line");
  }
  auto command = request.body.find("command");
  if (command == request.body.end() || !command->is_string()) {
    return Status::Error(Code::kInvalidArgument, "malformed request: no \"command\" string");
  }
  request.command = command->get<std::string>();
  return request;
}

std::string SummarizeRequest(const nlohmann::json& body, size_t max_bytes) {
  if (!body.is_object()) {
    std::string out;
    AppendShallow(out, body);
    return out;
  }
  std::string out;
  // The command first: it is what an operator looks for.
  auto command = body.find("command");
  if (command != body.end()) AppendShallow(out, *command);
  for (auto it = body.begin(); it != body.end(); ++it) {
    if (it.key() == "command") continue;
    if (out.size() >= max_bytes) break;
    if (!out.empty()) out += ' ';
    AppendKey(out, it.key());
    out += '=';
    AppendShallow(out, it.value());
  }
  if (out.size() > max_bytes) {
    out.resize(max_bytes);
    out += "...";
  }
  return out;
}

}  // namespace goldcache::agent
