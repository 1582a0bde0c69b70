// Adapter: the libfuse3 low-level operations, translating each kernel request
// into one FileSystem/OpenFile call. Internal to fuse/; Mount owns it.
//
// Every handler ends in exactly one fuse_reply_*; errors are
// fuse_reply_err(req, ToErrno(status)). Handlers run on many libfuse worker
// threads at once; the Adapter's own state is the InodeTable (internally
// locked) and per-handle objects that the kernel never uses concurrently
// with their release.
#pragma once

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <atomic>
#include <cstddef>

#include "fuse/filesystem.h"
#include "fuse/inode_table.h"

namespace goldcache::fuse {

// Largest read or write the kernel sends in one request (1 MiB: one chunk-
// sized IO from QEMU is one FUSE request). Also the max_read mount option.
inline constexpr unsigned kMaxRequestBytes = 1u << 20;

struct AdapterOptions {
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
  unsigned max_background = 64;  // async (readahead, AIO direct IO) requests in flight
};

class Adapter : public KernelCache {
 public:
  // `fs` must outlive the Adapter.
  Adapter(FileSystem& fs, const AdapterOptions& options);
  Adapter(const Adapter&) = delete;
  Adapter& operator=(const Adapter&) = delete;

  // The operation table to give fuse_session_new() with `this` as userdata.
  static const fuse_lowlevel_ops& Ops();

  // Asks the session loop to stop: the next STATFS reply (Mount sends one to
  // wake a worker) ends the session. See Mount::Exit for why.
  void RequestExit(fuse_session* session) {
    exit_session_.store(session, std::memory_order_release);
  }

  const InodeTable& inodes() const { return inodes_; }

  // The session notifications go to; set by Mount once it exists.
  void SetSession(fuse_session* session) { session_.store(session, std::memory_order_release); }
  void InvalidateFile(const std::string& path) override;

 private:
  static Adapter& Self(fuse_req_t req);
  // `path` is the entry's own (parent's path + name).
  void ReplyEntry(fuse_req_t req, NodeId parent, const char* name, const std::string& path,
                  struct stat st);

  static void Init(void* userdata, fuse_conn_info* conn);
  static void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  static void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
  static void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets);
  static void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                      fuse_file_info* fi);
  static void ReadLink(fuse_req_t req, fuse_ino_t ino);
  static void Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
  static void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name);
  static void Rmdir(fuse_req_t req, fuse_ino_t parent, const char* name);
  static void Symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name);
  static void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
                     const char* new_name, unsigned int flags);
  static void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char* new_name);
  static void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  static void Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
                    fuse_file_info* fi);
  static void Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void Fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi);
  static void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
  static void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                          fuse_file_info* fi);
  static void ReleaseDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void StatFs(fuse_req_t req, fuse_ino_t ino);
  static void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                     fuse_file_info* fi);
  static void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                        fuse_file_info* fi);

  void DoReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                 bool plus);
  // Hands a new OpenFile to the kernel as fi->fh and replies (open or create,
  // with `entry`). False if the kernel did not take the handle (request
  // interrupted, or the node is unknown); the file has then been released.
  bool ReplyOpen(fuse_req_t req, NodeId node, std::unique_ptr<OpenFile> file, fuse_file_info* fi,
                 const fuse_entry_param* entry);
  void ReleaseHandle(FileHandle* handle);
  // Stat of a node without a path (unlinked while open): through any handle.
  Result<struct stat> StatDetached(NodeId node);

  FileSystem& fs_;
  const AdapterOptions options_;
  InodeTable inodes_;
  std::atomic<fuse_session*> exit_session_{nullptr};
  std::atomic<fuse_session*> session_{nullptr};
};

}  // namespace goldcache::fuse
