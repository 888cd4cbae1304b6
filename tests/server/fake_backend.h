// A byte-level stand-in for the tokenizer and the chat layer, so the HTTP
// layer can be tested exactly without a model: every byte is one token
// (id = byte + 3), the conversation renders to its JSON text, and the output
// grammar is "<reasoning></think><answer>" with tool calls written as
// "<<call NAME ARGS>>".
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/chat_backend.h"

namespace dsv4::server::testing {

constexpr int32_t kBos = 0, kEos = 1;
constexpr int kVocab = 259;

inline std::vector<int32_t> bytes_to_ids(std::string_view s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(int32_t(c) + 3);
  return ids;
}

class ByteDetokenizer : public engine::Detokenizer {
 public:
  std::string token_bytes(int32_t t) const override {
    return t >= 3 && t < kVocab ? std::string(1, char(t - 3)) : std::string();
  }
  std::unique_ptr<engine::TextStream> new_stream() const override {
    struct S : engine::TextStream {
      const ByteDetokenizer* d;
      std::string pending;
      explicit S(const ByteDetokenizer* d) : d(d) {}
      std::string push(int32_t t) override {
        pending += d->token_bytes(t);
        // Emit only complete UTF-8 characters.
        size_t n = pending.size(), cut = n;
        for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
          unsigned char c = pending[n - back];
          if ((c & 0xC0) == 0x80) continue;
          size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
          if (len > back) cut = n - back;
          break;
        }
        std::string out = pending.substr(0, cut);
        pending.erase(0, cut);
        return out;
      }
      std::string flush() override { return std::exchange(pending, {}); }
    };
    return std::make_unique<S>(this);
  }
};

class FakeParser : public OutputParser {
 public:
  explicit FakeParser(bool thinking) : reasoning_(thinking) {}
  std::vector<OutputEvent> push(std::string_view text) override {
    buf_ += text;
    std::vector<OutputEvent> out;
    while (true) {
      if (reasoning_) {
        if (!take_until("</think>", OutputEvent::Kind::kReasoning, out)) break;
        reasoning_ = false;
      } else if (in_call_) {
        if (name_.empty()) {
          auto sp = buf_.find(' ');
          if (sp == std::string::npos) break;
          name_ = buf_.substr(0, sp);
          buf_.erase(0, sp + 1);
          out.push_back({OutputEvent::Kind::kToolCallBegin, name_});
        }
        if (!take_until(">>", OutputEvent::Kind::kToolCallArgs, out)) break;
        out.push_back({OutputEvent::Kind::kToolCallEnd, ""});
        in_call_ = false;
        name_.clear();
      } else {
        if (!take_until("<<call ", OutputEvent::Kind::kContent, out)) break;
        in_call_ = true;
      }
    }
    return out;
  }
  std::vector<OutputEvent> finish(bool) override {
    std::vector<OutputEvent> out;
    if (!buf_.empty())
      out.push_back({reasoning_ ? OutputEvent::Kind::kReasoning
                     : in_call_ ? OutputEvent::Kind::kToolCallArgs
                                : OutputEvent::Kind::kContent,
                     buf_});
    buf_.clear();
    return out;
  }

 private:
  // Emits text before `marker` as `kind`; true if the marker was consumed.
  // Holds back a possible partial marker at the end.
  bool take_until(const std::string& marker, OutputEvent::Kind kind,
                  std::vector<OutputEvent>& out) {
    auto pos = buf_.find(marker);
    if (pos != std::string::npos) {
      if (pos) out.push_back({kind, buf_.substr(0, pos)});
      buf_.erase(0, pos + marker.size());
      return true;
    }
    size_t hold = 0;
    for (size_t len = std::min(marker.size() - 1, buf_.size()); len > 0; --len)
      if (buf_.compare(buf_.size() - len, len, marker, 0, len) == 0) {
        hold = len;
        break;
      }
    if (buf_.size() > hold) out.push_back({kind, buf_.substr(0, buf_.size() - hold)});
    buf_.erase(0, buf_.size() - hold);
    return false;
  }
  bool reasoning_;
  bool in_call_ = false;
  std::string name_, buf_;
};

class FakeChatBackend : public ChatBackend {
 public:
  std::vector<int32_t> encode_chat(const Json& conversation) const override {
    last_conversation = conversation;
    auto ids = bytes_to_ids(conversation.dump());
    ids.insert(ids.begin(), kBos);
    return ids;
  }
  std::vector<int32_t> encode_fim(const std::string& prefix,
                                  const std::optional<std::string>& suffix) const override {
    auto ids = bytes_to_ids("FIM:" + prefix + "|" + suffix.value_or(""));
    ids.insert(ids.begin(), kBos);
    return ids;
  }
  std::vector<int32_t> encode_text(std::string_view text) const override {
    return bytes_to_ids(text);
  }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string s;
    for (int32_t id : ids) s += detok_->token_bytes(id);
    return s;
  }
  bool valid_token(int32_t id) const override { return id >= 0 && id < kVocab; }
  std::vector<int32_t> stop_tokens() const override { return {kEos}; }
  std::unique_ptr<OutputParser> new_output_parser(bool thinking) const override {
    return std::make_unique<FakeParser>(thinking);
  }
  std::shared_ptr<const engine::Detokenizer> detokenizer() const override { return detok_; }
  std::shared_ptr<const std::vector<std::string>> token_table() const override {
    auto t = std::make_shared<std::vector<std::string>>();
    for (int32_t i = 0; i < kVocab; ++i) t->push_back(detok_->token_bytes(i));
    return t;
  }
  int32_t think_end_token() const override { return -1; }  // "</think>" is 8 byte tokens here

  mutable Json last_conversation;

 private:
  std::shared_ptr<ByteDetokenizer> detok_ = std::make_shared<ByteDetokenizer>();
};

}  // namespace dsv4::server::testing
