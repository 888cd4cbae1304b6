// dsv4: DeepSeek V4 inference engine and API server.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli/command.h"
#include "util/error.h"

namespace {

void print_usage() {
  std::fprintf(stderr, "usage: dsv4 <command> [options]\n\ncommands:\n");
  for (const auto& [name, cmd] : dsv4::cli::command_registry())
    std::fprintf(stderr, "  %-12s %s\n", name.c_str(), cmd.summary);
  std::fprintf(stderr, "\nRun 'dsv4 <command> --help' for a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("dsv4 0.1.0\n");
    return 0;
  }
  auto& registry = dsv4::cli::command_registry();
  auto it = registry.find(argv[1]);
  if (it == registry.end()) {
    std::fprintf(stderr, "dsv4: unknown command '%s' (run 'dsv4 --help')\n", argv[1]);
    return 2;
  }
  try {
    return it->second.run(argc - 1, argv + 1);
  } catch (const dsv4::Error& e) {
    std::fprintf(stderr, "dsv4 %s: %s\n", argv[1], e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv4 %s: internal error: %s\n", argv[1], e.what());
    return 1;
  }
}
