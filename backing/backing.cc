#include "backing/backing.h"

#include <string_view>

namespace goldcache::backing {

FileVersion VersionOf(const struct stat& st) {
  return FileVersion{static_cast<uint64_t>(st.st_size),
                     int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec,
                     int64_t{st.st_ctim.tv_sec} * 1'000'000'000 + st.st_ctim.tv_nsec,
                     static_cast<uint64_t>(st.st_ino)};
}

Status CheckDatastorePath(const std::string& path) {
  if (path.empty()) return Status::Ok();
  bool bad = path.front() == '/' || path.back() == '/';
  size_t start = 0;
  while (!bad && start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string_view part(path.data() + start, end - start);
    bad = part.empty() || part == "." || part == "..";
    start = end + 1;
  }
  if (bad) {
    return Status::Error(Code::kInvalidArgument,
                         "datastore path \"" + path + "\" is not relative and normalized", EINVAL);
  }
  return Status::Ok();
}

}  // namespace goldcache::backing
