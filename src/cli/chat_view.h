// The terminal side of `dsv4 chat`: how a turn's reasoning, content, tool
// calls and notes are shown, with ANSI styles or as plain text.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

#include "cli/chat_session.h"
#include "util/error.h"

namespace dsv4::cli {

// True when NO_COLOR is set to something non-empty (no-color.org).
bool env_no_color();

struct Style {
  bool color = false;
  const char* dim() const { return color ? "\x1b[2m" : ""; }
  const char* bold() const { return color ? "\x1b[1m" : ""; }
  const char* cyan() const { return color ? "\x1b[36m" : ""; }
  const char* green() const { return color ? "\x1b[32m" : ""; }
  const char* yellow() const { return color ? "\x1b[33m" : ""; }
  const char* reset() const { return color ? "\x1b[0m" : ""; }
};

// Streams a turn to the terminal as the parser releases it: reasoning dim (or
// between [thinking] and [/thinking] lines without colour), tool calls and
// results on lines of their own, notes in brackets, and after each generation
// why it stopped (unless the model ended it) and, on a terminal, statistics.
class TerminalView : public TurnView {
 public:
  // Model output and notes go to `out`; --show-prompt prompts to `err`.
  TerminalView(std::FILE* out, std::FILE* err, Style style, bool show_prompt, bool show_stats)
      : out_(out), err_(err), s_(style), show_prompt_(show_prompt), show_stats_(show_stats) {}

  void prompt(const std::string& text, size_t tokens) override {
    start_ = std::chrono::steady_clock::now();
    if (!show_prompt_) return;
    std::fflush(out_);
    std::fprintf(err_, "[prompt %zu bytes, %zu tokens]\n", text.size(), tokens);
    std::fwrite(text.data(), 1, text.size(), err_);
    std::fputc('\n', err_);
    std::fflush(err_);
  }

  void reasoning(std::string_view text) override {
    if (section_ != Section::kReasoning) {
      close_section();
      line_start();
      section_ = Section::kReasoning;
      if (s_.color)
        write_style(s_.dim());
      else
        write("[thinking]\n");
    }
    write(text);
  }

  void content(std::string_view text) override {
    if (section_ != Section::kContent) {
      close_section();
      section_ = Section::kContent;
      // Leading blank lines the model puts after </think> or a tool result.
      size_t skip = text.find_first_not_of('\n');
      text.remove_prefix(skip == std::string_view::npos ? text.size() : skip);
      if (text.empty()) {
        section_ = Section::kContentStart;
        return;
      }
    }
    if (section_ == Section::kContentStart) {
      size_t skip = text.find_first_not_of('\n');
      text.remove_prefix(skip == std::string_view::npos ? text.size() : skip);
      if (text.empty()) return;
      section_ = Section::kContent;
    }
    write(text);
  }

  void tool_call_begin(const std::string& name) override {
    close_section();
    line_start();
    section_ = Section::kTool;
    write(str_cat(s_.cyan(), "[tool call] ", s_.bold(), name, s_.reset(), s_.cyan(), "("));
  }
  void tool_call_arguments(std::string_view text) override { write(text); }
  void tool_call_end() override {
    write(str_cat(")", s_.reset(), "\n"));
    section_ = Section::kNone;
  }

  void tool_result(const std::string& name, const std::string& result) override {
    close_section();
    line_start();
    write(str_cat(s_.green(), "[tool result] ", name, " -> ", result, s_.reset(), "\n"));
  }

  void notice(const std::string& text) override {
    close_section();
    line_start();
    write(str_cat(s_.yellow(), "[", text, "]", s_.reset(), "\n"));
  }

  void generation_end(const engine::GenerationEvent& last, int64_t cached_tokens) override {
    close_section();
    line_start();
    using engine::FinishReason;
    switch (last.finish) {
      case FinishReason::kLength:
        notice(str_cat(
            "stopped: ", last.completion_tokens, " tokens, the ",
            last.prompt_tokens + last.completion_tokens >= context_ ? "context" : "--max-tokens",
            " limit"));
        break;
      case FinishReason::kCancelled:
        notice("interrupted");
        break;
      case FinishReason::kInsufficientResource:
        notice(str_cat("the model failed: ", last.error));
        break;
      default:
        break;
    }
    if (show_stats_ && last.finish != FinishReason::kError) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      char line[256];
      const std::string cached =
          cached_tokens > 0 ? str_cat(" (", cached_tokens, " kept from the last answer)") : "";
      std::snprintf(
          line, sizeof(line), "%s(%lld prompt tokens%s + %lld generated, %.1f s, %.1f tok/s)%s\n",
          s_.dim(), static_cast<long long>(last.prompt_tokens), cached.c_str(),
          static_cast<long long>(last.completion_tokens), secs,
          secs > 0 ? static_cast<double>(last.completion_tokens) / secs : 0.0, s_.reset());
      write(line);
    }
  }

  void set_context(int64_t context) { context_ = context; }

 private:
  enum class Section { kNone, kReasoning, kContentStart, kContent, kTool };

  void write(std::string_view text) {
    if (text.empty()) return;
    std::fwrite(text.data(), 1, text.size(), out_);
    std::fflush(out_);
    at_line_start_ = text.back() == '\n';
  }
  // Escape codes do not move the cursor.
  void write_style(const char* sgr) {
    std::fputs(sgr, out_);
    std::fflush(out_);
  }
  void line_start() {
    if (!at_line_start_) write("\n");
  }
  void close_section() {
    if (section_ == Section::kReasoning) {
      if (s_.color) {
        write_style(s_.reset());
        line_start();
      } else {
        line_start();
        write("[/thinking]\n");
      }
    } else if (section_ == Section::kTool) {
      tool_call_end();
    }
    section_ = Section::kNone;
  }

  std::FILE* out_;
  std::FILE* err_;
  Style s_;
  bool show_prompt_, show_stats_;
  Section section_ = Section::kNone;
  bool at_line_start_ = true;
  int64_t context_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dsv4::cli
