// Models larger than the memory they get: a synth checkpoint (tiny dims, many
// routed experts) several times larger than a memory limit generates the same
// tokens under that limit as without it.
//  * Budget: DSV4_MAX_RESIDENT_BYTES makes the process drop its weight pages
//    when their resident size exceeds the budget; the kernel's high-water mark
//    of the child's RSS (wait4 ru_maxrss) must stay near the budget plus the
//    process's anonymous memory, far below the checkpoint size, and far below
//    the unconstrained run's.
//  * cgroup: a memory cgroup (v2 memory.max or v1 memory.limit_in_bytes)
//    smaller than the checkpoint; the kernel reclaims the mapped weight pages.
//    Skipped where this process may not create cgroups.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace dsv4 {
namespace {

namespace fs = std::filesystem;

struct Child {
  int rc = -1;
  std::string out;      // stdout
  uint64_t maxrss = 0;  // bytes, the kernel's high-water mark
};

// Runs the dsv4 binary with `args`; `env` entries are NAME=VALUE added to the
// environment; the child first writes its pid to `cgroup_procs` if given.
Child spawn(const std::vector<std::string>& args, const std::vector<std::string>& env,
            const std::string& cgroup_procs = "") {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    const int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) ::dup2(devnull, 2);
    if (!cgroup_procs.empty()) {
      const std::string me = std::to_string(::getpid());
      const int fd = ::open(cgroup_procs.c_str(), O_WRONLY);
      if (fd < 0 || ::write(fd, me.data(), me.size()) != static_cast<ssize_t>(me.size()))
        ::_exit(98);
      ::close(fd);
    }
    for (const std::string& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(DSV4_BINARY));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(DSV4_BINARY, argv.data());
    ::_exit(99);
  }
  ::close(pipefd[1]);
  Child c;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) c.out.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  struct rusage ru {};
  ::wait4(pid, &status, 0, &ru);
  c.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  c.maxrss = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  return c;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool write_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p);
  out << s;
  out.flush();
  return static_cast<bool>(out);
}

uint64_t dir_bytes(const fs::path& d) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(d))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

class Residency : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("dsv4-test-residency-" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    // Tiny dims with 1024 routed experts per layer: ~270 MB on disk, of which
    // a token reads ~9 MB (dense weights + 2 experts per layer).
    const Child s = spawn({"synth", "--like", "tiny", "--experts", "1024", "--seed", "5", "--quiet",
                           "--out", dir_->string()},
                          {});
    ASSERT_EQ(s.rc, 0) << s.out;
    // A prompt long enough to route to hundreds of distinct experts per
    // layer, so that an unconstrained run keeps well over 100 MB of weights
    // resident.
    std::string ids;
    for (int i = 0; i < 384; ++i) {
      if (i) ids.push_back(',');
      ids.append(std::to_string((i * 131 + 7) % 500 + 2));
    }
    args_ = new std::vector<std::string>{
        "generate", "--model", dir_->string(), "--prompt-ids", ids, "--max-tokens", "6"};
    reference_ = new Child(spawn(*args_, {}));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete args_;
    delete reference_;
  }
  static fs::path* dir_;
  static std::vector<std::string>* args_;
  static Child* reference_;
};
fs::path* Residency::dir_ = nullptr;
std::vector<std::string>* Residency::args_ = nullptr;
Child* Residency::reference_ = nullptr;

TEST_F(Residency, BudgetKeepsWeightPagesDownAndOutputEqual) {
  ASSERT_EQ(reference_->rc, 0) << reference_->out;
  ASSERT_FALSE(reference_->out.empty());
  const uint64_t ckpt = dir_bytes(*dir_);
  const uint64_t budget = 16ull << 20;
  const Child limited = spawn(*args_, {"DSV4_MAX_RESIDENT_BYTES=16M"});
  ASSERT_EQ(limited.rc, 0) << limited.out;
  EXPECT_EQ(limited.out, reference_->out);
  // The unconstrained run holds many selected experts resident; the budgeted
  // one drops them. Its peak is the anonymous memory (which the budget does
  // not cover) plus about the budget: at least 64 MB below the unconstrained
  // peak and below half the checkpoint.
  std::printf(
      "checkpoint %llu B, peak RSS unconstrained %llu B, with a %llu B budget %llu B\n",
      static_cast<unsigned long long>(ckpt), static_cast<unsigned long long>(reference_->maxrss),
      static_cast<unsigned long long>(budget), static_cast<unsigned long long>(limited.maxrss));
  EXPECT_LT(limited.maxrss + (64ull << 20), reference_->maxrss);
  EXPECT_LT(limited.maxrss, ckpt / 2);
}

TEST(ResidencyBudget, MalformedBudgetIsAnErrorBeforeLoading) {
  const std::string tiny = std::string(DSV4_TEST_DATA) + "/golden/tiny-a/checkpoint";
  const std::vector<std::string> args = {"generate", "--model", tiny, "--prompt-ids", "1,2"};
  EXPECT_EQ(spawn(args, {"DSV4_MAX_RESIDENT_BYTES=12Q"}).rc, 1);
  EXPECT_EQ(spawn(args, {"DSV4_MAX_RESIDENT_BYTES=lots"}).rc, 1);
  const Child ok = spawn(args, {"DSV4_MAX_RESIDENT_BYTES=1M"});
  EXPECT_EQ(ok.rc, 0);
  EXPECT_EQ(ok.out, spawn(args, {}).out);
}

