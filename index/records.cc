#include "index/records.h"

#include <cstring>

namespace goldcache::index {
namespace {

// 2: the chunk's digest follows the table hash.
constexpr char kChunkRecordFormat = 2;
constexpr char kTraceFormat = 1;
constexpr char kGenerationFormat = 1;

void PutFixed64LE(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
void PutFixed32LE(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
void PutFixed64BE(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetFixed64LE(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint32_t GetFixed32LE(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint64_t GetFixed64BE(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

}  // namespace

std::string EncodeChunkKey(const ChunkKey& key) {
  std::string out(1, 'c');
  PutFixed64BE(out, key.gen);
  PutFixed64BE(out, key.chunk);
  return out;
}

std::optional<ChunkKey> DecodeChunkKey(std::string_view b) {
  if (b.size() != 17 || b[0] != 'c') return std::nullopt;
  return ChunkKey{GetFixed64BE(b.data() + 1), GetFixed64BE(b.data() + 9)};
}

std::string EncodeGenerationIdKey(GenerationId id) {
  std::string out(1, 'g');
  PutFixed64BE(out, id);
  return out;
}

std::optional<GenerationId> DecodeGenerationIdKey(std::string_view b) {
  if (b.size() != 9 || b[0] != 'g') return std::nullopt;
  return GetFixed64BE(b.data() + 1);
}

std::string EncodePathKey(std::string_view path) { return "p" + std::string(path); }
std::string EncodeMetaKey(std::string_view name) { return "m" + std::string(name); }

std::string EncodeChunkRecord(const ChunkRecord& rec) {
  std::string out(1, kChunkRecordFormat);
  PutFixed64LE(out, rec.slot);
  PutFixed32LE(out, rec.length);
  PutFixed64LE(out, rec.table_hash);
  out.append(reinterpret_cast<const char*>(rec.digest.data()), rec.digest.size());
  return out;
}

std::optional<ChunkRecord> DecodeChunkRecord(std::string_view b) {
  if (b.size() != 53 || b[0] != kChunkRecordFormat) return std::nullopt;
  ChunkRecord rec{
      GetFixed64LE(b.data() + 1), GetFixed32LE(b.data() + 9), GetFixed64LE(b.data() + 13), {}};
  std::memcpy(rec.digest.data(), b.data() + 21, rec.digest.size());
  return rec;
}

std::string EncodeGenerationKey(const GenerationKey& key) {
  std::string out(1, kGenerationFormat);
  PutFixed64LE(out, key.size);
  PutFixed64LE(out, static_cast<uint64_t>(key.mtime_ns));
  PutFixed64LE(out, static_cast<uint64_t>(key.ctime_ns));
  PutFixed64LE(out, key.ino);
  out += key.path;
  return out;
}

std::optional<GenerationKey> DecodeGenerationKey(std::string_view b) {
  if (b.size() < 33 || b[0] != kGenerationFormat) return std::nullopt;
  GenerationKey key;
  key.size = GetFixed64LE(b.data() + 1);
  key.mtime_ns = static_cast<int64_t>(GetFixed64LE(b.data() + 9));
  key.ctime_ns = static_cast<int64_t>(GetFixed64LE(b.data() + 17));
  key.ino = GetFixed64LE(b.data() + 25);
  key.path.assign(b.substr(33));
  return key;
}

// Format byte, then each chunk number as the difference to the one before
// (zig-zag, LEB128): a boot's runs cost a byte or two per chunk.
std::string EncodeTrace(const std::vector<uint64_t>& chunks) {
  std::string out(1, kTraceFormat);
  uint64_t prev = 0;
  for (uint64_t c : chunks) {
    const int64_t delta = static_cast<int64_t>(c - prev);
    uint64_t z = (static_cast<uint64_t>(delta) << 1) ^ static_cast<uint64_t>(delta >> 63);
    do {
      out.push_back(static_cast<char>((z & 0x7f) | (z > 0x7f ? 0x80 : 0)));
      z >>= 7;
    } while (z != 0);
    prev = c;
  }
  return out;
}

std::optional<std::vector<uint64_t>> DecodeTrace(std::string_view b) {
  if (b.empty() || b[0] != kTraceFormat) return std::nullopt;
  std::vector<uint64_t> out;
  uint64_t prev = 0;
  for (size_t i = 1; i < b.size();) {
    uint64_t z = 0;
    int shift = 0;
    for (;;) {
      if (i >= b.size() || shift > 63) return std::nullopt;
      const auto byte = static_cast<unsigned char>(b[i++]);
      // Canonical only (no trailing zero groups, no bits past 64): one
      // trace, one encoding.
      if ((shift > 0 && byte == 0) || (shift == 63 && byte > 1)) return std::nullopt;
      z |= uint64_t{byte & 0x7fu} << shift;
      shift += 7;
      if ((byte & 0x80) == 0) break;
    }
    const int64_t delta = static_cast<int64_t>(z >> 1) ^ -static_cast<int64_t>(z & 1);
    prev += static_cast<uint64_t>(delta);
    out.push_back(prev);
  }
  return out;
}

std::string EncodeU64(uint64_t v) {
  std::string out;
  PutFixed64LE(out, v);
  return out;
}

std::optional<uint64_t> DecodeU64(std::string_view b) {
  if (b.size() != 8) return std::nullopt;
  return GetFixed64LE(b.data());
}

}  // namespace goldcache::index
