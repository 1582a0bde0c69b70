#include "index/records.h"

#include <cstring>

namespace goldcache::index {
namespace {

constexpr char kChunkRecordFormat = 1;
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
  return out;
}

std::optional<ChunkRecord> DecodeChunkRecord(std::string_view b) {
  if (b.size() != 21 || b[0] != kChunkRecordFormat) return std::nullopt;
  return ChunkRecord{GetFixed64LE(b.data() + 1), GetFixed32LE(b.data() + 9),
                     GetFixed64LE(b.data() + 13)};
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
