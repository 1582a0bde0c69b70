#include "fuse/errno_map.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace goldcache::fuse {
namespace {

TEST(ErrnoMapTest, OkIsZero) { EXPECT_EQ(ToErrno(Status::Ok()), 0); }

TEST(ErrnoMapTest, EachCodeWithoutOsErrnoHasItsErrno) {
  struct Case {
    Code code;
    int expected;
  };
  const Case cases[] = {
      {Code::kNotFound, ENOENT},         {Code::kExists, EEXIST}, {Code::kReadOnly, EROFS},
      {Code::kNoSpace, ENOSPC},          {Code::kIoError, EIO},   {Code::kTimedOut, EIO},
      {Code::kCorruption, EIO},          {Code::kStale, EIO},     {Code::kInvalidArgument, EINVAL},
      {Code::kNotSupported, EOPNOTSUPP}, {Code::kOsError, EIO},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ToErrno(Status::Error(c.code, "x")), c.expected) << CodeName(c.code);
  }
}

TEST(ErrnoMapTest, ExactOsErrnoReachesTheDesktop) {
  EXPECT_EQ(ToErrno(Status::FromErrno(EACCES, "open")), EACCES);
  EXPECT_EQ(ToErrno(Status::FromErrno(ENOTEMPTY, "rmdir")), ENOTEMPTY);
  EXPECT_EQ(ToErrno(Status::FromErrno(EDQUOT, "write")), EDQUOT);
  EXPECT_EQ(ToErrno(Status::Error(Code::kNoSpace, "overlay full", ENOSPC)), ENOSPC);
}

TEST(ErrnoMapTest, DatastoreTimeoutIsEioEvenFromEtimedout) {
  // docs/design.md §4, contract 6: a miss that waited too long fails with EIO.
  EXPECT_EQ(ToErrno(Status::FromErrno(ETIMEDOUT, "nfs read")), EIO);
  EXPECT_EQ(ToErrno(Status::Error(Code::kTimedOut, "chunk fetch")), EIO);
}

}  // namespace
}  // namespace goldcache::fuse
