// A RocksDB Env whose files are the owner's alone: every file RocksDB
// creates through it gets mode 0600 and every directory 0700.
//
// Why: the index holds datastore paths (which desktops and templates exist),
// and RocksDB 7.8's POSIX file system creates files 0644 (less the process
// umask) whatever its options say: Env::SetAllowNonOwnerAccess(false) is
// accepted and ignored by the default file system. The agent cannot run
// under umask 077 instead, since the same process creates passthrough files
// on the datastore with the modes desktops ask for.
//
// Thread safety: the Env is shared and safe to use from every thread.
#pragma once

#include <memory>

namespace rocksdb {
class Env;
class FileSystem;
}  // namespace rocksdb

namespace goldcache::index {

// The process-wide private Env (never destroyed).
rocksdb::Env* PrivateFilesEnv();
// Its file system, for Envs layered over it (index/fault_fs.h).
std::shared_ptr<rocksdb::FileSystem> PrivateFileSystem();

}  // namespace goldcache::index
