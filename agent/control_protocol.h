// The request side of the control socket's wire format (control_server.h),
// as pure functions: what the server does with the bytes a client sent
// before any handler sees them. Kept apart from the socket code so that it
// can be tested and fuzzed on its own (fuzz/control_request_fuzzer.cc).
//
// A request is untrusted input from any member of the control group. The
// decoder bounds its size and its nesting depth before nlohmann parses it:
// nlohmann's parser is iterative, but dump(), copies and comparisons of a
// parsed document recurse once per level, so a 200 KB request nested
// 100,000 deep would overflow a thread's stack the first time anybody logs
// or copies it.
//
// Thread safety: all functions are reentrant.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "util/status.h"

namespace goldcache::agent {

// Longest request line the server reads (the newline excluded).
inline constexpr size_t kMaxRequestBytes = 1 << 20;
// Deepest nesting of objects and arrays in a request. Real requests are one
// flat object (depth 1); 16 leaves room for structured arguments.
inline constexpr int kMaxRequestDepth = 16;

struct ControlRequest {
  nlohmann::json body;  // an object with a string "command", nested at most kMaxRequestDepth
  std::string command;  // body["command"]
};

// Decodes one request line (without its newline).
// Errors: kInvalidArgument whose message is what the client is told, always
// starting "malformed request: " or "request larger than".
Result<ControlRequest> DecodeControlRequest(std::string_view line);

// The deepest nesting of objects and arrays in `text`, counting only
// brackets outside strings, or `limit + 1` as soon as it passes `limit`.
// Exact for every text without NUL bytes that nlohmann accepts (nlohmann
// stops reading at a NUL); linear, no recursion, no allocation.
int JsonNestingDepth(std::string_view text, int limit);

// One bounded log line's worth of a decoded request: each top-level key with
// its value when it is a scalar (strings cut, control bytes escaped) and only
// the size of a nested object or array. Never longer than `max_bytes` (plus
// "..."), never recursive, whatever the request holds.
std::string SummarizeRequest(const nlohmann::json& body, size_t max_bytes = 512);

}  // namespace goldcache::agent
