// "HOST:PORT" addresses to listen on (the stats endpoint's), and whether one
// stays on this host. Pure functions, shared by the config checks and the
// stats endpoint.
#pragma once

#include <string>

#include "util/status.h"

namespace goldcache::agent {

struct ListenAddress {
  std::string host;  // without brackets for IPv6
  int port = 0;
};
// "HOST:PORT" or "[IPV6]:PORT"; kInvalidArgument saying what is wrong.
Result<ListenAddress> ParseListenAddress(const std::string& listen);
// Literal loopback addresses and "localhost": any other host name could
// resolve anywhere, so it counts as non-loopback.
bool IsLoopbackHost(const std::string& host);

}  // namespace goldcache::agent
