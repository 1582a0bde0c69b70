#include "util/private_dir.h"

#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

namespace goldcache {
namespace {

// Tightens one entry; counts it when it was open to others.
Status Tighten(const std::filesystem::path& path, size_t* loosened) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();  // went away meanwhile
    return Status::FromErrno(errno, "inspecting " + path.string());
  }
  if (S_ISLNK(st.st_mode)) return Status::Ok();
  if ((st.st_mode & 077) == 0) return Status::Ok();
  ++*loosened;
  // Directories 0700; files keep their owner bits only (0600 for ours).
  const mode_t mode = S_ISDIR(st.st_mode) ? 0700 : (st.st_mode & 0700);
  if (chmod(path.c_str(), mode) != 0) {
    return Status::FromErrno(errno, "making " + path.string() + " owner-only");
  }
  return Status::Ok();
}

}  // namespace

Result<size_t> MakePrivateTree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::path path(dir);
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) return Status::Error(Code::kIoError, "creating " + dir + ": " + ec.message());
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "creating " + dir);
  }
  size_t loosened = 0;
  GC_RETURN_IF_ERROR(Tighten(path, &loosened));
  for (auto it = std::filesystem::recursive_directory_iterator(path, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    GC_RETURN_IF_ERROR(Tighten(it->path(), &loosened));
  }
  if (ec) return Status::Error(Code::kIoError, "walking " + dir + ": " + ec.message());
  return loosened;
}

}  // namespace goldcache
