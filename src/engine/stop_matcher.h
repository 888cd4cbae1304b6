// Stop sequences over a stream of text fragments. The stop text itself is
// never returned, a stop string split across token boundaries is still found,
// and text that might be the start of a stop string is held back until the
// following fragments decide it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dsv4::engine {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  struct Result {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string was found; `text` is everything before it
    std::string matched;   // the stop string found
  };

  // Appends a fragment. After `stopped`, further calls return nothing.
  Result push(std::string_view fragment);

  // End of generation: releases text held back as a possible stop prefix.
  std::string flush();

  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // held back: a suffix that is a proper prefix of a stop string
  bool stopped_ = false;
};

}  // namespace dsv4::engine
