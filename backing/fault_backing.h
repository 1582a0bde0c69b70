// A Backing decorator for tests that makes the datastore misbehave the way a
// filer does: a read that fails (a bad disk behind the filer, an NFS EIO), a
// read that comes back short (a file cut between the agent's stat and its
// read), a call that hangs (a server that stops answering one request), a
// write or a commit that fails (ENOSPC, EDQUOT on the filer).
//
// The faults are io::Fault rules kept by an io::FaultEnv (the same registry,
// matching, skip/count and latches as the local file layer's), matched on
// the datastore path:
//   io::Op::kOpen   Backing::Open and Backing::Create
//   io::Op::kRead   BackingFile::ReadAt and ReadAtVersioned; `short_write`
//                   makes the read return the first half of what it read,
//                   as a file that ended there
//   io::Op::kWrite  BackingFile::WriteAt; `short_write` writes the first half
//                   and fails
//   io::Op::kSync   BackingFile::Sync and BackingFile::Flush
// Everything else passes straight through, and so does every call no fault
// matches: the bytes come from the real datastore underneath.
//
//   io::FaultEnv faults;
//   auto ds = MakeFaultBacking(std::move(posix), faults);
//   faults.Add({.op = io::Op::kRead, .path_contains = "t.img", .count = 1, .error = EIO});
//
// Ownership: takes `inner`; `faults` must outlive the Backing and its files.
// Thread safety: as the inner Backing.
#pragma once

#include <memory>

#include "backing/backing.h"
#include "io/fault_env.h"

namespace goldcache::backing {

std::unique_ptr<Backing> MakeFaultBacking(std::unique_ptr<Backing> inner, io::FaultEnv& faults);

}  // namespace goldcache::backing
