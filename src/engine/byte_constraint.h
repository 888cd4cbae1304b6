// The masking loop shared by the byte-level grammar constraints (JSON output,
// tool calls): a token survives when a copy of the grammar machine accepts its
// bytes. Machine: copyable, with bool feed(const std::string&).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace dsv4::engine {

// Masks (sets to −inf) every token the machine cannot continue with. End
// tokens are allowed exactly when `end_ok`; other tokens only when `text_ok`,
// their bytes are known and non-empty, `reject(bytes)` is false and the
// machine accepts them.
template <class Machine, class Reject>
void mask_by_machine(std::span<float> logits, const std::vector<std::string>& bytes,
                     const std::vector<int32_t>& end_tokens, const Machine& machine, bool end_ok,
                     bool text_ok, Reject reject) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] == ninf) continue;
    const bool is_end = std::find(end_tokens.begin(), end_tokens.end(), static_cast<int32_t>(i)) !=
                        end_tokens.end();
    bool ok;
    if (is_end) {
      ok = end_ok;
    } else if (!text_ok || i >= bytes.size() || bytes[i].empty() || reject(bytes[i])) {
      ok = false;
    } else {
      Machine trial = machine;
      ok = trial.feed(bytes[i]);
    }
    if (!ok) logits[i] = ninf;
  }
}

// A generated token: opens the constraint when it is the start token (until
// then nothing is masked), afterwards feeds its bytes to the machine.
template <class Machine>
void accept_token(int32_t token, int32_t start_token, const std::vector<std::string>& bytes,
                  bool& active, Machine& machine) {
  if (!active) {
    active = token == start_token;
    return;
  }
  if (token >= 0 && static_cast<size_t>(token) < bytes.size()) machine.feed(bytes[token]);
}

}  // namespace dsv4::engine