// A memory cgroup this process may create, with its limit file, or a reason
// why not.
struct Cgroup {
  fs::path dir;
  std::string procs, skip;
  bool v2 = false;
};

// The cgroup path of this process in a hierarchy: the "0::" line (v2) or the
// line naming the memory controller (v1) of /proc/self/cgroup.
std::string own_cgroup(bool v2) {
  std::istringstream in(read_file("/proc/self/cgroup"));
  std::string line;
  while (std::getline(in, line)) {
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    if (v2 ? line.compare(0, 3, "0::") == 0 : controllers == "memory") return line.substr(b + 1);
  }
  return "";
}

Cgroup make_cgroup(uint64_t limit) {
  Cgroup g;
  const std::string name = "dsv4-test-residency-" + std::to_string(::getpid());
  std::error_code ec;
  // A child of this process's own cgroup, so the test stays inside whatever
  // limits its environment imposes.
  fs::path parent;
  if (fs::exists("/sys/fs/cgroup/cgroup.controllers")) {
    parent = fs::path("/sys/fs/cgroup") / fs::path(own_cgroup(true)).relative_path();
    if (read_file(parent / "cgroup.subtree_control").find("memory") == std::string::npos) {
      g.skip = "cgroup v2: the memory controller is not enabled for children of " + parent.string();
      return g;
    }
    g.v2 = true;
  } else if (fs::exists("/sys/fs/cgroup/memory/memory.limit_in_bytes")) {
    parent = fs::path("/sys/fs/cgroup/memory") / fs::path(own_cgroup(false)).relative_path();
  } else {
    g.skip = "no cgroup v2 and no cgroup v1 memory hierarchy";
    return g;
  }
  g.dir = parent / name;
  if (!fs::create_directory(g.dir, ec)) {
    g.skip = "cannot create " + g.dir.string() + ": " + ec.message();
    g.dir.clear();
    return g;
  }
  const fs::path limit_file = g.dir / (g.v2 ? "memory.max" : "memory.limit_in_bytes");
  if (!write_file(limit_file, std::to_string(limit))) {
    g.skip = "cannot write " + limit_file.string();
    return g;
  }
  if (g.v2) write_file(g.dir / "memory.swap.max", "0");
  g.procs = (g.dir / "cgroup.procs").string();
  return g;
}

TEST_F(Residency, GeneratesUnderACgroupLimitSmallerThanTheCheckpoint) {
  ASSERT_EQ(reference_->rc, 0) << reference_->out;
  const uint64_t ckpt = dir_bytes(*dir_);
  const uint64_t limit = 96ull << 20;
  ASSERT_GT(ckpt, 2 * limit);
  Cgroup g = make_cgroup(limit);
  if (!g.skip.empty()) {
    std::error_code ec;
    if (!g.dir.empty()) fs::remove(g.dir, ec);
    GTEST_SKIP() << g.skip;
  }
  // Memory cgroups charge a page-cache page to the cgroup that read it in:
  // the checkpoint's pages, cached by the reference run, would be mapped
  // without charge. Evict them so the limited run reads them itself.
  for (const auto& e : fs::directory_iterator(*dir_)) {
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
  const Child limited = spawn(*args_, {}, g.procs);
  // How often the limit made the kernel reclaim: v1 failcnt, v2 events "max".
  uint64_t hits = 0;
  if (g.v2) {
    std::istringstream ev(read_file(g.dir / "memory.events"));
    std::string key;
    uint64_t v = 0;
    while (ev >> key >> v)
      if (key == "max") hits = v;
  } else {
    hits = std::strtoull(read_file(g.dir / "memory.failcnt").c_str(), nullptr, 10);
  }
  std::error_code ec;
  fs::remove(g.dir, ec);
  if (limited.rc == 98) GTEST_SKIP() << "could not move a process into " << g.procs;
  ASSERT_EQ(limited.rc, 0) << limited.out;
  EXPECT_EQ(limited.out, reference_->out);
  std::printf(
      "checkpoint %llu B under a %llu B cgroup limit: peak RSS %llu B, limit hit %llu times\n",
      static_cast<unsigned long long>(ckpt), static_cast<unsigned long long>(limit),
      static_cast<unsigned long long>(limited.maxrss), static_cast<unsigned long long>(hits));
  // The limit was reached (the kernel had to reclaim) and held: RSS also
  // counts pages charged to other cgroups (the binary and shared libraries,
  // ~20 MB, cached before the child joined), hence the slack.
  EXPECT_GT(hits, 0u);
  EXPECT_LE(limited.maxrss, limit + (32ull << 20));
  EXPECT_LT(limited.maxrss + (64ull << 20), reference_->maxrss);
}

}  // namespace
}  // namespace dsv4
