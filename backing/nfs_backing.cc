// The nfs:// datastore: libnfs's synchronous API over a fixed pool of
// contexts. See nfs_backing.h for the contract; this file is the how.
//
// Why a pool of contexts rather than libnfs's own multithreading: Debian's
// libnfs 4.0 is the synchronous-per-context kind; one context is one TCP
// session driven by whoever calls into it. Borrowing a whole context per
// operation keeps every libnfs call single-threaded and lets N operations run
// on N sessions.
//
// Every context is set up the same way:
//   - timeout: whole seconds (libnfs 4.0 counts no finer); an RPC past it is
//     failed by libnfs with -EINTR ("Command timed out" / "Command was
//     cancelled" when it gives up on the session), which is kTimedOut here;
//   - autoreconnect forever: after an outage the next call reconnects and
//     remounts by itself, bounded by the timeout like any RPC;
//   - no directory cache: other hosts change the datastore, and the FUSE
//     layer decides what to cache;
//   - umask 0: the mode a caller passes is the mode the file gets (the kernel
//     already applied the desktop's umask before the call reached us).

#include "backing/nfs_backing.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>  // libnfs.h uses struct timeval without including it

// clang-format off
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>      // rpc_nfs3_read_async: READs whose replies carry attributes
#include <nfsc/libnfs-raw-nfs.h>  // NF3REG... for directory entry types
// clang-format on

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "util/mutex.h"

namespace goldcache::backing {
namespace {

// Open flags reach libnfs by allow-list: the access mode, O_TRUNC (first open
// only), O_EXCL (Create), and O_SYNC for O_SYNC/O_DSYNC; always O_NOFOLLOW.
// What posix_backing.cc strips (O_DIRECT, O_APPEND, terminal and async flags)
// never gets there.

// Datastore path -> path inside the mounted export.
std::string NfsPath(const std::string& path) { return "/" + path; }

int TimeoutSeconds(std::chrono::milliseconds timeout) {
  return static_cast<int>(std::max<int64_t>(1, (timeout.count() + 999) / 1000));
}

struct timespec Timespec(uint64_t sec, uint64_t nsec) {
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(sec);
  ts.tv_nsec = static_cast<long>(nsec);
  return ts;
}

struct stat ToStat(const struct nfs_stat_64& s) {
  struct stat st = {};
  st.st_dev = s.nfs_dev;
  st.st_ino = s.nfs_ino;
  st.st_mode = static_cast<mode_t>(s.nfs_mode);  // libnfs includes the S_IFMT bits
  st.st_nlink = s.nfs_nlink;
  st.st_uid = static_cast<uid_t>(s.nfs_uid);
  st.st_gid = static_cast<gid_t>(s.nfs_gid);
  st.st_rdev = s.nfs_rdev;
  st.st_size = static_cast<off_t>(s.nfs_size);
  st.st_blksize = static_cast<blksize_t>(s.nfs_blksize);
  st.st_blocks = static_cast<blkcnt_t>(s.nfs_blocks);
  st.st_atim = Timespec(s.nfs_atime, s.nfs_atime_nsec);
  st.st_mtim = Timespec(s.nfs_mtime, s.nfs_mtime_nsec);
  st.st_ctim = Timespec(s.nfs_ctime, s.nfs_ctime_nsec);
  return st;
}

mode_t TypeBits(uint32_t type) {
  switch (type) {
    case NF3REG:
      return S_IFREG;
    case NF3DIR:
      return S_IFDIR;
    case NF3BLK:
      return S_IFBLK;
    case NF3CHR:
      return S_IFCHR;
    case NF3LNK:
      return S_IFLNK;
    case NF3SOCK:
      return S_IFSOCK;
    case NF3FIFO:
      return S_IFIFO;
  }
  return 0;
}

// READDIRPLUS brings each entry's attributes; false when the server left them out.
bool EntryStat(const struct nfsdirent& d, struct stat* st) {
  mode_t type = TypeBits(d.type);
  if (type == 0) return false;
  *st = {};
  st->st_dev = d.dev;
  st->st_ino = d.inode;
  st->st_mode = type | (d.mode & 07777);
  st->st_nlink = d.nlink;
  st->st_uid = d.uid;
  st->st_gid = d.gid;
  st->st_rdev = d.rdev;
  st->st_size = static_cast<off_t>(d.size);
  st->st_blksize = static_cast<blksize_t>(d.blksize);
  st->st_blocks = static_cast<blkcnt_t>(d.blocks);
  st->st_atim = Timespec(d.atime.tv_sec, d.atime_nsec);
  st->st_mtim = Timespec(d.mtime.tv_sec, d.mtime_nsec);
  st->st_ctim = Timespec(d.ctime.tv_sec, d.ctime_nsec);
  return true;
}

struct Settings {
  std::string url;
  NfsOptions options;
  uint64_t read_max = 0;   // bytes per READ RPC, as the server announced
  uint64_t write_max = 0;  // bytes per WRITE RPC
};

// The contexts, and who holds which. Shared by the Backing and its open files.
class Pool {
 public:
  // One borrowed context; returns it to the pool when destroyed.
  class Lease {
   public:
    Lease(Pool* pool, unsigned slot) : pool_(pool), slot_(slot) {}
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)), slot_(other.slot_) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (pool_ != nullptr) pool_->Release(slot_);
    }

