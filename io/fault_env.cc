#include "io/fault_env.h"

#include <algorithm>
#include <cstring>

namespace goldcache::io {

void Latch::Open() {
  {
    std::lock_guard lock(mu_);
    open_ = true;
  }
  cv_.notify_all();
}

bool Latch::is_open() const {
  std::lock_guard lock(mu_);
  return open_;
}

bool Latch::WaitBlocked(std::chrono::milliseconds timeout, int n) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return arrived_ >= n; });
}

void Latch::Block() {
  std::unique_lock lock(mu_);
  ++arrived_;
  cv_.notify_all();
  cv_.wait(lock, [&] { return open_; });
}

// A file of the base Env whose calls FaultEnv decides on first, and whose
// unsynced writes it remembers for a power cut.
class FaultEnv::FaultFile final : public File {
 public:
  FaultFile(FaultEnv& env, std::unique_ptr<File> base) : env_(env), base_(std::move(base)) {
    env_.Register(this);
  }
  ~FaultFile() override { env_.Unregister(this); }

  Status Run(std::span<Request> requests) override {
    for (Request& r : requests) {
      const Op op = r.write ? Op::kWrite : Op::kRead;
      Action a = env_.Decide(op, path());
      if (a.short_write && r.write) {
        // Half of it reaches the disk: what a full disk or a pulled cable leaves.
        Request half = r;
        half.len = r.len / 2;
        if (half.len > 0) {
          Status st = base_->Run(std::span(&half, 1));
          if (st.ok()) Remember(half);
        }
        return ErrorFor(op, path(), a.error != 0 ? a.error : ENOSPC);
      }
      if (a.error != 0) return ErrorFor(op, path(), a.error);
      Status st = base_->Run(std::span(&r, 1));
      if (r.write) Remember(r);  // a failed write may still have reached the disk in part
      GC_RETURN_IF_ERROR(st);
    }
    return Status::Ok();
  }

  Status Sync() override {
    Action a = env_.Decide(Op::kSync, path());
    if (a.error != 0) return ErrorFor(Op::kSync, path(), a.error);
    std::vector<Request> covered;
    {
      std::lock_guard lock(mu_);
      covered = unsynced_;
    }
    GC_RETURN_IF_ERROR(base_->Sync());
    // Only what was written before the sync started is durable now.
    std::lock_guard lock(mu_);
    unsynced_.erase(unsynced_.begin(),
                    unsynced_.begin() + std::min(covered.size(), unsynced_.size()));
    return Status::Ok();
  }

  Status Punch(uint64_t offset, uint64_t length) override {
    Action a = env_.Decide(Op::kPunch, path());
    if (a.error != 0) return ErrorFor(Op::kPunch, path(), a.error);
    return base_->Punch(offset, length);
  }

  Status Truncate(uint64_t size) override {
    Action a = env_.Decide(Op::kTruncate, path());
    if (a.error != 0) return ErrorFor(Op::kTruncate, path(), a.error);
    return base_->Truncate(size);
  }

  const std::string& path() const override { return base_->path(); }

