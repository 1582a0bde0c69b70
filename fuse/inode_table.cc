#include "fuse/inode_table.h"

#include <algorithm>
#include <functional>

namespace goldcache::fuse {

struct InodeTable::Inode {
  struct Name {
    Inode* parent;
    std::string name;
  };

  Inode(NodeId node_id, mode_t file_type) : id(node_id), type(file_type) {}

  const NodeId id;
  const mode_t type;  // S_IFMT bits: a name that changes type is a new file
  // Names the kernel knows this node by; front() is the one paths use (the
  // most recently looked up). Empty: unlinked ("detached"), or the root.
  std::vector<Name> names;
  uint64_t nlookup = 0;
  uint64_t child_names = 0;  // names of other nodes that have this one as parent
  std::optional<FileKey> file_key;
  bool versioned = false;
  std::vector<std::shared_ptr<FileHandle>> handles;
};

size_t InodeTable::NameKeyHash::operator()(const NameKey& k) const {
  return std::hash<std::string>()(k.name) ^ (std::hash<NodeId>()(k.parent) * 0x9e3779b97f4a7c15ULL);
}

size_t InodeTable::FileKeyHash::operator()(const FileKey& k) const {
  return std::hash<uint64_t>()(static_cast<uint64_t>(k.ino)) ^
         (std::hash<uint64_t>()(static_cast<uint64_t>(k.dev)) * 0x9e3779b97f4a7c15ULL);
}

InodeTable::InodeTable() {
  auto root = std::make_unique<Inode>(kRootNodeId, S_IFDIR);
  // The kernel never forgets the root; a count of 1 keeps MaybeErase away.
  root->nlookup = 1;
  nodes_.emplace(kRootNodeId, std::move(root));
}

InodeTable::~InodeTable() = default;

InodeTable::Inode* InodeTable::FindLocked(NodeId id) const {
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : it->second.get();
}

InodeTable::FileKey InodeTable::KeyOf(const struct stat& st, bool versioned) {
  FileKey key{st.st_dev, st.st_ino};
  if (versioned) {
    key.size = st.st_size;
    key.mtime_ns = st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec;
    key.ctime_ns = st.st_ctim.tv_sec * 1'000'000'000LL + st.st_ctim.tv_nsec;
  }
  return key;
}

NodeId InodeTable::Lookup(NodeId parent, std::string_view name, const struct stat& st,
                          bool versioned) {
  MutexLock lock(mu_);
  return LookupLocked(parent, name, st, versioned, /*only_if_unknown=*/false);
}

NodeId InodeTable::LookupIfUnknown(NodeId parent, std::string_view name, const struct stat& st,
                                   bool versioned) {
  MutexLock lock(mu_);
  return LookupLocked(parent, name, st, versioned, /*only_if_unknown=*/true);
}

bool InodeTable::Matches(NodeId id, const struct stat& st) const {
  MutexLock lock(mu_);
  const Inode* inode = FindLocked(id);
  if (inode == nullptr || !inode->file_key) return true;
  return ((st.st_mode & S_IFMT) == inode->type) && KeyOf(st, inode->versioned) == *inode->file_key;
}

bool InodeTable::Versioned(NodeId id) const {
  MutexLock lock(mu_);
  const Inode* inode = FindLocked(id);
  return inode != nullptr && inode->versioned;
}

NodeId InodeTable::LookupLocked(NodeId parent_id, std::string_view name, const struct stat& st,
                                bool versioned, bool only_if_unknown) {
  Inode* parent = FindLocked(parent_id);
  if (parent == nullptr) return 0;  // REQUIRES violated; the caller replies ESTALE
  const mode_t type = st.st_mode & S_IFMT;
  // Only a file's content has versions; a directory of templates changes
  // with every file made in it.
  versioned = versioned && type == S_IFREG;

  Inode* at_name = nullptr;
  if (auto it = by_name_.find(NameKey{parent_id, std::string(name)}); it != by_name_.end()) {
    at_name = it->second;
  }

  Inode* chosen = nullptr;
  std::optional<FileKey> key;
  if (st.st_ino != 0) {
    key = KeyOf(st, versioned);
    if (auto it = by_file_.find(*key); it != by_file_.end()) {
      Inode* known = it->second;
      // A node that lost all its names (unlinked) or changed type is not this
      // file: the datastore reused the inode number for a new one. Giving the
      // kernel the old node id would mix the two, so retire the key.
      if (known->type == type && !known->names.empty()) {
        chosen = known;
      } else {
        known->file_key.reset();
        by_file_.erase(it);
      }
    }
  } else if (at_name != nullptr && at_name->type == type && !at_name->file_key) {
    chosen = at_name;
  }

  if (chosen != nullptr && only_if_unknown && chosen->nlookup > 0) return 0;
  if (chosen == nullptr) {
    NodeId id = next_id_++;
    auto inode = std::make_unique<Inode>(id, type);
    chosen = inode.get();
    nodes_.emplace(id, std::move(inode));
    if (key) {
      chosen->file_key = key;
      chosen->versioned = versioned;
      by_file_.emplace(*key, chosen);
    }
  }
  // Take the reference before touching names so that removing the old
  // holder of the name cannot erase the parent or the chosen node.
  chosen->nlookup++;
  if (at_name != nullptr && at_name != chosen) RemoveNameLocked(at_name, parent_id, name);
  AddNameLocked(chosen, parent, name);
  return chosen->id;
}

void InodeTable::AddNameLocked(Inode* inode, Inode* parent, std::string_view name) {
  auto same = [&](const Inode::Name& n) { return n.parent == parent && n.name == name; };
  auto it = std::find_if(inode->names.begin(), inode->names.end(), same);
  if (it != inode->names.end()) {
    // Already known by this name: make it the name paths use, since the
    // FileSystem just confirmed it.
    std::rotate(inode->names.begin(), it, it + 1);
    return;
  }
  inode->names.insert(inode->names.begin(), Inode::Name{parent, std::string(name)});
  parent->child_names++;
  by_name_[NameKey{parent->id, std::string(name)}] = inode;
}

void InodeTable::RemoveNameLocked(Inode* inode, NodeId parent_id, std::string_view name) {
  auto same = [&](const Inode::Name& n) { return n.parent->id == parent_id && n.name == name; };
  auto it = std::find_if(inode->names.begin(), inode->names.end(), same);
  if (it == inode->names.end()) return;
  Inode* parent = it->parent;
  inode->names.erase(it);
  by_name_.erase(NameKey{parent_id, std::string(name)});
  parent->child_names--;
  MaybeEraseLocked(parent);
  MaybeEraseLocked(inode);
}

void InodeTable::MaybeEraseLocked(Inode* start) {
  // Iterative: erasing a node drops its names, which can free its parents in
  // turn; a deep tree must not mean a deep stack.
  std::vector<Inode*> pending{start};
  while (!pending.empty()) {
    Inode* inode = pending.back();
    pending.pop_back();
    if (inode->id == kRootNodeId || inode->nlookup > 0 || inode->child_names > 0 ||
        !inode->handles.empty()) {
      continue;
    }
    for (const Inode::Name& n : inode->names) {
      by_name_.erase(NameKey{n.parent->id, n.name});
      n.parent->child_names--;
      pending.push_back(n.parent);
    }
    if (inode->file_key) by_file_.erase(*inode->file_key);
    nodes_.erase(inode->id);  // destroys *inode
  }
}

void InodeTable::Forget(NodeId id, uint64_t nlookup) {
  if (id == kRootNodeId) return;
  MutexLock lock(mu_);
  Inode* inode = FindLocked(id);
  if (inode == nullptr) return;
  inode->nlookup -= std::min(inode->nlookup, nlookup);
  MaybeEraseLocked(inode);
}

std::optional<std::string> InodeTable::PathLocked(const Inode* inode) const {
  std::vector<const std::string*> parts;
  while (inode->id != kRootNodeId) {
    if (inode->names.empty()) return std::nullopt;
    // A cycle can only come from a FileSystem that reports a directory as its
    // own descendant; answer "no path" rather than loop.
    if (parts.size() > nodes_.size()) return std::nullopt;
    parts.push_back(&inode->names.front().name);
    inode = inode->names.front().parent;
  }
  std::string path;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!path.empty()) path += '/';
    path += **it;
  }
  return path;
}