    nfs_context* ctx() const { return pool_->contexts_[slot_]; }
    unsigned slot() const { return slot_; }

    // A Status for libnfs's negative errno `rc` of the call `what`.
    Status Error(int rc, const std::string& what) const {
      int err = -rc;
      const char* detail = nfs_get_error(ctx());
      std::string context = what;
      if (detail != nullptr && *detail != '\0') context += std::string(" (") + detail + ")";
      if (err == EINTR || err == ETIMEDOUT) {
        // libnfs's only EINTRs: an RPC that timed out or was cancelled with
        // its session. Either way the datastore did not answer in time.
        return Status::Error(Code::kTimedOut,
                             context + ": no answer from the datastore within " +
                                 std::to_string(TimeoutSeconds(pool_->settings_.options.timeout)) +
                                 " s",
                             ETIMEDOUT);
      }
      // NFS3ERR_STALE: the file behind the handle is gone, typically a
      // template replaced by rename on the datastore. That is kStale (a new
      // generation), which the cache layer knows how to handle.
      if (err == ESTALE) {
        return Status::Error(Code::kStale, context + ": the file changed on the datastore", ESTALE);
      }
      // EFAULT is how libnfs reports a broken RPC; to a desktop that is EIO.
      if (err == EFAULT || err <= 0) err = EIO;
      return Status::FromErrno(err, std::move(context));
    }

   private:
    Pool* pool_;
    unsigned slot_;
  };

  Pool(Settings settings, std::vector<nfs_context*> contexts)
      : settings_(std::move(settings)), contexts_(std::move(contexts)), retired_(contexts_.size()) {
    // LIFO: the most recently used (warm) sessions are taken first.
    for (unsigned i = contexts_.size(); i-- > 0;) free_.push_back(i);
  }

  ~Pool() {
    for (unsigned i = 0; i < contexts_.size(); ++i) {
      for (nfsfh* fh : retired_[i]) nfs_close(contexts_[i], fh);
      nfs_destroy_context(contexts_[i]);  // closes the session; no UMNT needed
    }
  }

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  const Settings& settings() const { return settings_; }
  unsigned size() const { return contexts_.size(); }

  // Waits up to the timeout for a free context. `what` names the operation
  // for the kTimedOut message.
  Result<Lease> Acquire(const std::string& what) EXCLUDES(mu_) {
    std::vector<nfsfh*> retired;
    unsigned slot;
    {
      MutexLock lock(mu_);
      if (!cv_.WaitFor(lock, settings_.options.timeout, [this] {
            mu_.AssertHeld();
            return !free_.empty();
          })) {
        return Status::Error(Code::kTimedOut,
                             what + ": all " + std::to_string(contexts_.size()) +
                                 " connections to the datastore stayed busy for " +
                                 std::to_string(settings_.options.timeout.count()) + " ms",
                             ETIMEDOUT);
      }
      slot = free_.back();
      free_.pop_back();
      retired.swap(retired_[slot]);
    }
    // Handles of files closed while this context was busy (no RPC for NFSv3).
    for (nfsfh* fh : retired) nfs_close(contexts_[slot], fh);
    return Lease(this, slot);
  }

  // Closes `fh`, opened on context `slot`, now if that context is free, else
  // when it is next borrowed. Never blocks on the network for the caller.
  void Retire(unsigned slot, nfsfh* fh) EXCLUDES(mu_) {
    {
      MutexLock lock(mu_);
      auto it = std::find(free_.begin(), free_.end(), slot);
      if (it == free_.end()) {
        retired_[slot].push_back(fh);
        return;
      }
      free_.erase(it);
    }
    nfs_close(contexts_[slot], fh);
    Release(slot);
  }

 private:
  void Release(unsigned slot) EXCLUDES(mu_) {
    {
      MutexLock lock(mu_);
      free_.push_back(slot);
    }
    cv_.NotifyOne();
  }

  const Settings settings_;
  const std::vector<nfs_context*> contexts_;  // fixed; contexts_[i] used by slot i's holder only

  Mutex mu_;
  CondVar cv_;
  std::vector<unsigned> free_ GUARDED_BY(mu_);
  std::vector<std::vector<nfsfh*>> retired_ GUARDED_BY(mu_);  // per slot
};

// What libnfs 4.0 keeps behind nfs_get_fh(): its own struct nfs_fh, not in
// its public headers. Used to send raw READs; the layout is checked for
// sense on every handle (an NFSv3 handle is 1 to 64 bytes), and a handle
// that fails the check is read with nfs_pread instead.
struct Libnfs40Fh {
  int len;
  char* val;
};

