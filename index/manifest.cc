#include "index/manifest.h"

#include <cstring>

#include "index/digest.h"

namespace goldcache::index {
namespace {

constexpr char kMagic[] = "GCMANIF1";
constexpr size_t kMagicBytes = 8;
constexpr size_t kHeaderBytes = kMagicBytes + 4 + 8 * 6;

void Put(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t Get(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

}  // namespace

bool Manifest::Describes(const GenerationKey& key, uint32_t chunk) const {
  return chunk_size == chunk && size == key.size && mtime_ns == key.mtime_ns &&
         ctime_ns == key.ctime_ns && ino == key.ino;
}

std::string EncodeManifest(const Manifest& m) {
  const std::string trace = EncodeTrace(m.trace);
  std::string out(kMagic, kMagicBytes);
  Put(out, m.chunk_size, 4);
  Put(out, m.size, 8);
  Put(out, static_cast<uint64_t>(m.mtime_ns), 8);
  Put(out, static_cast<uint64_t>(m.ctime_ns), 8);
  Put(out, m.ino, 8);
  Put(out, m.digests.size(), 8);
  Put(out, trace.size(), 8);
  for (const Digest& d : m.digests) out.append(reinterpret_cast<const char*>(d.data()), d.size());
  out += trace;
  const Digest sum = ComputeDigest(out);
  out.append(reinterpret_cast<const char*>(sum.data()), sum.size());
  return out;
}

std::optional<Manifest> DecodeManifest(std::string_view b, std::string* why) {
  auto fail = [&](const char* what) -> std::optional<Manifest> {
    if (why != nullptr) *why = what;
    return std::nullopt;
  };
  if (b.size() < kHeaderBytes + 32 || std::memcmp(b.data(), kMagic, kMagicBytes) != 0) {
    return fail("not a goldcache manifest");
  }
  if (b.size() > kMaxManifestBytes) return fail("larger than any manifest");
  const Digest sum = ComputeDigest(b.substr(0, b.size() - 32));
  if (std::memcmp(sum.data(), b.data() + b.size() - 32, 32) != 0) {
    return fail("its checksum does not match (damaged or cut short)");
  }
  Manifest m;
  const char* p = b.data() + kMagicBytes;
  m.chunk_size = static_cast<uint32_t>(Get(p, 4));
  m.size = Get(p + 4, 8);
  m.mtime_ns = static_cast<int64_t>(Get(p + 12, 8));
  m.ctime_ns = static_cast<int64_t>(Get(p + 20, 8));
  m.ino = Get(p + 28, 8);
  const uint64_t chunks = Get(p + 36, 8);
  const uint64_t trace_bytes = Get(p + 44, 8);
  if (m.chunk_size == 0 || m.chunk_size % 4096 != 0) return fail("bad chunk size");
  if (chunks != (m.size + m.chunk_size - 1) / m.chunk_size) {
    return fail("chunk count does not match the file size");
  }
  const uint64_t body = b.size() - kHeaderBytes - 32;
  if (chunks > body / 32 || trace_bytes != body - chunks * 32) return fail("lengths do not add up");
  m.digests.resize(chunks);
  const char* d = b.data() + kHeaderBytes;
  for (uint64_t i = 0; i < chunks; ++i) std::memcpy(m.digests[i].data(), d + i * 32, 32);
  auto trace = DecodeTrace(b.substr(kHeaderBytes + chunks * 32, trace_bytes));
  if (!trace) return fail("undecodable boot trace");
  for (uint64_t c : *trace) {
    if (c >= chunks) return fail("boot trace names a chunk past the end");
  }
  m.trace = std::move(*trace);
  return m;
}

}  // namespace goldcache::index
