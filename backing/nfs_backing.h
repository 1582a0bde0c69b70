// A datastore reached over NFS from user space (libnfs), for hosts without a
// kernel NFS mount: `source = "nfs://filer/export/ds1?version=3"`.
//
// Connections: the Backing holds a pool of `connections` libnfs contexts, each
// its own TCP session and mount, all established by OpenNfsBacking. A libnfs
// context is single-threaded, so an operation borrows one free context for
// the duration of its RPCs; up to `connections` operations are in flight at
// once, and further callers wait (at most `timeout`) for one to come free.
//
// Open files: a BackingFile keeps the path it was opened with and one NFS file
// handle per context, opened lazily the first time a read or write on that
// file borrows that context (so concurrent reads of one template spread over
// every connection). A handle opened later is checked against the first one
// (same file id). A file replaced or removed on the datastore after it was
// opened (a template renamed over) fails calls with kStale: an open file
// never reads another file's bytes.
//
// Outages: every RPC is bounded by `timeout`. Past it the operation fails with
// Code::kTimedOut (the FUSE edge turns that into EIO, contract 6). libnfs
// reconnects by itself, so the next call after the filer comes back succeeds
// on the same Backing and the same open files; nothing needs re-opening.
// An operation that needs several RPCs (a large read, a long directory) can
// take longer while the filer keeps answering, never more than `timeout` after
// it stops. When more than `connections` callers wait during an outage, one
// may wait `timeout` for a connection and then `timeout` for its own RPC.
//
// Other errors carry the errno the NFS server reported (Status::FromErrno).
// Protocol limits, all reported as values: renames with flags and fallocate
// are kNotSupported; times are set with microsecond precision.
//
// Durability: writes are sent UNSTABLE (unless opened with O_SYNC/O_DSYNC);
// Sync() sends COMMIT. libnfs 4.0 does not compare write verifiers, so writes
// not yet committed when the filer crashes can be lost without an error; a
// filer restart that keeps its page cache (ganesha here) loses nothing.
//
// Thread safety: as backing.h; a Backing and its files are safe for concurrent
// use. Files keep the connection pool alive, so they may outlive the Backing.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "backing/backing.h"
#include "util/status.h"

namespace goldcache::backing {

struct NfsOptions {
  // Bound on each RPC; past it the operation fails with kTimedOut. libnfs 4.0
  // counts whole seconds, so this is rounded up to one. Must be positive.
  std::chrono::milliseconds timeout{30000};
  // Contexts (TCP sessions) in the pool = RPCs in flight. At least 1.
  unsigned connections = 4;
};

// True when `source` names an NFS datastore ("nfs://...").
bool IsNfsUrl(std::string_view source);

// Mounts `url` (libnfs syntax: nfs://host/export[/subdir][?nfsport=N&
// mountport=N&version=3&uid=N&gid=N...]) `options.connections` times.
// NFSv3 only: `version=4` is kNotSupported (libnfs 4.0's NFSv4 does not
// recover from a server restart). Fails with kInvalidArgument for a malformed
// URL or options, and with the mount's error (kIoError, kTimedOut, or what
// the server answered) when the datastore cannot be mounted; the message
// names the URL.
Result<std::unique_ptr<Backing>> OpenNfsBacking(const std::string& url,
                                                const NfsOptions& options = {});

}  // namespace goldcache::backing
