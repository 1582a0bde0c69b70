#include "util/status.h"

#include <cstring>

namespace goldcache {

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "ok";
    case Code::kNotFound:
      return "not found";
    case Code::kExists:
      return "exists";
    case Code::kReadOnly:
      return "read-only";
    case Code::kNoSpace:
      return "no space";
    case Code::kIoError:
      return "io error";
    case Code::kTimedOut:
      return "timed out";
    case Code::kCorruption:
      return "corruption";
    case Code::kStale:
      return "stale";
    case Code::kInvalidArgument:
      return "invalid argument";
    case Code::kNotSupported:
      return "not supported";
    case Code::kOsError:
      return "os error";
    case Code::kAborted:
      return "aborted";
  }
  return "unknown";
}

Status Status::FromErrno(int err, std::string context) {
  Code code;
  switch (err) {
    case ENOENT:
      code = Code::kNotFound;
      break;
    case EEXIST:
      code = Code::kExists;
      break;
    case EROFS:
      code = Code::kReadOnly;
      break;
    case ENOSPC:
    case EDQUOT:
      code = Code::kNoSpace;
      break;
    case EIO:
      code = Code::kIoError;
      break;
    case ETIMEDOUT:
      code = Code::kTimedOut;
      break;
    case EINVAL:
      code = Code::kInvalidArgument;
      break;
    case ENOTSUP:
      code = Code::kNotSupported;
      break;
    default:
      code = Code::kOsError;
      break;
  }
  context += ": ";
  context += std::strerror(err);
  return Status(code, std::move(context), err);
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code_)) + ": " + msg_;
}

}  // namespace goldcache
