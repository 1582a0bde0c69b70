// Content identity of chunks: SHA-256 (OpenSSL; the CPU's SHA extensions
// where it has them, ~2 GB/s on one core here, about as fast as the
// datastore delivers a cold chunk on one thread), collision resistant, so a
// digest match stands for byte equality (index::Digest).
#pragma once

#include <span>
#include <string>

#include "index/records.h"

namespace goldcache::index {

Digest ComputeDigest(std::span<const char> data);
// Lower-case hex, for logs and tools.
std::string DigestHex(const Digest& d);

}  // namespace goldcache::index
