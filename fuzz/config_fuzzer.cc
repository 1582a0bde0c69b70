// agent::ParseConfig on arbitrary text: never crashes, hangs or leaks; a
// config it accepts keeps the promises of config.h.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = goldcache::agent::ParseConfig(text, "fuzz.toml");
  if (config.ok()) {
    // At least one datastore, each with a name, a source and a mountpoint.
    if (config->datastores.empty() || config->cache.dir.empty()) std::abort();
    for (const auto& ds : config->datastores) {
      if (ds.name.empty() || ds.source.empty() || ds.mountpoint.empty()) std::abort();
    }
    (void)config->Where("cache.dir");
  } else if (config.status().message().empty()) {
    std::abort();  // every refusal says why
  }
  return 0;
}
