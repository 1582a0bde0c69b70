// One on-disk record decoder of index/records.h on arbitrary bytes, chosen
// at build time (fuzz/CMakeLists.txt, goldcache_record_fuzzer):
//   GC_DECODE  the decoder: std::optional<T> (std::string_view)
//   GC_ENCODE  its encoder, or nothing when it has none
// It must never crash, and whatever it accepts must encode back to exactly
// the bytes it came from: the formats are fixed-width with a format byte,
// so a record is either read exactly or rejected.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "index/manifest.h"
#include "index/records.h"

using namespace goldcache::index;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto decoded = GC_DECODE(bytes);
#ifdef GC_ENCODE
  if (decoded && GC_ENCODE(*decoded) != bytes) std::abort();
#else
  (void)decoded;
#endif
  return 0;
}