std::optional<nfs_fh3> RawHandle(nfsfh* fh) {
  auto* raw = reinterpret_cast<const Libnfs40Fh*>(nfs_get_fh(fh));
  if (raw == nullptr || raw->len <= 0 || raw->len > 64 || raw->val == nullptr) return std::nullopt;
  nfs_fh3 out;
  out.data.data_len = static_cast<u_int>(raw->len);
  out.data.data_val = raw->val;
  return out;
}

FileVersion VersionOf(const fattr3& a) {
  return FileVersion{a.size, int64_t{a.mtime.seconds} * 1'000'000'000 + a.mtime.nseconds,
                     int64_t{a.ctime.seconds} * 1'000'000'000 + a.ctime.nseconds, a.fileid};
}

// One pipelined read of a byte range: every READ of it in flight at once on
// one context, so that a 1 MiB chunk costs one round trip, not one per
// read_max (16 at a 64 KiB rsize).
struct PipelinedRead {
  struct Op {
    uint64_t offset;
    uint32_t count;
    char* dst;
  };
  std::vector<Op> queue;  // to send
  int in_flight = 0;
  int error = 0;  // first failure, as a positive errno
  bool timed_out = false;
  std::string message;         // of the first failure
  uint64_t eof_at = ~0ull;     // the server said end of file at this offset
  uint64_t low_short = ~0ull;  // lowest offset a READ came back short at (eof)
  std::optional<FileVersion> first_version;
  std::optional<FileVersion> version;  // the first one, or the first that differs from it
};

struct ReadCall {
  PipelinedRead* pr;
  PipelinedRead::Op op;
};

void OnRead(struct rpc_context* rpc, int status, void* data, void* private_data) {
  auto* call = static_cast<ReadCall*>(private_data);
  PipelinedRead& pr = *call->pr;
  const PipelinedRead::Op op = call->op;
  delete call;
  --pr.in_flight;
  if (status != RPC_STATUS_SUCCESS) {
    if (pr.error == 0) {
      pr.error = status == RPC_STATUS_TIMEOUT ? ETIMEDOUT : EIO;
      pr.timed_out = status == RPC_STATUS_TIMEOUT || status == RPC_STATUS_CANCEL;
      const char* e = rpc_get_error(rpc);
      pr.message = e != nullptr ? e : "RPC failed";
    }
    return;
  }
  auto* res = static_cast<READ3res*>(data);
  if (res->status != NFS3_OK) {
    if (pr.error == 0) {
      int e = res->status == NFS3ERR_STALE ? ESTALE : nfsstat3_to_errno(res->status);
      if (e < 0) e = -e;  // libnfs answers -errno
      pr.error = e != 0 ? e : EIO;
      pr.message = nfsstat3_to_str(res->status);
    }
    return;
  }
  const READ3resok& ok = res->READ3res_u.resok;
  if (ok.file_attributes.attributes_follow) {
    const FileVersion v = VersionOf(ok.file_attributes.post_op_attr_u.attributes);
    if (!pr.first_version) {
      pr.first_version = pr.version = v;
    } else if (!(v == *pr.first_version)) {
      pr.version = v;  // the file changed between two replies
    }
  }
  const uint32_t n = std::min<uint32_t>(op.count, ok.data.data_len);
  std::memcpy(op.dst, ok.data.data_val, n);
  if (n < op.count) {
    if (ok.eof) {
      pr.low_short = std::min(pr.low_short, op.offset + n);
    } else if (n == 0) {
      if (pr.error == 0) {
        pr.error = EIO;
        pr.message = "the server returned an empty READ before the end of the file";
      }
    } else {
      // A short READ is allowed before the end: ask for the rest.
      pr.queue.push_back({op.offset + n, op.count - n, op.dst + n});
    }
  }
}

class NfsFile final : public BackingFile {
 public:
  // `first` is the handle the open produced, on context `first_slot`; `fileid`
  // is that file's identity, checked for handles opened later.
  NfsFile(std::shared_ptr<Pool> pool, std::string nfs_path, int reopen_flags, bool writable,
          uint64_t fileid, unsigned first_slot, nfsfh* first, std::string name)
      : pool_(std::move(pool)),
        nfs_path_(std::move(nfs_path)),
        reopen_flags_(reopen_flags),
        writable_(writable),
        fileid_(fileid),
        name_(std::move(name)),
        handles_(pool_->size(), nullptr) {
    handles_[first_slot] = first;
  }

  ~NfsFile() override {
    for (unsigned i = 0; i < handles_.size(); ++i) {
      if (handles_[i] != nullptr) pool_->Retire(i, handles_[i]);
    }
  }

  Result<size_t> ReadAt(uint64_t offset, std::span<char> buf) override {
    std::optional<FileVersion> unused;
    return ReadAtVersioned(offset, buf, &unused);
  }

  // Every READ of the range goes out at once on one context; the replies'
  // post-op attributes say whether the file changed, for free.
  Result<size_t> ReadAtVersioned(uint64_t offset, std::span<char> buf,
                                 std::optional<FileVersion>* after) override {
    *after = std::nullopt;
    if (buf.empty()) return size_t{0};
    auto lease = pool_->Acquire("read " + name_);
    if (!lease.ok()) return lease.status();
    auto fh = Handle(*lease);
    if (!fh.ok()) return fh.status();
    std::optional<nfs_fh3> raw = RawHandle(*fh);
    if (!raw) return SerialRead(*lease, *fh, offset, buf);
    const uint64_t max = pool_->settings().read_max;
    PipelinedRead pr;
    for (uint64_t done = 0; done < buf.size(); done += max) {
      const auto count = static_cast<uint32_t>(std::min<uint64_t>(buf.size() - done, max));
      pr.queue.push_back({offset + done, count, buf.data() + done});
    }
    nfs_context* ctx = lease->ctx();
    rpc_context* rpc = nfs_get_rpc_context(ctx);
    for (;;) {
      while (!pr.queue.empty() && pr.error == 0) {
        PipelinedRead::Op op = pr.queue.back();
        pr.queue.pop_back();
        READ3args args;
        args.file = *raw;
        args.offset = op.offset;
        args.count = op.count;
        auto* call = new ReadCall{&pr, op};
        if (rpc_nfs3_read_async(rpc, OnRead, &args, call) != 0) {
          delete call;
          pr.error = EIO;
          pr.message = nfs_get_error(ctx);
          break;
        }
        ++pr.in_flight;
      }
      // Every call sent holds `pr`: wait for all of them, even after a
      // failure. Each has the RPC timeout, so this ends.
      if (pr.in_flight == 0) break;
      struct pollfd pfd {
        nfs_get_fd(ctx), static_cast<short>(nfs_which_events(ctx)), 0
      };
      // Wake up now and then even without events: libnfs times RPCs out in
      // nfs_service, as its own synchronous calls do.
      int rc = poll(&pfd, 1, 100);
      if (nfs_service(ctx, rc > 0 ? pfd.revents : 0) < 0 && pr.error == 0) {
        pr.error = EIO;
        pr.message = nfs_get_error(ctx);
      }
    }
    if (pr.error != 0) {
      if (pr.timed_out) {
        return Failed(*lease, -EINTR, "read");
      }
      return Failed(*lease, -pr.error, ("read: " + pr.message).c_str());
    }
    *after = pr.version;
    return static_cast<size_t>(std::min<uint64_t>(buf.size(), pr.low_short - offset));
  }

  Result<size_t> WriteAt(uint64_t offset, std::span<const char> buf) override {
    if (!writable_) {
      return Status::Error(Code::kReadOnly, "write " + name_ + ": opened read-only", EBADF);
    }
    if (buf.empty()) return size_t{0};
    auto lease = pool_->Acquire("write " + name_);
    if (!lease.ok()) return lease.status();
    auto fh = Handle(*lease);
    if (!fh.ok()) return fh.status();
    const uint64_t max = pool_->settings().write_max;
    size_t done = 0;
    while (done < buf.size()) {
      uint64_t count = std::min<uint64_t>(buf.size() - done, max);
      int rc = nfs_pwrite(lease->ctx(), *fh, offset + done, count, buf.data() + done);
      if (rc < 0) return Failed(*lease, rc, "write");
      // A server accepting 0 bytes of a non-empty write would loop forever.
      if (rc == 0) return Status::FromErrno(EIO, "write " + name_ + ": server wrote 0 bytes");
      done += static_cast<size_t>(rc);
    }
    return done;
  }

  Result<struct stat> Stat() override {
    auto lease = pool_->Acquire("fstat " + name_);
    if (!lease.ok()) return lease.status();
    auto fh = Handle(*lease);
    if (!fh.ok()) return fh.status();
    struct nfs_stat_64 st;
    int rc = nfs_fstat64(lease->ctx(), *fh, &st);
    if (rc < 0) return Failed(*lease, rc, "fstat");
    return ToStat(st);
  }

  // NFSv3 COMMIT covers data and metadata alike, so `datasync` changes nothing.
  Status Sync(bool datasync) override {
    auto lease = pool_->Acquire("fsync " + name_);
    if (!lease.ok()) return lease.status();
    auto fh = Handle(*lease);
    if (!fh.ok()) return fh.status();
    int rc = nfs_fsync(lease->ctx(), *fh);
    return rc < 0 ? Failed(*lease, rc, "fsync") : Status::Ok();
  }

  // Close-to-open consistency, as the kernel client gives it: unstable
  // writes are committed when a descriptor closes.
  Status Flush() override { return writable_ ? Sync(false) : Status::Ok(); }

  Status Truncate(uint64_t size) override {
    if (!writable_) {
      return Status::Error(Code::kReadOnly, "ftruncate " + name_ + ": opened read-only", EBADF);
    }
    auto lease = pool_->Acquire("ftruncate " + name_);
    if (!lease.ok()) return lease.status();
    auto fh = Handle(*lease);
    if (!fh.ok()) return fh.status();
    int rc = nfs_ftruncate(lease->ctx(), *fh, size);
    return rc < 0 ? Failed(*lease, rc, "ftruncate") : Status::Ok();
  }

  // NFSv3 has no ALLOCATE; an emulation by writing zeros would cost the filer
  // the very writes preallocation is meant to save.
  Status Allocate(int mode, uint64_t offset, uint64_t length) override {
    return Status::Error(Code::kNotSupported, "fallocate " + name_ + ": not offered over NFSv3",
                         EOPNOTSUPP);
  }

 private:
  // The Status for a failed call on this file. libnfs 4.0 reports
  // NFS3ERR_STALE (the file behind the handle was removed, e.g. a template
  // replaced by a rename on the datastore) as a bare EIO, so an EIO is
  // checked against the path: if it no longer names this file, the answer
  // is kStale, which callers treat as a new generation, not a broken disk.
  // One READ after another (nfs_pread), where raw READs cannot be sent.
  Result<size_t> SerialRead(const Pool::Lease& lease, nfsfh* fh, uint64_t offset,
                            std::span<char> buf) {
    const uint64_t max = pool_->settings().read_max;
    size_t done = 0;
    while (done < buf.size()) {
      uint64_t count = std::min<uint64_t>(buf.size() - done, max);
      int rc = nfs_pread(lease.ctx(), fh, offset + done, count, buf.data() + done);
      if (rc < 0) return Failed(lease, rc, "read");
      if (rc == 0) break;  // end of file
      done += static_cast<size_t>(rc);
    }
    return done;
  }

  Status Failed(const Pool::Lease& lease, int rc, const char* op) {
    Status status = lease.Error(rc, std::string(op) + " " + name_);
    if (status.os_errno() != EIO && status.code() != Code::kStale) return status;
    struct nfs_stat_64 st;
    int src = nfs_lstat64(lease.ctx(), nfs_path_.c_str(), &st);
    if (src == -ENOENT || (src == 0 && st.nfs_ino != fileid_)) {
      return Status::Error(Code::kStale,
                           std::string(op) + " " + name_ +
                               ": replaced or removed on the datastore since it was opened",
                           ESTALE);
    }
    return status;
  }

  // This file's handle on the lease's context, opened on first use there.
  Result<nfsfh*> Handle(const Pool::Lease& lease) {
    nfsfh*& fh = handles_[lease.slot()];  // only the lease holder touches this element
    if (fh != nullptr) return fh;
    nfsfh* opened = nullptr;
    int rc = nfs_open(lease.ctx(), nfs_path_.c_str(), reopen_flags_, &opened);
    if (rc == -ENOENT) {
      return Status::Error(Code::kStale, "reopen " + name_ + ": gone from the datastore", ESTALE);
    }
    if (rc < 0) return lease.Error(rc, "reopen " + name_);
    struct nfs_stat_64 st;
    rc = nfs_fstat64(lease.ctx(), opened, &st);
    if (rc < 0) {
      Status s = lease.Error(rc, "reopen " + name_);
      nfs_close(lease.ctx(), opened);
      return s;
    }
    if (st.nfs_ino != fileid_) {
      nfs_close(lease.ctx(), opened);
      return Status::Error(Code::kStale,
                           "reopen " + name_ + ": replaced on the datastore since it was opened",
                           ESTALE);
    }
    fh = opened;
    return fh;
  }

  const std::shared_ptr<Pool> pool_;
  const std::string nfs_path_;
  const int reopen_flags_;  // access mode, O_SYNC, O_NOFOLLOW: never O_TRUNC again
  const bool writable_;
  const uint64_t fileid_;
  const std::string name_;  // "\"<path>\" on nfs://...", for messages
  // handles_[i]: this file on context i, or null. Sized once; element i is
  // only read or written by the holder of context i's lease.
  std::vector<nfsfh*> handles_;
};

class NfsBacking final : public Backing {
 public:
  explicit NfsBacking(std::shared_ptr<Pool> pool) : pool_(std::move(pool)) {}

  Result<struct stat> Stat(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    return Call(
        path, "stat", [&](nfs_context * ctx) -> Result<struct stat> {
          struct nfs_stat_64 st;
          int rc = nfs_lstat64(ctx, NfsPath(path).c_str(), &st);
          if (rc < 0) return Status::FromErrno(-rc, "");  // replaced by Call's message
          return ToStat(st);
        });
  }

  Result<std::vector<DirEntry>> ReadDir(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    auto lease = pool_->Acquire("readdir " + Name(path));
    if (!lease.ok()) return lease.status();
    nfs_context* ctx = lease->ctx();
    struct nfsdir* dir = nullptr;
    // opendir reads the whole directory (READDIRPLUS, names with attributes).
    int rc = nfs_opendir(ctx, NfsPath(path).c_str(), &dir);
    if (rc < 0) return lease->Error(rc, "readdir " + Name(path));
    std::vector<DirEntry> entries;
    Status status;
    while (struct nfsdirent* d = nfs_readdir(ctx, dir)) {
      std::string_view name = d->name;
      if (name == "." || name == "..") continue;
      DirEntry entry;
      entry.name = d->name;
      if (!EntryStat(*d, &entry.st)) {
        std::string child = path.empty() ? entry.name : path + "/" + entry.name;
        struct nfs_stat_64 st;
        rc = nfs_lstat64(ctx, NfsPath(child).c_str(), &st);
        if (rc == -ENOENT) continue;  // removed since the listing: never listed
        if (rc < 0) {
          status = lease->Error(rc, "stat " + Name(child));
          break;
        }
        entry.st = ToStat(st);
      }
      entries.push_back(std::move(entry));
    }
    nfs_closedir(ctx, dir);
    if (!status.ok()) return status;
    return entries;
  }

  Result<std::string> ReadLink(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    return Call(path, "readlink", [&](nfs_context* ctx) -> Result<std::string> {
      char* target = nullptr;
      int rc = nfs_readlink2(ctx, NfsPath(path).c_str(), &target);
      if (rc < 0) return Status::FromErrno(-rc, "");
      std::string out = target != nullptr ? target : "";
      std::free(target);
      return out;
    });
  }

  Result<std::unique_ptr<BackingFile>> Open(const std::string& path, int flags) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    const int reopen = (flags & O_ACCMODE) | SyncFlag(flags) | O_NOFOLLOW;
    const int first = reopen | (flags & O_TRUNC);
    return OpenFile("open", path, first, reopen, [&](nfs_context* ctx, nfsfh** fh) {
      return nfs_open(ctx, NfsPath(path).c_str(), first, fh);
    });
  }

  Result<std::unique_ptr<BackingFile>> Create(const std::string& path, int flags,
                                              mode_t mode) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    if (path.empty()) return Status::FromErrno(EISDIR, "create " + Name(path));
    const int reopen = (flags & O_ACCMODE) | SyncFlag(flags) | O_NOFOLLOW;
    const int first = (flags & O_ACCMODE) | SyncFlag(flags) | (flags & (O_EXCL | O_TRUNC));
    return OpenFile("create", path, first, reopen, [&](nfs_context* ctx, nfsfh** fh) {
      return nfs_create(ctx, NfsPath(path).c_str(), first, static_cast<int>(mode & 07777), fh);
    });
  }

  Status Mkdir(const std::string& path, mode_t mode) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    return Simple(path, "mkdir", [&](nfs_context* ctx) {
      return nfs_mkdir2(ctx, NfsPath(path).c_str(), static_cast<int>(mode & 07777));
    });
  }

  Status Unlink(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    return Simple(path, "unlink",
                  [&](nfs_context* ctx) { return nfs_unlink(ctx, NfsPath(path).c_str()); });
  }

  Status Rmdir(const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    return Simple(path, "rmdir",
                  [&](nfs_context* ctx) { return nfs_rmdir(ctx, NfsPath(path).c_str()); });
  }

  Status Rename(const std::string& from, const std::string& to, unsigned flags) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(from));
    GC_RETURN_IF_ERROR(CheckDatastorePath(to));
    if (flags != 0) {
      // NFS RENAME always replaces; RENAME_NOREPLACE could only be emulated
      // with a lookup that races with other hosts. EINVAL is what Linux file
      // systems without renameat2 flags answer.
      return Status::Error(Code::kNotSupported,
                           "rename " + Name(from) + " with flags " + std::to_string(flags) +
                               ": not offered over NFS",
                           EINVAL);
    }
    return Simple(from + "\" -> \"" + to, "rename", [&](nfs_context* ctx) {
      return nfs_rename(ctx, NfsPath(from).c_str(), NfsPath(to).c_str());
    });
  }

  Status Symlink(const std::string& target, const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    // `target` is the link's content, stored verbatim.
    return Simple(path, "symlink", [&](nfs_context* ctx) {
      return nfs_symlink(ctx, target.c_str(), NfsPath(path).c_str());
    });
  }

  Status Link(const std::string& existing, const std::string& path) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(existing));
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    return Simple(existing + "\" -> \"" + path, "link", [&](nfs_context* ctx) {
      return nfs_link(ctx, NfsPath(existing).c_str(), NfsPath(path).c_str());
    });
  }

  Status Truncate(const std::string& path, uint64_t size) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    // Through an O_NOFOLLOW open, so a symlink is never truncated through.
    return Simple(path, "truncate", [&](nfs_context* ctx) {
      nfsfh* fh = nullptr;
      int rc = nfs_open(ctx, NfsPath(path).c_str(), O_WRONLY | O_NOFOLLOW, &fh);
      if (rc < 0) return rc;
      rc = nfs_ftruncate(ctx, fh, size);
      nfs_close(ctx, fh);
      return rc;
    });
  }

  Status Chmod(const std::string& path, mode_t mode) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    return Simple(path, "chmod", [&](nfs_context* ctx) {
      return nfs_lchmod(ctx, NfsPath(path).c_str(), static_cast<int>(mode & 07777));
    });
  }

  Status Chown(const std::string& path, uid_t uid, gid_t gid) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    // (uid_t)-1 / (gid_t)-1 become -1: "leave unchanged" to libnfs as to chown(2).
    return Simple(path, "chown", [&](nfs_context* ctx) {
      return nfs_lchown(ctx, NfsPath(path).c_str(), static_cast<int>(uid), static_cast<int>(gid));
    });
  }

  Status Utimens(const std::string& path, const struct timespec times[2]) override {
    GC_RETURN_IF_ERROR(CheckDatastorePath(path));
    bool omit[2] = {times[0].tv_nsec == UTIME_OMIT, times[1].tv_nsec == UTIME_OMIT};
    bool now[2] = {times[0].tv_nsec == UTIME_NOW, times[1].tv_nsec == UTIME_NOW};
    if (omit[0] && omit[1]) return Status::Ok();
    return Simple(path, "utimens", [&](nfs_context* ctx) {
      const std::string p = NfsPath(path);
      // Both "now": the server's clock, in one SETATTR.
      if (now[0] && now[1]) return nfs_lutimes(ctx, p.c_str(), nullptr);
      // libnfs sets both times or neither: an omitted one is re-set to what
      // the server has now (a concurrent change to it in between is lost).
      struct nfs_stat_64 st = {};
      if (omit[0] || omit[1]) {
        int rc = nfs_lstat64(ctx, p.c_str(), &st);
        if (rc < 0) return rc;
      }
      struct timeval wall;
      gettimeofday(&wall, nullptr);
      struct timeval tv[2];
      const uint64_t old_sec[2] = {st.nfs_atime, st.nfs_mtime};
      const uint64_t old_nsec[2] = {st.nfs_atime_nsec, st.nfs_mtime_nsec};
      for (int i = 0; i < 2; ++i) {
        if (omit[i]) {
          tv[i].tv_sec = static_cast<time_t>(old_sec[i]);
          tv[i].tv_usec = static_cast<suseconds_t>(old_nsec[i] / 1000);
        } else if (now[i]) {
          tv[i] = wall;
        } else {
          tv[i].tv_sec = times[i].tv_sec;
          tv[i].tv_usec = static_cast<suseconds_t>(times[i].tv_nsec / 1000);
        }
      }
      return nfs_lutimes(ctx, p.c_str(), tv);
    });
  }

  Result<struct statvfs> StatFs() override {
    auto lease = pool_->Acquire("statfs " + Describe());
    if (!lease.ok()) return lease.status();
    struct nfs_statvfs_64 s;
    int rc = nfs_statvfs64(lease->ctx(), "/", &s);
    if (rc < 0) return lease->Error(rc, "statfs " + Describe());
    struct statvfs st = {};
    st.f_bsize = s.f_bsize;
    st.f_frsize = s.f_frsize;
    st.f_blocks = s.f_blocks;
    st.f_bfree = s.f_bfree;
    st.f_bavail = s.f_bavail;
    st.f_files = s.f_files;
    st.f_ffree = s.f_ffree;
    st.f_favail = s.f_favail;
    st.f_fsid = s.f_fsid;
    st.f_flag = s.f_flag;
    st.f_namemax = s.f_namemax;
    return st;
  }

  std::string Describe() const override { return pool_->settings().url; }

 private:
  static int SyncFlag(int flags) { return (flags & (O_SYNC | O_DSYNC)) ? O_SYNC : 0; }

  std::string Name(const std::string& path) const { return "\"" + path + "\" on " + Describe(); }

  // Runs `fn(ctx)` -> libnfs rc on a borrowed context; maps a failure.
  template <typename Fn>
  Status Simple(const std::string& path, const char* op, Fn&& fn) {
    std::string what = std::string(op) + " " + Name(path);
    auto lease = pool_->Acquire(what);
    if (!lease.ok()) return lease.status();
    int rc = fn(lease->ctx());
    return rc < 0 ? lease->Error(rc, what) : Status::Ok();
  }

  // Runs `fn(ctx)` -> Result<T>; a failed Result's os_errno is libnfs's errno.
  template <typename Fn>
  auto Call(const std::string& path, const char* op, Fn&& fn) -> decltype(fn(nullptr)) {
    std::string what = std::string(op) + " " + Name(path);
    auto lease = pool_->Acquire(what);
    if (!lease.ok()) return lease.status();
    auto result = fn(lease->ctx());
    if (!result.ok()) return lease->Error(-result.status().os_errno(), what);
    return result;
  }

  template <typename OpenFn>
  Result<std::unique_ptr<BackingFile>> OpenFile(const char* op, const std::string& path,
                                                int first_flags, int reopen_flags, OpenFn&& open) {
    std::string what = std::string(op) + " " + Name(path);
    auto lease = pool_->Acquire(what);
    if (!lease.ok()) return lease.status();
    nfs_context* ctx = lease->ctx();
    nfsfh* fh = nullptr;
    int rc = open(ctx, &fh);
    if (rc < 0) return lease->Error(rc, what);
    struct nfs_stat_64 st;
    rc = nfs_fstat64(ctx, fh, &st);
    if (rc < 0) {
      Status s = lease->Error(rc, what);
      nfs_close(ctx, fh);
      return s;
    }
    bool writable = (first_flags & O_ACCMODE) != O_RDONLY;
    return std::unique_ptr<BackingFile>(std::make_unique<NfsFile>(
        pool_, NfsPath(path), reopen_flags, writable, st.nfs_ino, lease->slot(), fh, Name(path)));
  }

  const std::shared_ptr<Pool> pool_;
};

