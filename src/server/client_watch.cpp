#include "server/client_watch.h"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace dsv4::server {

ClientWatch::ClientWatch(const std::string& local_addr, int local_port,
                         const std::string& remote_addr, int remote_port)
    : local_port_(local_port), remote_port_(remote_port) {
  if (local_port < 0 || local_port > 65535 || remote_port < 0 || remote_port > 65535) return;
  // Both endpoints share the socket's family; a dual-stack listener reports
  // IPv4 peers as IPv4-mapped IPv6 addresses, which parse as IPv6.
  if (inet_pton(AF_INET, local_addr.c_str(), local_) == 1 &&
      inet_pton(AF_INET, remote_addr.c_str(), remote_) == 1)
    family_ = AF_INET;
  else if (inet_pton(AF_INET6, local_addr.c_str(), local_) == 1 &&
           inet_pton(AF_INET6, remote_addr.c_str(), remote_) == 1)
    family_ = AF_INET6;
  else
    return;
  netlink_ = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (netlink_ < 0) return;
  timeval tv{1, 0};  // a kernel answer is immediate; never block a worker for long
  setsockopt(netlink_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  found_ = probe() == State::kOpen;
}

bool ClientWatch::supported() {
  const int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) return false;
  close(fd);
  return true;
}

ClientWatch::~ClientWatch() {
  if (netlink_ >= 0) close(netlink_);
}

bool ClientWatch::gone() {
  if (!found_) return false;
  const State s = probe();
  // Missing once found: reset connections leave the lookup tables (a lookup
  // then falls through to the listening socket, reported as missing too).
  return s == State::kClosed || s == State::kMissing;
}

ClientWatch::State ClientWatch::probe() {
  struct {
    nlmsghdr header;
    inet_diag_req_v2 body;
  } req{};
  req.header.nlmsg_len = sizeof req;
  req.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.header.nlmsg_flags = NLM_F_REQUEST;
  req.body.sdiag_family = static_cast<__u8>(family_);
  req.body.sdiag_protocol = IPPROTO_TCP;
  req.body.idiag_states = ~0u;
  // The kernel's view of our socket: source is this end, destination the client.
  req.body.id.idiag_sport = htons(static_cast<uint16_t>(local_port_));
  req.body.id.idiag_dport = htons(static_cast<uint16_t>(remote_port_));
  const size_t n = family_ == AF_INET ? 4 : 16;
  std::memcpy(req.body.id.idiag_src, local_, n);
  std::memcpy(req.body.id.idiag_dst, remote_, n);
  req.body.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  req.body.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;

  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(netlink_, &req, sizeof req, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) !=
      static_cast<ssize_t>(sizeof req))
    return State::kError;
  alignas(nlmsghdr) char buf[8192];
  ssize_t len;
  do len = recv(netlink_, buf, sizeof buf, 0);
  while (len < 0 && errno == EINTR);
  if (len < 0) return State::kError;
  auto* h = reinterpret_cast<nlmsghdr*>(buf);
  for (; NLMSG_OK(h, static_cast<unsigned>(len)); h = NLMSG_NEXT(h, len)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const auto* err = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
      return err->error == -ENOENT ? State::kMissing : State::kError;
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
    const auto* msg = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
    switch (msg->idiag_state) {
      case TCP_ESTABLISHED:
        return State::kOpen;
      case TCP_CLOSE_WAIT:
        // The client sent its FIN. The receive queue counts the FIN's
        // sequence number too: more than 1 means unread request bytes.
        return msg->idiag_rqueue > 1 ? State::kOpen : State::kClosed;
      case TCP_LISTEN:
        return State::kMissing;
      default:
        return State::kClosed;
    }
  }
  return State::kError;
}

}  // namespace dsv4::server
