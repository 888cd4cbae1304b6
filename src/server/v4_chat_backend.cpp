#include "server/v4_chat_backend.h"

#include "chat/encoder.h"
#include "chat/parser.h"
#include "engine/v4_backend.h"

namespace dsv4::server {

namespace {

// chat::OutputParser events -> the server's. The official parser needs the
// EOS text to close the answer, which the engine never decodes (it stops on
// the EOS id), so finish() feeds it when the model stopped there. Once the official parser rejects
// the text (a random-weight model writes anything), the rest is passed through as content rather
// than dropped.
class V4OutputParser : public OutputParser {
 public:
  explicit V4OutputParser(bool thinking) : parser_(thinking) {}

  std::vector<OutputEvent> push(std::string_view text) override {
    if (raw_)
      return text.empty()
                 ? std::vector<OutputEvent>{}
                 : std::vector<OutputEvent>{{OutputEvent::Kind::kContent, std::string(text)}};
    return convert(parser_.feed(text));
  }

  std::vector<OutputEvent> finish(bool ended_by_eos) override {
    if (raw_) return {};
    // The EOS closes the answer for the official parser; a truncated output
    // is flushed as it stands.
    auto evs = ended_by_eos ? convert(parser_.feed(chat::kEosToken)) : std::vector<OutputEvent>{};
    if (!raw_) {
      auto tail = convert(parser_.finish());
      evs.insert(evs.end(), tail.begin(), tail.end());
    }
    return evs;
  }

 private:
  std::vector<OutputEvent> convert(const std::vector<chat::ParseEvent>& in) {
    std::vector<OutputEvent> out;
    for (const auto& e : in) {
      switch (e.type) {
        case chat::ParseEvent::Type::kReasoningDelta:
          out.push_back({OutputEvent::Kind::kReasoning, e.text});
          break;
        case chat::ParseEvent::Type::kContentDelta:
          out.push_back({OutputEvent::Kind::kContent, e.text});
          break;
        case chat::ParseEvent::Type::kToolCallStart:
          out.push_back({OutputEvent::Kind::kToolCallBegin, e.text});
          break;
        case chat::ParseEvent::Type::kToolCallArguments:
          out.push_back({OutputEvent::Kind::kToolCallArgs, e.text});
          break;
        case chat::ParseEvent::Type::kToolCallEnd:
          out.push_back({OutputEvent::Kind::kToolCallEnd, ""});
          break;
        case chat::ParseEvent::Type::kEnd:
          break;
        case chat::ParseEvent::Type::kError:
          raw_ = true;
          break;
      }
    }
    return out;
  }

  chat::OutputParser parser_;
  bool raw_ = false;
};

}  // namespace

V4ChatBackend::V4ChatBackend(std::shared_ptr<const Tokenizer> tok)
    : tok_(std::move(tok)), detok_(std::make_shared<engine::TokenizerDetokenizer>(tok_)) {}

std::string V4ChatBackend::render_chat(const Json& conversation) const {
  // The encoder reads tools and response_format from a system (or developer)
  // message: attach them to the first one, creating an empty system message
  // when the conversation has none (as chat::anthropic_to_conversation does).
  Json input = {{"messages", conversation.at("messages")},
                {"thinking_mode", conversation.at("thinking_mode")}};
  if (conversation.contains("reasoning_effort") && !conversation["reasoning_effort"].is_null())
    input["reasoning_effort"] = conversation["reasoning_effort"];
  const bool tools = conversation.contains("tools");
  const bool rf = conversation.contains("response_format");
  if (tools || rf) {
    Json& msgs = input["messages"];
    const std::string role0 = msgs.empty() ? "" : msgs[0].value("role", "");
    if (role0 != "system" && role0 != "developer")
      msgs.insert(msgs.begin(), Json{{"role", "system"}, {"content", ""}});
    if (rf) msgs[0]["response_format"] = conversation["response_format"];
    if (tools) {
      input["tools"] = conversation["tools"];
      input["tools_attached_to"] = 0;
    }
  }
  return chat::render(input);
}

std::vector<int32_t> V4ChatBackend::encode_chat(const Json& conversation) const {
  return tok_->encode(render_chat(conversation));
}

std::vector<int32_t> V4ChatBackend::encode_fim(const std::string& prefix,
                                               const std::optional<std::string>& suffix) const {
  // DeepSeek's FIM layout (V2/V3 and the V4 tokenizer's tokens): BOS,
  // <｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜>; the model writes the hole.
  // Without a suffix it is a plain continuation of the prompt. User text is
  // encoded without added tokens so it cannot inject control tokens.
  std::vector<int32_t> ids;
  if (tok_->bos_id() >= 0) ids.push_back(tok_->bos_id());
  auto append = [&](std::vector<int32_t> more) { ids.insert(ids.end(), more.begin(), more.end()); };
  if (!suffix) {
    append(tok_->encode_without_added_tokens(prefix));
    return ids;
  }
  auto special = [&](std::string_view name) {
    auto id = tok_->token_id(name);
    if (!id) fail("the tokenizer has no ", name, " token, so FIM is not available");
    ids.push_back(*id);
  };
  special("<｜fim▁begin｜>");
  append(tok_->encode_without_added_tokens(prefix));
  special("<｜fim▁hole｜>");
  append(tok_->encode_without_added_tokens(*suffix));
  special("<｜fim▁end｜>");
  return ids;
}

std::vector<int32_t> V4ChatBackend::encode_text(std::string_view text) const {
  return tok_->encode(text);
}

std::string V4ChatBackend::decode(std::span<const int32_t> ids) const {
  return tok_->decode(ids, false);
}

bool V4ChatBackend::valid_token(int32_t id) const {
  return tok_->is_valid_id(id);
}

std::vector<int32_t> V4ChatBackend::stop_tokens() const {
  if (tok_->eos_id() < 0) return {};
  return {tok_->eos_id()};
}

std::shared_ptr<const std::vector<std::string>> V4ChatBackend::token_table() const {
  std::call_once(table_once_, [&] {
    auto t = std::make_shared<std::vector<std::string>>(tok_->vocab_size());
    for (int32_t i = 0; i < tok_->vocab_size(); ++i) (*t)[i] = tok_->token_bytes(i);
    table_ = std::move(t);
  });
  return table_;
}

int32_t V4ChatBackend::think_end_token() const {
  return tok_->token_id(chat::kThinkEnd).value_or(-1);
}

std::unique_ptr<OutputParser> V4ChatBackend::new_output_parser(bool thinking) const {
  return std::make_unique<V4OutputParser>(thinking);
}

}  // namespace dsv4::server
