// The control socket's request decoding (agent/control_protocol.h) on
// arbitrary bytes: never crashes; what it accepts is an object with a string
// command, nested no deeper than the limit; what it refuses for depth really
// is that deep; the log summary stays bounded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/control_protocol.h"

namespace {

using goldcache::agent::kMaxRequestDepth;
using json = nlohmann::json;

// Depth of a parsed document, without recursion (the fuzzer may build deep
// ones when the parse succeeds and the decoder refused).
int DepthOf(const json& doc) {
  int deepest = 0;
  std::vector<std::pair<const json*, int>> todo = {{&doc, 0}};
  while (!todo.empty()) {
    auto [v, depth] = todo.back();
    todo.pop_back();
    if (!v->is_structured()) continue;
    deepest = std::max(deepest, depth + 1);
    for (const json& child : *v) todo.emplace_back(&child, depth + 1);
  }
  return deepest;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  auto request = goldcache::agent::DecodeControlRequest(line);
  json parsed = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.ok()) {
    if (!request->body.is_object() || request->body["command"] != request->command) std::abort();
    if (DepthOf(request->body) > kMaxRequestDepth) std::abort();
    if (parsed != request->body) std::abort();
    if (goldcache::agent::SummarizeRequest(request->body).size() > 512 + 3) std::abort();
    (void)request->body.dump(-1, ' ', false, json::error_handler_t::replace);
  } else if (!parsed.is_discarded() && parsed.is_object() && DepthOf(parsed) <= kMaxRequestDepth &&
             line.find('\0') == std::string_view::npos) {
    // A well-formed shallow object is refused only for its command.
    auto command = parsed.find("command");
    if (command != parsed.end() && command->is_string()) std::abort();
  }
  if (!parsed.is_discarded() && line.find('\0') == std::string_view::npos &&
      goldcache::agent::JsonNestingDepth(line, 1 << 20) != DepthOf(parsed)) {
    std::abort();  // the pre-parse scan counts what the parser builds
  }
  return 0;
}