// A context set up as the top of this file says, mounted on `url`.
Result<nfs_context*> Connect(const std::string& url, int timeout_s) {
  nfs_context* ctx = nfs_init_context();
  if (ctx == nullptr) return Status::FromErrno(ENOMEM, "nfs_init_context for " + url);
  // The URL's query options (ports, version, uid...) are applied to ctx here.
  struct nfs_url* parsed = nfs_parse_url_dir(ctx, url.c_str());
  if (parsed == nullptr) {
    Status s = Status::Error(Code::kInvalidArgument,
                             "datastore URL \"" + url + "\": " + nfs_get_error(ctx), EINVAL);
    nfs_destroy_context(ctx);
    return s;
  }
  nfs_set_timeout(ctx, timeout_s * 1000);
  nfs_set_autoreconnect(ctx, -1);
  nfs_set_dircache(ctx, 0);
  nfs_umask(ctx, 0);
  int rc = nfs_mount(ctx, parsed->server, parsed->path);
  nfs_destroy_url(parsed);
  if (rc < 0) {
    int err = -rc;
    std::string what = "mount " + url + " (" + nfs_get_error(ctx) + ")";
    nfs_destroy_context(ctx);
    if (err == EINTR || err == ETIMEDOUT) {
      return Status::Error(Code::kTimedOut,
                           what + ": no answer within " + std::to_string(timeout_s) + " s",
                           ETIMEDOUT);
    }
    return Status::FromErrno(err == EFAULT || err <= 0 ? EIO : err, std::move(what));
  }
  return ctx;
}

