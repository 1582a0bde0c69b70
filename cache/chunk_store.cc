#include "cache/chunk_store.h"

#include <cstring>
#include <vector>

#include "cache/checksum.h"

namespace goldcache::cache {
namespace {

constexpr uint32_t kMagic = 0x31534347;  // "GCS1"
constexpr uint32_t kHeaderBytes = 64;    // the table follows at this offset

struct Header {  // little-endian on disk (x86); rebuild tools read it as such
  uint32_t magic;
  uint16_t version;
  uint16_t reserved;
  uint32_t length;
  uint32_t blocks;
  uint64_t gen;
  uint64_t chunk;
  uint64_t table_hash;
  uint8_t unused[kHeaderBytes - 40];
};
static_assert(sizeof(Header) == kHeaderBytes);

uint32_t MetaBytesFor(uint32_t chunk_size) {
  const uint64_t raw = kHeaderBytes + uint64_t{BlocksFor(chunk_size)} * sizeof(uint32_t);
  return static_cast<uint32_t>((raw + kBlockSize - 1) / kBlockSize * kBlockSize);
}

}  // namespace

Result<std::unique_ptr<ChunkStore>> ChunkStore::Open(io::Env& env, const std::string& dir,
                                                     uint32_t chunk_size, uint64_t slots) {
  if (chunk_size == 0 || chunk_size % kBlockSize != 0) {
    return Status::Error(
        Code::kInvalidArgument,
        "chunk size must be a positive multiple of 4 KiB, got " + std::to_string(chunk_size));
  }
  auto file = env.Open(dir + "/" + kFileName, /*create=*/true, /*truncate=*/false);
  if (!file.ok()) return file.status();
  std::unique_ptr<ChunkStore> store(new ChunkStore(std::move(file).value(), chunk_size, slots));
  // Sparse: sets the address space, not the space used.
  GC_RETURN_IF_ERROR(store->file_->Truncate(slots * store->stride_));
  return store;
}

ChunkStore::ChunkStore(std::unique_ptr<io::File> file, uint32_t chunk_size, uint64_t slots)
    : file_(std::move(file)),
      chunk_size_(chunk_size),
      slots_(slots),
      meta_bytes_(MetaBytesFor(chunk_size)),
      stride_(uint64_t{MetaBytesFor(chunk_size)} + chunk_size) {}

Status ChunkStore::Write(uint64_t slot, const index::ChunkKey& key, uint64_t table_hash,
                         std::span<const char> data, std::span<const uint32_t> table) {
  if (slot >= slots_ || data.size() > chunk_size_ || table.size() != BlocksFor(data.size())) {
    return Status::Error(Code::kInvalidArgument, "chunk store write out of range");
  }
  thread_local std::vector<char> meta;
  meta.assign(meta_bytes_, 0);
  Header h{};
  h.magic = kMagic;
  h.version = 1;
  h.length = static_cast<uint32_t>(data.size());
  h.blocks = static_cast<uint32_t>(table.size());
  h.gen = key.gen;
  h.chunk = key.chunk;
  h.table_hash = table_hash;
  std::memcpy(meta.data(), &h, sizeof(h));
  std::memcpy(meta.data() + kHeaderBytes, table.data(), table.size_bytes());
  io::Request reqs[2] = {
      {Base(slot), meta.data(), meta.size(), true},
      {Base(slot) + meta_bytes_, const_cast<char*>(data.data()), data.size(), true},
  };
  return file_->Run(reqs);
}

Status ChunkStore::Read(uint64_t slot, uint32_t offset, std::span<char> out,
                        std::span<uint32_t> table) {
  if (slot >= slots_ || offset + out.size() > chunk_size_ ||
      table.size() > BlocksFor(chunk_size_)) {
    return Status::Error(Code::kInvalidArgument, "chunk store read out of range");
  }
  io::Request reqs[2] = {
      {Base(slot) + meta_bytes_ + offset, out.data(), out.size(), false},
      {Base(slot) + kHeaderBytes, table.data(), table.size_bytes(), false},
  };
  return file_->Run(std::span(reqs, table.empty() ? 1 : 2));
}

Status ChunkStore::Punch(uint64_t slot) { return file_->Punch(Base(slot), stride_); }

Status ChunkStore::Sync() { return file_->Sync(); }

}  // namespace goldcache::cache