std::optional<std::string> InodeTable::Path(NodeId id) const {
  MutexLock lock(mu_);
  const Inode* inode = FindLocked(id);
  if (inode == nullptr) return std::nullopt;
  return PathLocked(inode);
}

std::optional<NodeId> InodeTable::NodeOfPath(std::string_view path) const {
  MutexLock lock(mu_);
  NodeId node = kRootNodeId;
  while (!path.empty()) {
    const size_t slash = path.find('/');
    const std::string_view name = path.substr(0, slash);
    auto it = by_name_.find(NameKey{node, std::string(name)});
    if (it == by_name_.end()) return std::nullopt;
    node = it->second->id;
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
  }
  return node;
}

std::optional<std::string> InodeTable::ChildPath(NodeId parent, std::string_view name) const {
  std::optional<std::string> path = Path(parent);
  if (!path) return std::nullopt;
  if (!path->empty()) *path += '/';
  *path += name;
  return path;
}

void InodeTable::RemoveName(NodeId parent, std::string_view name) {
  MutexLock lock(mu_);
  auto it = by_name_.find(NameKey{parent, std::string(name)});
  if (it == by_name_.end()) return;
  RemoveNameLocked(it->second, parent, name);
}

void InodeTable::Rename(NodeId parent_id, std::string_view name, NodeId new_parent_id,
                        std::string_view new_name, bool exchange) {
  MutexLock lock(mu_);
  Inode* parent = FindLocked(parent_id);
  Inode* new_parent = FindLocked(new_parent_id);
  if (parent == nullptr || new_parent == nullptr) return;
  auto find = [&](NodeId p, std::string_view n) -> Inode* {
    mu_.AssertHeld();  // called right below, under the lock
    auto it = by_name_.find(NameKey{p, std::string(n)});
    return it == by_name_.end() ? nullptr : it->second;
  };
  Inode* src = find(parent_id, name);
  Inode* dst = find(new_parent_id, new_name);
  if (src == dst) return;  // same node (or both unknown): rename(2) changed nothing
  // Pin both nodes and both parents while names move, so that no node is
  // erased half-way; the unpin at the end erases whatever became unused.
  Inode* pinned[] = {src, dst, parent, new_parent};
  for (Inode* p : pinned) {
    if (p != nullptr) p->nlookup++;
  }
  if (src != nullptr) RemoveNameLocked(src, parent_id, name);
  if (dst != nullptr) RemoveNameLocked(dst, new_parent_id, new_name);
  if (src != nullptr) AddNameLocked(src, new_parent, new_name);
  if (exchange && dst != nullptr) AddNameLocked(dst, parent, name);
  for (Inode* p : pinned) {
    if (p == nullptr) continue;
    p->nlookup--;
    MaybeEraseLocked(p);
  }
}

