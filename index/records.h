// The durable vocabulary of the cache: generations and chunk records, and
// their byte encodings in RocksDB. Encodings are fixed-width little-endian
// with a leading format byte, so a record written by one version is either
// read exactly or rejected (never misread).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace goldcache::index {

using GenerationId = uint64_t;

// What the datastore says about a template's content. Two keys are the same
// generation only when every field is equal: any change to the file (new
// content, a touch, a copy over it) is a new generation with its own chunks.
struct GenerationKey {
  std::string path;  // relative to the datastore root, prefixed "<datastore>:" by the agent
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint64_t ino = 0;
  bool operator==(const GenerationKey&) const = default;
};

// One cached chunk: chunk number `chunk` of generation `gen`.
struct ChunkKey {
  GenerationId gen = 0;
  uint64_t chunk = 0;
  bool operator==(const ChunkKey&) const = default;
};

struct ChunkKeyHash {
  size_t operator()(const ChunkKey& k) const noexcept {
    uint64_t h = k.gen * 0x9E3779B97F4A7C15ull ^ (k.chunk + 0x632BE59BD9B4E019ull + (k.gen << 6));
    return static_cast<size_t>(h ^ (h >> 29));
  }
};

// A chunk's content identity: SHA-256 of its bytes (index/digest.h). Two
// chunks with one digest are the same bytes, whatever file, generation or
// offset they come from: the local store keeps them once.
using Digest = std::array<uint8_t, 32>;

struct DigestHash {
  size_t operator()(const Digest& d) const noexcept {
    size_t h;  // the digest is uniformly distributed already
    std::memcpy(&h, d.data(), sizeof(h));
    return h;
  }
};

// Where a chunk lives in the local store and how to prove it good. Several
// records (of one file or of many) may name one slot: they have one digest.
struct ChunkRecord {
  uint64_t slot = 0;        // slot in the chunk store
  uint32_t length = 0;      // valid bytes (the last chunk of a file is short)
  uint64_t table_hash = 0;  // hash of the chunk's per-block checksum table
  Digest digest{};          // of the chunk's bytes
  bool operator==(const ChunkRecord&) const = default;
};

// Key encodings. Prefixes keep the kinds apart in one column family:
//   'c' gen(8, big-endian) chunk(8, big-endian) -> ChunkRecord
//   'g' gen(8, big-endian)                      -> GenerationKey
//   'p' path                                    -> current GenerationId of path
//   'm' name                                    -> metadata (format, chunk size)
//   't' gen(8, big-endian)                      -> boot trace of gen (EncodeTrace)
std::string EncodeChunkKey(const ChunkKey& key);
std::optional<ChunkKey> DecodeChunkKey(std::string_view bytes);
std::string EncodeGenerationIdKey(GenerationId id);
std::optional<GenerationId> DecodeGenerationIdKey(std::string_view bytes);
std::string EncodePathKey(std::string_view path);
std::string EncodeMetaKey(std::string_view name);

std::string EncodeChunkRecord(const ChunkRecord& rec);
std::optional<ChunkRecord> DecodeChunkRecord(std::string_view bytes);
std::string EncodeGenerationKey(const GenerationKey& key);
std::optional<GenerationKey> DecodeGenerationKey(std::string_view bytes);
// A boot trace: chunk numbers in the order they were first read.
std::string EncodeTrace(const std::vector<uint64_t>& chunks);
std::optional<std::vector<uint64_t>> DecodeTrace(std::string_view bytes);
std::string EncodeU64(uint64_t v);
std::optional<uint64_t> DecodeU64(std::string_view bytes);

}  // namespace goldcache::index
