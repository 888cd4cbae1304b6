// One request over a scripted model: text, stops, limits, cancellation and
// faults.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include "engine/generation.h"
#include "fakes.h"

namespace dsv4::engine {
namespace {

using testing::PieceDetokenizer;
using testing::ScriptedModel;

constexpr int32_t kEos = 1;

PieceDetokenizer pieces() {
  return PieceDetokenizer({{kEos, "<eos>"},
                           {10, "Hel"},
                           {11, "lo"},
                           {12, " wor"},
                           {13, "ld"},
                           {14, "!"},
                           {15, " S"},
                           {16, "TO"},
                           {17, "P"},
                           {18, " tail"}});
}

struct Outcome {
  std::vector<GenerationEvent> events;
  std::string text() const {
    std::string s;
    for (const auto& e : events) s += e.text;
    return s;
  }
  const GenerationEvent& last() const { return events.back(); }
};

Outcome run(const ScriptedModel& model, GenerationRequest req, std::atomic<bool>* cancel = nullptr,
            std::function<void(const GenerationEvent&)> observe = {}) {
  auto detok = pieces();
  std::atomic<bool> never{false};
  Outcome r;
  generate(model, detok, req, cancel ? *cancel : never, [&](GenerationEvent&& e) {
    if (observe) observe(e);
    r.events.push_back(std::move(e));
  });
  return r;
}

GenerationRequest greedy(int64_t max_tokens) {
  GenerationRequest req;
  req.prompt = {5, 6, 7};
  req.sampling.temperature = 0.0f;
  req.max_tokens = max_tokens;
  req.stop_tokens = {kEos};
  return req;
}

TEST(Generate, StopsAtEosWithoutItsText) {
  ScriptedModel model(32, {10, 11, 14, kEos, 18});
  Outcome r = run(model, greedy(100));
  EXPECT_EQ(r.text(), "Hello!");
  EXPECT_TRUE(r.last().done);
  EXPECT_EQ(r.last().finish, FinishReason::kStop);
  EXPECT_TRUE(r.last().stopped_by_token);
  EXPECT_EQ(r.last().prompt_tokens, 3);
  EXPECT_EQ(r.last().completion_tokens, 4);  // the EOS is a generated token
  EXPECT_EQ(r.events.size(), 4u);            // one event per token
  EXPECT_EQ(model.forward_calls.load(), 4);  // prefill + 3 decode steps
}

TEST(Generate, MaxTokensGivesLength) {
  ScriptedModel model(32, {10, 11, 12, 13, kEos});
  Outcome r = run(model, greedy(3));
  EXPECT_EQ(r.text(), "Hello wor");
  EXPECT_EQ(r.last().finish, FinishReason::kLength);
  EXPECT_EQ(r.last().completion_tokens, 3);
  EXPECT_EQ(model.forward_calls.load(), 3);  // no step after the last token
}

TEST(Generate, StopStringAcrossTokensIsNotReturned) {
  ScriptedModel model(32, {10, 11, 15, 16, 17, 18, kEos});
  GenerationRequest req = greedy(100);
  req.stop = {"STOP"};
  std::vector<std::string> deltas;
  Outcome r = run(model, req, nullptr, [&](const GenerationEvent& e) { deltas.push_back(e.text); });
  EXPECT_EQ(r.text(), "Hello ");
  EXPECT_EQ(r.last().finish, FinishReason::kStop);
  EXPECT_FALSE(r.last().stopped_by_token);
  EXPECT_EQ(r.last().matched_stop, "STOP");
  // The "S" of " S" was held back when it arrived (it could start "STOP"),
  // so no delta ever contained any part of the stop string.
  for (const auto& d : deltas) EXPECT_EQ(d.find('S'), std::string::npos) << d;
}

TEST(Generate, HeldPrefixReleasedAtTheEnd) {
  ScriptedModel model(32, {10, 15, kEos});
  GenerationRequest req = greedy(100);
  req.stop = {" STOP"};
  Outcome r = run(model, req);
  EXPECT_EQ(r.text(), "Hel S");
  EXPECT_EQ(r.last().finish, FinishReason::kStop);
}

TEST(Generate, CancelStopsWithinOneToken) {
  ScriptedModel model(32, {}, 10);  // never ends by itself
  std::atomic<bool> cancel{false};
  int seen = 0;
  Outcome r = run(model, greedy(1000), &cancel, [&](const GenerationEvent&) {
    if (++seen == 3) cancel = true;
  });
  EXPECT_EQ(r.last().finish, FinishReason::kCancelled);
  EXPECT_EQ(r.last().completion_tokens, 3);
  EXPECT_EQ(model.forward_calls.load(), 3);  // prefill + 2 steps; none after the cancel
}

TEST(Generate, ModelFaultIsInsufficientResource) {
  ScriptedModel model(32, {}, 10);
  model.fail_at_call = 2;
  Outcome r = run(model, greedy(100));
  EXPECT_EQ(r.last().finish, FinishReason::kInsufficientResource);
  EXPECT_EQ(r.text(), "HelHel");  // the partial answer was delivered
  EXPECT_NE(r.last().error.find("simulated"), std::string::npos);
}

TEST(Generate, ContextLimitGivesLength) {
  ScriptedModel model(32, {}, 10, /*context=*/8);
  Outcome r = run(model, greedy(100));
  EXPECT_EQ(r.last().finish, FinishReason::kLength);
  EXPECT_EQ(r.last().completion_tokens, 5);  // 3 prompt + 5 = the 8-token window
}

TEST(Generate, InvalidRequestsAreErrors) {
  ScriptedModel model(32, {}, 10, 8);
  GenerationRequest req = greedy(10);
  req.prompt.clear();
  EXPECT_EQ(run(model, req).last().finish, FinishReason::kError);
  req = greedy(10);
  req.prompt.assign(8, 3);
  EXPECT_EQ(run(model, req).last().finish, FinishReason::kError);
  req = greedy(0);
  EXPECT_EQ(run(model, req).last().finish, FinishReason::kError);
  EXPECT_EQ(model.forward_calls.load(), 0);
}

TEST(Generate, SeedDeterminismEndToEnd) {
  // A flat model: every token equally likely, so the output is all sampler.
  class Flat : public LanguageModel {
   public:
    int vocab_size() const override { return 17; }
    int64_t context_length() const override { return 1000; }
    std::unique_ptr<ModelSequence> new_sequence() const override {
      struct S : ModelSequence {
        void forward(std::span<const int32_t> t, std::vector<float>* l) override {
          pos += t.size();
          if (l) l->assign(17, 0.0f);
        }
        int64_t position() const override { return pos; }
        int64_t pos = 0;
      };
      return std::make_unique<S>();
    }
  } flat;
  auto detok = pieces();
  auto tokens_of = [&](uint64_t seed) {
    GenerationRequest req;
    req.prompt = {1};
    req.max_tokens = 50;
    req.sampling.seed = seed;
    std::vector<int32_t> out;
    std::atomic<bool> no{false};
    generate(flat, detok, req, no, [&](GenerationEvent&& e) {
      for (auto& t : e.tokens) out.push_back(t.token);
    });
    return out;
  };
  EXPECT_EQ(tokens_of(7), tokens_of(7));
  EXPECT_NE(tokens_of(7), tokens_of(8));
  EXPECT_EQ(tokens_of(7).size(), 50u);
}

TEST(FinishReason, ApiNames) {
  EXPECT_STREQ(finish_reason_name(FinishReason::kStop), "stop");
  EXPECT_STREQ(finish_reason_name(FinishReason::kLength), "length");
  EXPECT_STREQ(finish_reason_name(FinishReason::kInsufficientResource),
               "insufficient_system_resource");
}

}  // namespace
}  // namespace dsv4::engine
