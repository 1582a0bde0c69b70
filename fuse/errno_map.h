// The one place where a goldcache Status becomes an errno.
// Every FUSE reply that reports an error takes its value from ToErrno().
#pragma once

#include "util/status.h"

namespace goldcache::fuse {

// Returns the positive errno the kernel should see for `status`.
//
// The exact OS errno wins when the Status carries one (a datastore that said
// EACCES or ENOTEMPTY must say so to the desktop); otherwise the Code decides.
// The one exception: Code::kTimedOut is always EIO, even when built from
// ETIMEDOUT (docs/design.md §4, contract 6: a datastore timeout is a failed IO to the
// guest, which QEMU reports or retries, not a network error).
// Returns 0 for an ok Status. Thread-safe (pure function).
int ToErrno(const Status& status);

}  // namespace goldcache::fuse