// The value of `key` in the URL's query ("" when absent).
std::string QueryValue(const std::string& url, std::string_view key) {
  size_t q = url.find('?');
  while (q != std::string::npos) {
    size_t start = q + 1;
    size_t end = url.find('&', start);
    std::string_view param(url.data() + start,
                           (end == std::string::npos ? url.size() : end) - start);
    if (param.size() > key.size() && param.starts_with(key) && param[key.size()] == '=') {
      return std::string(param.substr(key.size() + 1));
    }
    q = end;
  }
  return "";
}

}  // namespace

bool IsNfsUrl(std::string_view source) { return source.starts_with("nfs://"); }

Result<std::unique_ptr<Backing>> OpenNfsBacking(const std::string& url, const NfsOptions& options) {
  if (!IsNfsUrl(url)) {
    return Status::Error(Code::kInvalidArgument, "datastore URL \"" + url + "\" is not nfs://",
                         EINVAL);
  }
  if (options.timeout.count() <= 0 || options.connections == 0) {
    return Status::Error(Code::kInvalidArgument,
                         "NFS options for " + url + ": timeout and connections must be positive",
                         EINVAL);
  }
  // libnfs 4.0 says of its own NFSv4 "not yet functional", and against
  // ganesha it shows: no recovery after a server restart (every call then
  // fails with EIO), 1 MiB writes fail to encode, READDIR without file ids,
  // and contexts of one process share an NFSv4 client name unless set (each
  // new one then expires the others' opens; nfs4_set_client_name leaks).
  // Contract 6 needs the recovery, so only NFSv3 is offered.
  const std::string version = QueryValue(url, "version");
  if (!version.empty() && version != "3") {
    return Status::Error(Code::kNotSupported,
                         "datastore URL \"" + url + "\": NFS version " + version +
                             " is not supported through libnfs 4.0; use version=3",
                         EPROTONOSUPPORT);
  }
  Settings settings;
  settings.url = url;
  settings.options = options;
  const int timeout_s = TimeoutSeconds(options.timeout);
  std::vector<nfs_context*> contexts;
  for (unsigned i = 0; i < options.connections; ++i) {
    auto ctx = Connect(url, timeout_s);
    if (!ctx.ok()) {
      for (nfs_context* c : contexts) nfs_destroy_context(c);
      return ctx.status();
    }
    contexts.push_back(*ctx);
  }
  // One server: every context agrees; the floor guards against a server
  // announcing 0 (libnfs would then split nothing).
  settings.read_max = std::max<uint64_t>(4096, nfs_get_readmax(contexts.front()));
  settings.write_max = std::max<uint64_t>(4096, nfs_get_writemax(contexts.front()));
  auto pool = std::make_shared<Pool>(std::move(settings), std::move(contexts));
  return std::unique_ptr<Backing>(std::make_unique<NfsBacking>(std::move(pool)));
}

}  // namespace goldcache::backing
