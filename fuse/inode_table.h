// InodeTable: the kernel's view of the file tree, kept by the FUSE adapter.
// Internal to fuse/; the agent never sees node ids.
//
// The kernel names files by node id; a FileSystem names them by path. The
// table maps one to the other. Each node remembers the names (parent node +
// entry name) under which the kernel learned it; its path is computed by
// walking parents, so renaming a directory moves every node under it with no
// further bookkeeping.
//
// Identity: nodes are keyed by the FileSystem's (st_dev, st_ino), so two
// lookups of one file (or of two hard links to it) return the same node id.
// A FileSystem therefore must not report the same non-zero (st_dev, st_ino)
// for two different live files. A file with st_ino == 0 is keyed by name only.
// A *versioned* regular file (FileSystem::Versioned: a template, which
// changes only behind the mount) is keyed by its size, mtime and ctime too: a changed
// file, even in place, is a new node, so the kernel holds it as a new inode
// and handles open on the old version keep their size and pages. Matches()
// tells whether a fresh stat of a node's path still is that node's file.
//
// Lifetime (libfuse lowlevel contract): every entry the adapter hands to the
// kernel (lookup, create, mkdir, symlink, link, readdirplus) adds one to the
// node's lookup count; FORGET subtracts. A node is erased when its lookup
// count is zero, no other node's name refers to it as parent and no file
// handle is open on it. The root never goes away.
//
// Node ids come from a counter and are never reused, so the generation the
// kernel sees is always 0.
//
// Thread safety: all methods are safe to call concurrently; one mutex guards
// the whole table. No method calls out of the table (no FileSystem, no
// OpenFile) while holding it.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fuse/filesystem.h"
#include "util/mutex.h"

namespace goldcache::fuse {

using NodeId = uint64_t;
inline constexpr NodeId kRootNodeId = 1;  // == FUSE_ROOT_ID

// One kernel file handle (fi->fh of an open or create): owns the OpenFile.
//
// Read/write/fsync use `file` without locking: the kernel sends no request
// on a handle after its RELEASE. The mutex exists only so that a getattr of
// an unlinked file (which borrows any open handle of its node, see
// InodeTable::AnyHandle) never calls Stat() during or after Release().
struct FileHandle {
  FileHandle(NodeId node_id, std::unique_ptr<OpenFile> open_file, pid_t opener_process = 0)
      : node(node_id), file(std::move(open_file)), opener(opener_process) {}
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;

  const NodeId node;
  const std::unique_ptr<OpenFile> file;
  const pid_t opener;  // thread group that opened it (0: unknown)
  std::mutex release_mu;
  bool released = false;  // GUARDED_BY(release_mu)
};

class InodeTable {
 public:
  InodeTable();
  ~InodeTable();
  InodeTable(const InodeTable&) = delete;
  InodeTable& operator=(const InodeTable&) = delete;

  // Records that `name` in directory `parent` is the file described by `st`
  // and returns its node id with the lookup count raised by one. A name that
  // pointed at another node before (the file was replaced) is moved.
  // `versioned`: see Identity above.
  // REQUIRES: `parent` is a live node id.
  NodeId Lookup(NodeId parent, std::string_view name, const struct stat& st, bool versioned = false)
      EXCLUDES(mu_);

  // Like Lookup, but only for a file the kernel holds no reference to (no
  // node, or a node with lookup count 0); returns 0 and changes nothing
  // otherwise. For readdirplus, whose attributes come from an older snapshot.
  NodeId LookupIfUnknown(NodeId parent, std::string_view name, const struct stat& st,
                         bool versioned = false) EXCLUDES(mu_);

  // Whether `st`, a fresh stat of the node's path, describes the node's own
  // file: false when the name now names another file (replaced, renamed
  // over, or for a versioned node changed in place). True for nodes keyed
  // by name only and for unknown ids.
  bool Matches(NodeId node, const struct stat& st) const EXCLUDES(mu_);
  // Whether the node was looked up as a versioned file.
  bool Versioned(NodeId node) const EXCLUDES(mu_);

