// A template manifest: what `goldcache publish PATH` writes beside a
// datastore file (PATH + kManifestSuffix), and every host reads when it
// opens that file's generation: the generation it describes, the digest of
// each of its chunks, and the boot trace (the order in which boots first
// read its chunks).
//
// With it a host serves every chunk whose digest it already holds (of any
// file, any generation: the template before the patch, the template a full
// clone was copied from) without reading the datastore, and prefetches
// along the trace. See docs/architecture.md "Content addressing".
//
// Trust: a manifest describes exactly one generation (size, mtime, ctime,
// inode, and the chunk size it was cut with); any other generation of the
// file ignores it (stale). It is protected by its own SHA-256 (damage is
// detected). Beyond that it is trusted as the datastore file is: whoever can
// write a lying manifest can write the template. Every chunk a host does
// fetch is checked against it, and one mismatch distrusts the manifest for
// that generation on that host (never a wrong byte from then on).
//
// Format (little-endian): magic "GCMANIF1"; chunk_size u32; size u64;
// mtime_ns i64; ctime_ns i64; ino u64; chunk count u64; trace length u64;
// the chunk count's digests (32 bytes each); the trace (index::EncodeTrace,
// that many bytes); SHA-256 of everything before it. Decoding is strict: a
// manifest is read exactly or rejected.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "index/records.h"

namespace goldcache::index {

inline constexpr char kManifestSuffix[] = ".goldcache-manifest";
// Larger manifests are refused unread: 32 B per chunk, so 16 MiB describes
// a 512 GiB file at 1 MiB chunks.
inline constexpr uint64_t kMaxManifestBytes = 16ull << 20;

struct Manifest {
  uint32_t chunk_size = 0;
  // The generation described (as GenerationKey, without the path).
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint64_t ino = 0;
  std::vector<Digest> digests;  // one per chunk, in file order
  std::vector<uint64_t> trace;  // chunk numbers, first read first; may be empty

  // True when this manifest describes `key`'s generation cut into
  // `chunk_size` chunks.
  bool Describes(const GenerationKey& key, uint32_t chunk_size) const;
};

std::string EncodeManifest(const Manifest& m);
// nullopt when the bytes are not a whole, intact, self-consistent manifest;
// `why` (may be null) then says what is wrong.
std::optional<Manifest> DecodeManifest(std::string_view bytes, std::string* why = nullptr);

}  // namespace goldcache::index