  // Overwrites every unsynced write with a pattern, through the base file.
  void UndoUnsynced() {
    std::vector<Request> ranges;
    {
      std::lock_guard lock(mu_);
      ranges.swap(unsynced_);
    }
    for (const Request& r : ranges) {
      std::vector<char> junk(r.len);
      for (size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>(0xA5 ^ (i * 31));
      Request w{r.offset, junk.data(), junk.size(), true};
      (void)base_->Run(std::span(&w, 1));
    }
    (void)base_->Sync();
  }

 private:
  void Remember(const Request& r) {
    std::lock_guard lock(mu_);
    unsynced_.push_back(Request{r.offset, nullptr, r.len, true});
  }

  FaultEnv& env_;
  const std::unique_ptr<File> base_;
  std::mutex mu_;
  std::vector<Request> unsynced_;  // GUARDED_BY(mu_): in write order
};

FaultEnv::FaultEnv(Env& base) : base_(base) {}

FaultEnv::~FaultEnv() = default;

void FaultEnv::Add(Fault fault) {
  std::lock_guard lock(mu_);
  faults_.push_back(Entry{std::move(fault)});
}

void FaultEnv::Clear() {
  std::lock_guard lock(mu_);
  faults_.clear();
}

bool FaultEnv::powered_off() const {
  std::lock_guard lock(mu_);
  return powered_off_;
}

uint64_t FaultEnv::calls(Op op) const {
  std::lock_guard lock(mu_);
  auto it = calls_.find(op);
  return it == calls_.end() ? 0 : it->second;
}

void FaultEnv::OnPowerCut(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  on_cut_.push_back(std::move(fn));
}

void FaultEnv::PowerCut() {
  std::vector<FaultFile*> files;
  std::vector<std::function<void()>> on_cut;
  {
    std::lock_guard lock(mu_);
    powered_off_ = true;
    files = files_;
    on_cut = on_cut_;
  }
  // Files stay registered until destroyed, and destruction waits for mu_:
  // holding it while undoing would deadlock with a concurrent close, so the
  // owners must not destroy files during PowerCut (tests call it from the
  // thread that owns the store, or with the store idle).
  for (FaultFile* f : files) f->UndoUnsynced();
  for (auto& fn : on_cut) fn();
}

FaultEnv::Action FaultEnv::Decide(Op op, const std::string& path) {
  std::shared_ptr<Latch> latch;
  Action action;
  {
    std::lock_guard lock(mu_);
    ++calls_[op];
    if (powered_off_) return Action{EIO, false};
    for (Entry& e : faults_) {
      const Fault& f = e.fault;
      if (f.op != op) continue;
      if (!f.path_contains.empty() && path.find(f.path_contains) == std::string::npos) continue;
      if (e.seen++ < f.skip) break;
      if (f.count >= 0 && e.acted >= f.count) continue;
      ++e.acted;
      latch = f.latch;
      action = Action{f.error, f.short_write};
      break;
    }
  }
  if (latch) latch->Block();
  if (powered_off()) return Action{EIO, false};
  return action;
}

Status FaultEnv::ErrorFor(Op op, const std::string& path, int err) {
  static const char* kNames[] = {"open",  "read",     "write",  "sync",
                                 "punch", "truncate", "remove", "sync dir"};
  return Status::FromErrno(err,
                           std::string("injected: ") + kNames[static_cast<int>(op)] + " " + path);
}

Status FaultEnv::Check(Op op, const std::string& path) {
  Action a = Decide(op, path);
  return a.error != 0 ? ErrorFor(op, path, a.error) : Status::Ok();
}

void FaultEnv::Register(FaultFile* f) {
  std::lock_guard lock(mu_);
  files_.push_back(f);
}

void FaultEnv::Unregister(FaultFile* f) {
  std::lock_guard lock(mu_);
  files_.erase(std::remove(files_.begin(), files_.end(), f), files_.end());
}

Result<std::unique_ptr<File>> FaultEnv::Open(const std::string& path, bool create, bool truncate) {
  Action a = Decide(Op::kOpen, path);
  if (a.error != 0) return ErrorFor(Op::kOpen, path, a.error);
  auto f = base_.Open(path, create, truncate);
  if (!f.ok()) return f.status();
  return std::unique_ptr<File>(new FaultFile(*this, std::move(f).value()));
}

Status FaultEnv::Remove(const std::string& path) {
  Action a = Decide(Op::kRemove, path);
  if (a.error != 0) return ErrorFor(Op::kRemove, path, a.error);
  return base_.Remove(path);
}

Status FaultEnv::SyncDir(const std::string& dir) {
  Action a = Decide(Op::kSyncDir, dir);
  if (a.error != 0) return ErrorFor(Op::kSyncDir, dir, a.error);
  return base_.SyncDir(dir);
}

Result<struct statvfs> FaultEnv::StatFs(const std::string& path) { return base_.StatFs(path); }

}  // namespace goldcache::io
