#include "fuse/inode_table.h"

#include <gtest/gtest.h>

namespace goldcache::fuse {
namespace {

struct stat FileStat(ino_t ino, mode_t type = S_IFREG) {
  struct stat st {};
  st.st_dev = 7;
  st.st_ino = ino;
  st.st_mode = type | 0644;
  return st;
}

TEST(InodeTableTest, RootIsTheEmptyPath) {
  InodeTable t;
  EXPECT_EQ(t.Path(kRootNodeId), "");
  EXPECT_EQ(t.ChildPath(kRootNodeId, "a"), "a");
}

TEST(InodeTableTest, RepeatedLookupsOfOneFileShareANodeAndCount) {
  InodeTable t;
  NodeId a = t.Lookup(kRootNodeId, "a", FileStat(10));
  EXPECT_NE(a, kRootNodeId);
  EXPECT_EQ(t.Lookup(kRootNodeId, "a", FileStat(10)), a);
  EXPECT_EQ(t.LookupCount(a), 2u);
  t.Forget(a, 1);
  EXPECT_EQ(t.Path(a), "a");
  t.Forget(a, 1);
  EXPECT_EQ(t.Path(a), std::nullopt);
  EXPECT_EQ(t.size(), 1u);
}

TEST(InodeTableTest, HardLinksShareANodeAndSurviveUnlinkOfOneName) {
  InodeTable t;
  NodeId a = t.Lookup(kRootNodeId, "a", FileStat(10));
  NodeId b = t.Lookup(kRootNodeId, "b", FileStat(10));
  EXPECT_EQ(a, b);
  t.RemoveName(kRootNodeId, "b");
  EXPECT_EQ(t.Path(a), "a");
  t.RemoveName(kRootNodeId, "a");
  EXPECT_EQ(t.Path(a), std::nullopt);  // detached, still known until forgotten
  EXPECT_EQ(t.LookupCount(a), 2u);
}

TEST(InodeTableTest, DirectoryRenameMovesDescendants) {
  InodeTable t;
  NodeId dir = t.Lookup(kRootNodeId, "d", FileStat(1, S_IFDIR));
  NodeId sub = t.Lookup(dir, "s", FileStat(2, S_IFDIR));
  NodeId file = t.Lookup(sub, "f", FileStat(3));
  EXPECT_EQ(t.Path(file), "d/s/f");
  t.Rename(kRootNodeId, "d", kRootNodeId, "e", /*exchange=*/false);
  EXPECT_EQ(t.Path(file), "e/s/f");
  EXPECT_EQ(t.ChildPath(sub, "g"), "e/s/g");
}

TEST(InodeTableTest, RenameOverAnExistingNameDetachesTheVictim) {
  InodeTable t;
  NodeId a = t.Lookup(kRootNodeId, "a", FileStat(1));
  NodeId b = t.Lookup(kRootNodeId, "b", FileStat(2));
  t.Rename(kRootNodeId, "a", kRootNodeId, "b", false);
  EXPECT_EQ(t.Path(a), "b");
  EXPECT_EQ(t.Path(b), std::nullopt);
}

TEST(InodeTableTest, RenameExchangeSwapsNames) {
  InodeTable t;
  NodeId a = t.Lookup(kRootNodeId, "a", FileStat(1));
  NodeId b = t.Lookup(kRootNodeId, "b", FileStat(2));
  t.Rename(kRootNodeId, "a", kRootNodeId, "b", true);
  EXPECT_EQ(t.Path(a), "b");
  EXPECT_EQ(t.Path(b), "a");
}

TEST(InodeTableTest, ParentStaysWhileAChildIsKnown) {
  InodeTable t;
  NodeId dir = t.Lookup(kRootNodeId, "d", FileStat(1, S_IFDIR));
  NodeId file = t.Lookup(dir, "f", FileStat(2));
  t.Forget(dir, 1);  // the kernel may forget a parent before the child's dentry
  EXPECT_EQ(t.Path(file), "d/f");
  t.Forget(file, 1);
  EXPECT_EQ(t.size(), 1u);  // both gone, in cascade
}

TEST(InodeTableTest, ReusedInodeNumberAfterUnlinkIsANewNode) {
  InodeTable t;
  NodeId old_node = t.Lookup(kRootNodeId, "a", FileStat(5));
  t.RemoveName(kRootNodeId, "a");
  NodeId new_node = t.Lookup(kRootNodeId, "b", FileStat(5));
  EXPECT_NE(new_node, old_node);
  EXPECT_EQ(t.Path(new_node), "b");
}

TEST(InodeTableTest, NameThatNowHoldsAnotherFileMovesToIt) {
  InodeTable t;
  NodeId first = t.Lookup(kRootNodeId, "a", FileStat(5));
  NodeId second = t.Lookup(kRootNodeId, "a", FileStat(6));  // replaced out of band
  EXPECT_NE(first, second);
  EXPECT_EQ(t.Path(second), "a");
  EXPECT_EQ(t.Path(first), std::nullopt);
}

// A template changed in place on the datastore (same inode, new size or
// times) is another file for the kernel: new lookups get a new node, the
// old node loses the name and keeps answering for its open handles.
TEST(InodeTableTest, AVersionedFileChangedInPlaceIsANewNode) {
  InodeTable t;
  struct stat v1 = FileStat(5);
  v1.st_size = 4096;
  v1.st_mtim = {100, 0};
  NodeId old_node = t.Lookup(kRootNodeId, "t.img", v1, /*versioned=*/true);
  EXPECT_TRUE(t.Versioned(old_node));
  EXPECT_TRUE(t.Matches(old_node, v1));
  struct stat v2 = v1;
  v2.st_size = 2048;  // truncated in place
  EXPECT_FALSE(t.Matches(old_node, v2));
  NodeId new_node = t.Lookup(kRootNodeId, "t.img", v2, /*versioned=*/true);
  EXPECT_NE(new_node, old_node);
  EXPECT_EQ(t.Path(new_node), "t.img");
  EXPECT_EQ(t.Path(old_node), std::nullopt);
  struct stat v3 = v2;
  v3.st_ctim = {200, 0};  // renamed or chmod-ed: ctime moves
  EXPECT_FALSE(t.Matches(new_node, v3));
  // The same file looked up again is the same node.
  EXPECT_EQ(t.Lookup(kRootNodeId, "t.img", v2, /*versioned=*/true), new_node);
}

// Unversioned files (desktops, passthrough) keep one node whatever their
// size or times do; only another inode at the name is another file.
TEST(InodeTableTest, AnUnversionedFileKeepsItsNodeThroughChanges) {
  InodeTable t;
  struct stat st = FileStat(5);
  NodeId node = t.Lookup(kRootNodeId, "d.img", st);
  EXPECT_FALSE(t.Versioned(node));
  st.st_size = 1 << 20;
  st.st_mtim = {300, 0};
  EXPECT_TRUE(t.Matches(node, st));
  EXPECT_EQ(t.Lookup(kRootNodeId, "d.img", st), node);
  EXPECT_FALSE(t.Matches(node, FileStat(6)));
  // A directory is never versioned: its times change with every entry.
  struct stat dir = FileStat(9, S_IFDIR);
  NodeId d = t.Lookup(kRootNodeId, "templates", dir, /*versioned=*/true);
  EXPECT_FALSE(t.Versioned(d));
  dir.st_mtim = {400, 0};
  EXPECT_EQ(t.Lookup(kRootNodeId, "templates", dir, /*versioned=*/true), d);
}

TEST(InodeTableTest, TypeChangeIsANewNode) {
  InodeTable t;
  NodeId file = t.Lookup(kRootNodeId, "a", FileStat(5));
  NodeId dir = t.Lookup(kRootNodeId, "a", FileStat(5, S_IFDIR));
  EXPECT_NE(file, dir);
}

TEST(InodeTableTest, FilesWithoutInodeNumbersAreKeyedByName) {
  InodeTable t;
  NodeId a = t.Lookup(kRootNodeId, "a", FileStat(0));
  EXPECT_EQ(t.Lookup(kRootNodeId, "a", FileStat(0)), a);
  EXPECT_NE(t.Lookup(kRootNodeId, "b", FileStat(0)), a);
}

TEST(InodeTableTest, LookupIfUnknownSkipsNodesTheKernelHolds) {
  InodeTable t;
  NodeId a = t.Lookup(kRootNodeId, "a", FileStat(1));
  EXPECT_EQ(t.LookupIfUnknown(kRootNodeId, "a", FileStat(1)), 0u);
  EXPECT_EQ(t.LookupCount(a), 1u);
  NodeId b = t.LookupIfUnknown(kRootNodeId, "b", FileStat(2));
  EXPECT_NE(b, 0u);
  EXPECT_EQ(t.LookupCount(b), 1u);
}

TEST(InodeTableTest, OpenHandleKeepsNodeAfterForget) {
  InodeTable t;
  NodeId a = t.Lookup(kRootNodeId, "a", FileStat(1));
  auto handle = std::make_shared<FileHandle>(a, nullptr);
  ASSERT_TRUE(t.AddHandle(handle));
  t.Forget(a, 1);
  EXPECT_EQ(t.AnyHandle(a), handle);
  EXPECT_EQ(t.RemoveHandle(handle.get()), handle);
  EXPECT_EQ(t.size(), 1u);
  EXPECT_FALSE(t.AddHandle(std::make_shared<FileHandle>(a, nullptr)));  // node is gone
}

}  // namespace
}  // namespace goldcache::fuse
