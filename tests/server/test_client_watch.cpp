// ClientWatch against real TCP connections on the loopback: a client that
// closes, one that resets, one that half-closes with a request still unread,
// and addresses that cannot be watched.
#include "server/client_watch.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

namespace dsv4::server {
namespace {

// A connected pair on 127.0.0.1 (or ::1): the server side's accepted socket
// and the client's, plus the endpoints as the server sees them.
struct Connection {
  int listener = -1, server = -1, client = -1;
  std::string local_addr, remote_addr;
  int local_port = -1, remote_port = -1;

  explicit Connection(int family) {
    listener = socket(family, SOCK_STREAM, 0);
    sockaddr_storage addr{};
    socklen_t len;
    if (family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&addr);
      a->sin_family = AF_INET;
      a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      len = sizeof *a;
    } else {
      auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
      a->sin6_family = AF_INET6;
      a->sin6_addr = in6addr_loopback;
      len = sizeof *a;
    }
    if (bind(listener, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(listener, 4) != 0)
      return;
    getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
    client = socket(family, SOCK_STREAM, 0);
    if (connect(client, reinterpret_cast<sockaddr*>(&addr), len) != 0) return;
    server = accept(listener, nullptr, nullptr);
    local_addr = name(server, /*peer=*/false, &local_port);
    remote_addr = name(server, /*peer=*/true, &remote_port);
  }
  ~Connection() {
    for (int fd : {listener, server, client})
      if (fd >= 0) close(fd);
  }
  bool ok() const { return server >= 0 && !remote_addr.empty(); }

  static std::string name(int fd, bool peer, int* port) {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if ((peer ? getpeername : getsockname)(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return "";
    char host[INET6_ADDRSTRLEN] = {};
    if (a.ss_family == AF_INET) {
      const auto* s = reinterpret_cast<sockaddr_in*>(&a);
      inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
      *port = ntohs(s->sin_port);
    } else {
      const auto* s = reinterpret_cast<sockaddr_in6*>(&a);
      inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof host);
      *port = ntohs(s->sin6_port);
    }
    return host;
  }
};

// A watch on the server side of `c`, which must find the connection.
#define WATCH(w, c)                                                                \
  ClientWatch w((c).local_addr, (c).local_port, (c).remote_addr, (c).remote_port); \
  ASSERT_TRUE(w.available()) << (c).local_addr

// gone() within a second (the FIN or RST crosses the loopback at once, but
// the test machine may be busy).
bool becomes_gone(ClientWatch& w) {
  for (int i = 0; i < 100; ++i) {
    if (w.gone()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// Every test needs the kernel interface; a system without it is reported, not failed.
#define REQUIRE_SOCK_DIAG() \
  if (!ClientWatch::supported()) GTEST_SKIP() << "no NETLINK_SOCK_DIAG on this system"

TEST(ClientWatch, SeesAClientThatCloses) {
  REQUIRE_SOCK_DIAG();
  for (int family : {AF_INET, AF_INET6}) {
    Connection c(family);
    if (!c.ok() && family == AF_INET6) continue;  // no IPv6 loopback here
    ASSERT_TRUE(c.ok());
    WATCH(w, c);
    EXPECT_FALSE(w.gone());
    close(c.client);
    c.client = -1;
    EXPECT_TRUE(becomes_gone(w)) << c.local_addr;
  }
}

TEST(ClientWatch, SeesAClientThatResets) {
  REQUIRE_SOCK_DIAG();
  Connection c(AF_INET);
  ASSERT_TRUE(c.ok());
  WATCH(w, c);
  linger l{1, 0};  // close with RST
  setsockopt(c.client, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(c.client);
  c.client = -1;
  EXPECT_TRUE(becomes_gone(w));
}

TEST(ClientWatch, AnotherConnectionsCloseIsNotOurs) {
  REQUIRE_SOCK_DIAG();
  Connection a(AF_INET), b(AF_INET);
  ASSERT_TRUE(a.ok() && b.ok());
  WATCH(w, a);
  close(b.client);
  b.client = -1;
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(w.gone());
}

TEST(ClientWatch, AHalfCloseWithAnUnreadRequestIsStillAClient) {
  REQUIRE_SOCK_DIAG();
  Connection c(AF_INET);
  ASSERT_TRUE(c.ok());
  WATCH(w, c);
  const char req[] = "GET / HTTP/1.1\r\n\r\n";
  ASSERT_EQ(send(c.client, req, sizeof req - 1, 0), static_cast<ssize_t>(sizeof req - 1));
  shutdown(c.client, SHUT_WR);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(w.gone());
  // Once the server has read it, only the FIN is left: the client is done.
  char buf[64];
  EXPECT_EQ(recv(c.server, buf, sizeof buf, 0), static_cast<ssize_t>(sizeof req - 1));
  EXPECT_TRUE(becomes_gone(w));
}

TEST(ClientWatch, UnwatchableEndpointsNeverReportGone) {
  REQUIRE_SOCK_DIAG();
  Connection c(AF_INET);
  ASSERT_TRUE(c.ok());
  for (auto [addr, port] : {std::pair<std::string, int>{"not an address", c.local_port},
                            {c.local_addr, -1},
                            {c.local_addr, 70000}}) {
    ClientWatch w(addr, port, c.remote_addr, c.remote_port);
    EXPECT_FALSE(w.available()) << addr << ":" << port;
    EXPECT_FALSE(w.gone());
  }
  // Endpoints of no connection: nothing to watch.
  ClientWatch w(c.local_addr, c.local_port, c.remote_addr, c.remote_port == 1 ? 2 : 1);
  EXPECT_FALSE(w.available());
  EXPECT_FALSE(w.gone());
}

}  // namespace
}  // namespace dsv4::server
