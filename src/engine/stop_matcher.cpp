#include "engine/stop_matcher.h"

#include <algorithm>

namespace dsv4::engine {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));  // "" would stop before any text
}

StopMatcher::Result StopMatcher::push(std::string_view fragment) {
  Result r;
  if (stopped_) return r;
  pending_.append(fragment);
  if (stops_.empty()) {
    r.text.swap(pending_);
    return r;
  }
  // The stop that completes first wins (as if the text had arrived one byte
  // at a time, so the result does not depend on how it was split); among
  // stops ending at the same byte, the longest.
  size_t best_end = std::string::npos, best = 0;
  const std::string* which = nullptr;
  for (const auto& s : stops_) {
    size_t pos = pending_.find(s);
    if (pos == std::string::npos) continue;
    const size_t end = pos + s.size();
    if (end < best_end || (end == best_end && pos < best)) {
      best_end = end;
      best = pos;
      which = &s;
    }
  }
  if (which) {
    r.text = pending_.substr(0, best);
    r.stopped = true;
    r.matched = *which;
    stopped_ = true;
    pending_.clear();
    return r;
  }
  // Hold back the longest suffix of pending_ that is a proper prefix of a stop
  // string. pending_ contains no whole stop string, so any such suffix is
  // shorter than the longest stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  r.text = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return r;
}

std::string StopMatcher::flush() {
  std::string out;
  if (!stopped_) out.swap(pending_);
  pending_.clear();
  return out;
}

}  // namespace dsv4::engine
