#include "cli/chat_view.h"

#include <cstdlib>

namespace dsv4::cli {

bool env_no_color() {
  const char* v = std::getenv("NO_COLOR");
  return v && *v;
}

}  // namespace dsv4::cli
