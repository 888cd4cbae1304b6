#include "cli/command.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "util/error.h"

namespace dsv4::cli {

std::map<std::string, Command>& command_registry() {
  static std::map<std::string, Command> registry;
  return registry;
}

Args::Args(const std::string& command, int argc, char** argv, std::vector<OptionSpec> options)
    : command_(command) {
  auto find = [&](const std::string& name) -> const OptionSpec* {
    for (const auto& o : options)
      if (o.name == name) return &o;
    return nullptr;
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
      std::string name = a.substr(2), value;
      bool inline_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        inline_value = true;
      }
      const OptionSpec* spec = find(name);
      if (!spec) fail("unknown option --", name);
      if (spec->takes_value) {
        if (!inline_value) {
          if (i + 1 >= argc) fail("option --", name, " needs a value");
          value = argv[++i];
        }
      } else if (inline_value) {
        fail("option --", name, " takes no value");
      }
      auto& slot = values_[name];
      if (!slot.empty() && !spec->repeatable) fail("option --", name, " given more than once");
      slot.push_back(value);
    } else {
      positional_.push_back(a);
    }
  }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::string Args::require(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) fail("missing required option --", name);
  return it->second.back();
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

int64_t Args::get_int(const std::string& name, int64_t fallback) const {
  if (!has(name)) return fallback;
  const std::string v = get(name);
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0)
    fail("option --", name, " expects an integer, got \"", v, "\"");
  return x;
}

double Args::get_double(const std::string& name, double fallback) const {
  if (!has(name)) return fallback;
  const std::string v = get(name);
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0') fail("option --", name, " expects a number, got \"", v, "\"");
  return x;
}

std::vector<int64_t> parse_id_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string item =
        text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    char* end = nullptr;
    errno = 0;
    long long x = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno != 0 || x < 0)
      fail(option, ": expected comma-separated non-negative token ids, got \"", item, "\"");
    ids.push_back(x);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return ids;
}

std::string read_stdin() {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) data.append(buf, n);
  if (std::ferror(stdin)) fail("cannot read stdin");
  return data;
}

void write_stdout(const std::string& s) {
  if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size() || std::fflush(stdout) != 0)
    fail("cannot write to stdout");
}

std::string default_model_dir() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("DSV4_MODEL")) return env;
  // Next to the binary's source tree (build dir) or installed share dir.
  for (const fs::path& p : {fs::path(DSV4_SOURCE_DIR) / "models" / "dsv4-demo",
                            fs::path("/usr/local/share/dsv4/models/dsv4-demo")})
    if (fs::exists(p / "config.json")) return p.string();
  fail("no --model given and the bundled demo model was not found (looked in ", DSV4_SOURCE_DIR,
       "/models/dsv4-demo); pass --model DIR");
}

}  // namespace dsv4::cli