  // Lowers the lookup count of `node` by `nlookup` (FORGET / BATCH_FORGET).
  // Unknown ids are ignored.
  void Forget(NodeId node, uint64_t nlookup) EXCLUDES(mu_);

  // The node's path relative to the mount root ("" for the root), or nullopt
  // if the node is unknown or it or an ancestor was unlinked or removed.
  std::optional<std::string> Path(NodeId node) const EXCLUDES(mu_);
  // The node the kernel knows by `path` (relative to the mount root, "" for
  // the root), or nullopt when some component is unknown to the kernel.
  std::optional<NodeId> NodeOfPath(std::string_view path) const EXCLUDES(mu_);
  // Path(parent) + "/" + name, with the same nullopt cases.
  std::optional<std::string> ChildPath(NodeId parent, std::string_view name) const EXCLUDES(mu_);

  // After a successful unlink/rmdir (or an ENOENT lookup): `name` in `parent`
  // no longer names anything. The node stays valid until forgotten (an open
  // file keeps working through its handle) but has no path any more, unless
  // it has another hard-link name.
  void RemoveName(NodeId parent, std::string_view name) EXCLUDES(mu_);

  // After a successful rename(2): moves the node named `name` in `parent` to
  // `new_name` in `new_parent`. Without `exchange`, whatever the destination
  // named before loses that name; with `exchange` the two names swap.
  void Rename(NodeId parent, std::string_view name, NodeId new_parent, std::string_view new_name,
              bool exchange) EXCLUDES(mu_);

  // Open-handle registry, used to stat files that were unlinked while open.
  // The table owns registered handles. False if handle->node is unknown.
  [[nodiscard]] bool AddHandle(const std::shared_ptr<FileHandle>& handle) EXCLUDES(mu_);
  // Removes and returns the registered handle (null if unknown).
  std::shared_ptr<FileHandle> RemoveHandle(const FileHandle* handle) EXCLUDES(mu_);
  // Some open handle of `node`, or null.
  std::shared_ptr<FileHandle> AnyHandle(NodeId node) const EXCLUDES(mu_);

  // Introspection for tests and metrics.
  size_t size() const EXCLUDES(mu_);                      // live nodes, root included
  uint64_t LookupCount(NodeId node) const EXCLUDES(mu_);  // 0 for unknown nodes

 private:
  struct Inode;
  struct NameKey {
    NodeId parent;
    std::string name;
    bool operator==(const NameKey&) const = default;
  };
  struct NameKeyHash {
    size_t operator()(const NameKey& k) const;
  };
  struct FileKey {
    dev_t dev;
    ino_t ino;
    // Versioned files only (else 0): what makes another version.
    off_t size = 0;
    int64_t mtime_ns = 0;
    int64_t ctime_ns = 0;
    bool operator==(const FileKey&) const = default;
  };
  static FileKey KeyOf(const struct stat& st, bool versioned);
  struct FileKeyHash {
    size_t operator()(const FileKey& k) const;
  };

  NodeId LookupLocked(NodeId parent, std::string_view name, const struct stat& st, bool versioned,
                      bool only_if_unknown) REQUIRES(mu_);
  Inode* FindLocked(NodeId id) const REQUIRES(mu_);
  std::optional<std::string> PathLocked(const Inode* inode) const REQUIRES(mu_);
  void AddNameLocked(Inode* inode, Inode* parent, std::string_view name) REQUIRES(mu_);
  void RemoveNameLocked(Inode* inode, NodeId parent, std::string_view name) REQUIRES(mu_);
  void MaybeEraseLocked(Inode* inode) REQUIRES(mu_);

  // Guards the maps and every Inode in them.
  mutable Mutex mu_;
  NodeId next_id_ GUARDED_BY(mu_) = kRootNodeId + 1;
  std::unordered_map<NodeId, std::unique_ptr<Inode>> nodes_ GUARDED_BY(mu_);
  std::unordered_map<NameKey, Inode*, NameKeyHash> by_name_ GUARDED_BY(mu_);
  std::unordered_map<FileKey, Inode*, FileKeyHash> by_file_ GUARDED_BY(mu_);
};

}  // namespace goldcache::fuse
