// A RocksDB Env for tests whose files obey an io::FaultEnv: the index's
// writes, syncs, opens and removals can be failed or held like the local
// store's, and FaultEnv::PowerCut() also cuts the index, dropping every
// byte RocksDB appended to a file and did not sync (its WAL's unsynced
// tail, a table being written), as a power loss does. RocksDB's files are
// append-only, so undoing unsynced bytes is truncating to the synced size.
// (As in FaultEnv: creations, renames and removals are not undone.)
//
//   io::FaultEnv faults;
//   CacheOptions o;  o.env = &faults;  o.index_env = index::NewFaultFilesEnv(faults);
//
// Files are private (0600) as with PrivateFilesEnv. The Env must outlive
// every DB opened on it; ChunkIndex keeps it (Options::env).
#pragma once

#include <memory>

namespace rocksdb {
class Env;
}

namespace goldcache::io {
class FaultEnv;
}

namespace goldcache::index {

std::shared_ptr<rocksdb::Env> NewFaultFilesEnv(io::FaultEnv& faults);

}  // namespace goldcache::index
