#pragma once

#include <string>

namespace dsv4::server {

// Watches the TCP connection a request arrived on, found by its two endpoints
// through the kernel's socket-diagnostics interface (NETLINK_SOCK_DIAG, what
// `ss` uses), so that a request whose client left can be cancelled.
//
// Why not the socket itself: cpp-httplib 0.11 (Debian's) does not hand it to
// handlers, and finding it among the process's file descriptors touched other
// workers' sockets while they were being closed (a race TSan reported). This
// looks up one connection in the kernel and never touches a descriptor.
//
// One watch per request, used by one thread at a time.
class ClientWatch {
 public:
  // The endpoints as cpp-httplib reports them (numeric addresses).
  ClientWatch(const std::string& local_addr, int local_port, const std::string& remote_addr,
              int remote_port);
  ~ClientWatch();
  ClientWatch(const ClientWatch&) = delete;
  ClientWatch& operator=(const ClientWatch&) = delete;

  // Whether this system offers socket-diagnostics lookups (some container
  // sandboxes do not): without them, non-streamed requests run to their end
  // after their client leaves. Streams notice a departed client regardless.
  static bool supported();

  // The connection was found open when the watch was made: gone() can tell.
  // False where the kernel interface is unavailable or the addresses do not
  // parse; gone() is then always false (the request runs to its end).
  bool available() const { return found_; }

  // The client closed or reset its connection. A client that half-closed
  // after sending bytes still unread (a pipelined request) counts as present.
  bool gone();

 private:
  enum class State { kOpen, kClosed, kMissing, kError };
  State probe();

  int netlink_ = -1;
  int family_ = 0;
  unsigned char local_[16] = {}, remote_[16] = {};
  int local_port_ = -1, remote_port_ = -1;
  bool found_ = false;
};

}  // namespace dsv4::server