bool InodeTable::AddHandle(const std::shared_ptr<FileHandle>& handle) {
  MutexLock lock(mu_);
  Inode* inode = FindLocked(handle->node);
  if (inode == nullptr) return false;
  inode->handles.push_back(handle);
  return true;
}

std::shared_ptr<FileHandle> InodeTable::RemoveHandle(const FileHandle* handle) {
  MutexLock lock(mu_);
  Inode* inode = FindLocked(handle->node);
  if (inode == nullptr) return nullptr;
  auto it = std::find_if(inode->handles.begin(), inode->handles.end(),
                         [&](const auto& h) { return h.get() == handle; });
  if (it == inode->handles.end()) return nullptr;
  std::shared_ptr<FileHandle> removed = std::move(*it);
  inode->handles.erase(it);
  MaybeEraseLocked(inode);
  return removed;
}

std::shared_ptr<FileHandle> InodeTable::AnyHandle(NodeId id) const {
  MutexLock lock(mu_);
  const Inode* inode = FindLocked(id);
  if (inode == nullptr || inode->handles.empty()) return nullptr;
  return inode->handles.front();
}

size_t InodeTable::size() const {
  MutexLock lock(mu_);
  return nodes_.size();
}

uint64_t InodeTable::LookupCount(NodeId id) const {
  MutexLock lock(mu_);
  const Inode* inode = FindLocked(id);
  if (inode == nullptr || id == kRootNodeId) return 0;
  return inode->nlookup;
}

}  // namespace goldcache::fuse
