// Sizes and durations as operators write them in config files and on the
// command line ("200GiB", "30s"), and byte counts as people read them
// ("1.5 GiB").
//
// Size units (letters are case-insensitive; "B" or no unit means bytes):
//   KiB MiB GiB TiB PiB EiB   powers of 1024
//   K   M   G   T   P   E     powers of 1024 too: operators who write "64K"
//                             for a cache or buffer size mean 64 * 1024
//   KB  MB  GB  TB  PB  EB    powers of 1000, as disk vendors use them
// A fraction is allowed when it comes to whole bytes ("1.5GiB", "0.5K"), and
// blanks between number and unit are allowed ("64 KiB").
//
// Duration units: "ms", "s", "m", "h", "d"; a bare number means seconds.
// Parts combine largest unit first, as in "1h30m" or "2m 30s". A fraction is
// allowed when it comes to whole milliseconds ("1.5s").
//
// Errors: every parse failure is kInvalidArgument and its message quotes the
// input, so a bad config line can be found from the log alone. Negative
// values and values that overflow the result type are failures.
//
// Thread safety: all functions are pure.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "util/status.h"

namespace goldcache {

[[nodiscard]] Result<uint64_t> ParseSize(std::string_view text);

[[nodiscard]] Result<std::chrono::milliseconds> ParseDuration(std::string_view text);

// Powers of 1024 with at most one decimal: "0 B", "512 B", "64 KiB",
// "1.5 GiB", "16 EiB" (rounded to the nearest tenth of the unit shown).
std::string FormatBytes(uint64_t bytes);

}  // namespace goldcache
