// FaultEnv: an Env for tests that fails chosen calls, holds them on a latch,
// writes short, or cuts the power. It wraps another Env (PosixEnv by
// default), so everything it lets through really happens on disk.
//
//   io::FaultEnv env;
//   auto latch = std::make_shared<io::Latch>();
//   env.Add({.op = io::Op::kWrite, .path_contains = "store.dat", .latch = latch});
//   ... a write of store.dat now waits; latch->WaitBlocked(...) says it
//   arrived; latch->Open() lets it (and every later one) go on.
//
// Power cut: PowerCut() makes every later call fail with EIO and undoes, on
// disk, every write that no successful Sync() of its file covered: those
// ranges are overwritten with a pattern, the worst a disk may keep of an
// interrupted write. (Creations, removals and truncations are not undone;
// the stores that use this create their files once and sync the directory.)
// The index's RocksDB adapter joins in through Check() and OnPowerCut().
//
// Thread safety: all methods are safe to call concurrently.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "io/file.h"

namespace goldcache::io {

enum class Op { kOpen, kRead, kWrite, kSync, kPunch, kTruncate, kRemove, kSyncDir };

// Calls that reach a closed latch wait there until it opens.
class Latch {
 public:
  void Open();
  bool is_open() const;
  // True once `n` calls are waiting (or have waited) on it; false after
  // `timeout` without that.
  bool WaitBlocked(std::chrono::milliseconds timeout, int n = 1);
  // Called by FaultEnv on the calling thread: returns once the latch is open.
  void Block();

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;  // GUARDED_BY(mu_)
  int arrived_ = 0;    // GUARDED_BY(mu_)
};

struct Fault {
  Op op = Op::kWrite;
  std::string path_contains;  // "" matches every file
  int skip = 0;               // let this many matching calls through first
  int count = -1;             // then act on this many (-1: every one)
  int error = 0;              // fail with this errno (0: do not fail)
  // A write writes its first half, then fails with `error` (ENOSPC if 0).
  // (The datastore's fault layer also reads short: backing/fault_backing.h.)
  bool short_write = false;
  // The call waits here first (then acts on error / short_write, if set).
  std::shared_ptr<Latch> latch;
};

class FaultEnv : public Env {
 public:
  explicit FaultEnv(Env& base = PosixEnv());
  ~FaultEnv() override;

  // Faults are checked in the order added; the first that matches acts.
  void Add(Fault fault);
  void Clear();
  // See "Power cut" above.
  void PowerCut();
  bool powered_off() const;
  // Calls of `op` seen so far (also those that failed).
  uint64_t calls(Op op) const;

  // For adapters of other file layers (the index's RocksDB one, the
  // datastore's): acts on a call as the faults say (may wait on a latch);
  // the error to fail it with.
  Status Check(Op op, const std::string& path);
  // The same, whole: what the matching fault says to do (error 0: go on).
  struct Action {
    int error = 0;
    bool short_write = false;
  };
  Action Decide(Op op, const std::string& path);
  // The Status a call failed by `err` gets: "injected: read PATH".
  static Status ErrorFor(Op op, const std::string& path, int err);
  // `fn` runs at PowerCut(), before it returns.
  void OnPowerCut(std::function<void()> fn);

  Result<std::unique_ptr<File>> Open(const std::string& path, bool create, bool truncate) override;
  Status Remove(const std::string& path) override;
  Status SyncDir(const std::string& dir) override;
  Result<struct statvfs> StatFs(const std::string& path) override;

 private:
  class FaultFile;
  void Register(FaultFile* f);
  void Unregister(FaultFile* f);

  Env& base_;
  mutable std::mutex mu_;
  struct Entry {
    Fault fault;
    int seen = 0;
    int acted = 0;
  };
  std::vector<Entry> faults_;                  // GUARDED_BY(mu_)
  std::map<Op, uint64_t> calls_;               // GUARDED_BY(mu_)
  bool powered_off_ = false;                   // GUARDED_BY(mu_)
  std::vector<FaultFile*> files_;              // GUARDED_BY(mu_)
  std::vector<std::function<void()>> on_cut_;  // GUARDED_BY(mu_)
};

}  // namespace goldcache::io
