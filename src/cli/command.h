// The `dsv4` binary's subcommands. Each src/cli/cmd_*.cpp registers itself
// with DSV4_COMMAND; main() dispatches on argv[1].
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dsv4::cli {

using CommandFn = int (*)(int argc, char** argv);  // argv[0] is the subcommand name

struct Command {
  const char* name;
  const char* summary;
  CommandFn run;
};

std::map<std::string, Command>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, CommandFn fn) {
    command_registry()[name] = {name, summary, fn};
  }
};

#define DSV4_COMMAND(name, summary, fn) \
  static ::dsv4::cli::CommandRegistrar dsv4_cmd_registrar_##fn(name, summary, fn)

// Minimal option parser: --name value, --name=value, boolean --flag.
// Unknown options and missing values are errors naming the option.
struct OptionSpec {
  std::string name;  // without the leading dashes
  bool takes_value;  // false: a boolean flag
  bool repeatable = false;
};

class Args {
 public:
  Args(const std::string& command, int argc, char** argv, std::vector<OptionSpec> options);
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const;
  std::string require(const std::string& name) const;
  std::vector<std::string> all(const std::string& name) const;
  int64_t get_int(const std::string& name, int64_t fallback) const;
  double get_double(const std::string& name, double fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::string command_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

// Parses "1,2,3" into integers; errors name the option.
std::vector<int64_t> parse_id_list(const std::string& text, const std::string& option);

// All of stdin, byte for byte / all of `s` to stdout (flushed); errors throw.
std::string read_stdin();
void write_stdout(const std::string& s);

// The folder of the bundled demo model (used when --model is not given).
std::string default_model_dir();

}  // namespace dsv4::cli
