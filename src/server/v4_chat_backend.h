// The server's ChatBackend over the real layers: the official-encoder
// compatible prompt renderer (src/chat), the V4 tokenizer and the incremental
// V4 output parser.
#pragma once

#include <memory>
#include <mutex>

#include "server/chat_backend.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

class V4ChatBackend : public ChatBackend {
 public:
  explicit V4ChatBackend(std::shared_ptr<const Tokenizer> tok);

  std::vector<int32_t> encode_chat(const Json& conversation) const override;
  std::vector<int32_t> encode_fim(const std::string& prefix,
                                  const std::optional<std::string>& suffix) const override;
  std::vector<int32_t> encode_text(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  bool valid_token(int32_t id) const override;
  std::vector<int32_t> stop_tokens() const override;
  std::unique_ptr<OutputParser> new_output_parser(bool thinking) const override;
  std::shared_ptr<const engine::Detokenizer> detokenizer() const override { return detok_; }
  std::shared_ptr<const std::vector<std::string>> token_table() const override;
  int32_t think_end_token() const override;

  // The prompt text encode_chat tokenizes (the official encoder's output).
  std::string render_chat(const Json& conversation) const;

 private:
  std::shared_ptr<const Tokenizer> tok_;
  std::shared_ptr<const engine::Detokenizer> detok_;
  mutable std::once_flag table_once_;
  mutable std::shared_ptr<const std::vector<std::string>> table_;
};

}  // namespace dsv4::server
