// Directories that only their owner may read: the cache dir holds datastore
// paths (in the index) and desktops' data (in overlays).
#pragma once

#include <cstddef>
#include <string>

#include "util/status.h"

namespace goldcache {

// Creates `dir` (and missing parents, which get the usual 0755) with mode
// 0700, or takes it as it is; then makes it and everything below it
// owner-only: directories 0700, other files lose their group and other bits (0600 for
// ours) (symbolic links are not
// followed). Returns how many entries had group or other permissions before.
// Errors: kIoError/kOsError naming the path.
Result<size_t> MakePrivateTree(const std::string& dir);

}  // namespace goldcache
