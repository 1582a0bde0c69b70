#include "agent/listen_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cctype>

namespace goldcache::agent {
namespace {

Status AddressError(const std::string& listen, const std::string& why) {
  return Status::Error(Code::kInvalidArgument, "\"" + listen + "\" is not HOST:PORT: " + why);
}

}  // namespace

Result<ListenAddress> ParseListenAddress(const std::string& listen) {
  ListenAddress addr;
  std::string port_text;
  if (!listen.empty() && listen.front() == '[') {
    size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return AddressError(listen, "expected [IPV6]:PORT");
    }
    addr.host = listen.substr(1, close - 1);
    port_text = listen.substr(close + 2);
  } else {
    size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return AddressError(listen, "expected HOST:PORT");
    addr.host = listen.substr(0, colon);
    port_text = listen.substr(colon + 1);
    if (addr.host.find(':') != std::string::npos) {
      return AddressError(listen, "write an IPv6 address in brackets, e.g. [::1]:9477");
    }
  }
  if (addr.host.empty()) return AddressError(listen, "missing host (e.g. 127.0.0.1)");
  if (port_text.empty() || port_text.size() > 5) return AddressError(listen, "bad port");
  for (char c : port_text) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return AddressError(listen, "bad port");
  }
  addr.port = std::stoi(port_text);
  if (addr.port > 65535) return AddressError(listen, "port above 65535");
  return addr;
}

bool IsLoopbackHost(const std::string& host) {
  if (host.size() == 9) {
    std::string lower = host;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == "localhost") return true;
  }
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

}  // namespace goldcache::agent
