// Errors are values. A Status says what went wrong in goldcache's own words;
// errno is produced from it in exactly one place, the FUSE edge
// (fuse/errno_map.h). Functions that can fail return Status or Result<T> and
// are [[nodiscard]].
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace goldcache {

enum class Code {
  kOk = 0,
  kNotFound,         // no such file or chunk
  kExists,           // target already exists
  kReadOnly,         // the role forbids changing this file (template, nonpersistent base)
  kNoSpace,          // local space exhausted: overlay and read cache both full
  kIoError,          // the datastore or local store failed to do IO
  kTimedOut,         // the datastore did not answer within the configured time
  kCorruption,       // stored data failed its checksum
  kStale,            // the datastore file changed under an open handle (new generation)
  kInvalidArgument,  // bad input from a caller or a config
  kNotSupported,     // operation not offered for this file or role
  kOsError,          // any other OS error; os_errno() carries the exact value
  kAborted,          // the work was given up (a readahead no longer wanted, a stopped warm)
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(Code code, std::string msg, int os_errno = 0) {
    return Status(code, std::move(msg), os_errno);
  }
  // Maps an errno returned by the OS (from the datastore or the local store)
  // to a Status that keeps the exact errno for the FUSE edge.
  static Status FromErrno(int err, std::string context);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }
  // The errno the OS reported, when this Status came from one; 0 otherwise.
  int os_errno() const { return os_errno_; }
  std::string ToString() const;

 private:
  Status(Code code, std::string msg, int os_errno)
      : code_(code), msg_(std::move(msg)), os_errno_(os_errno) {}
  Code code_ = Code::kOk;
  std::string msg_;
  int os_errno_ = 0;
};

const char* CodeName(Code code);

// Result<T> holds either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  // REQUIRES: ok()
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  // The error; Status::Ok() when ok().
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace goldcache

// Returns early from the enclosing function when `expr` is not ok.
#define GC_RETURN_IF_ERROR(expr)         \
  do {                                   \
    ::goldcache::Status _gc_st = (expr); \
    if (!_gc_st.ok()) return _gc_st;     \
  } while (0)
