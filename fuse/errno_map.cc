#include "fuse/errno_map.h"

#include <cerrno>

namespace goldcache::fuse {

int ToErrno(const Status& status) {
  if (status.ok()) return 0;
  // Contract 6 outranks the exact errno: even a Status built from ETIMEDOUT
  // (e.g. an NFS RPC timeout) reaches the desktop as EIO.
  if (status.code() == Code::kTimedOut) return EIO;
  if (status.os_errno() > 0) return status.os_errno();
  switch (status.code()) {
    case Code::kOk:
      return 0;
    case Code::kNotFound:
      return ENOENT;
    case Code::kExists:
      return EEXIST;
    case Code::kReadOnly:
      return EROFS;
    case Code::kNoSpace:
      return ENOSPC;
    case Code::kInvalidArgument:
      return EINVAL;
    case Code::kNotSupported:
      return EOPNOTSUPP;
    case Code::kIoError:
    case Code::kTimedOut:
    case Code::kCorruption:
    case Code::kStale:
    case Code::kOsError:
    case Code::kAborted:
      return EIO;
  }
  return EIO;  // A Code added later without a mapping is still an error.
}

}  // namespace goldcache::fuse
