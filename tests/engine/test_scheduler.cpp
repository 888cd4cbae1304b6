// FIFO scheduling, queue depth and cancellation of queued and running requests.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "engine/scheduler.h"
#include "fakes.h"

namespace dsv4::engine {
namespace {

using namespace std::chrono_literals;
using testing::PieceDetokenizer;
using testing::ScriptedModel;

GenerationRequest request(int64_t max_tokens) {
  GenerationRequest req;
  req.prompt = {1, 2};
  req.sampling.temperature = 0.0f;
  req.max_tokens = max_tokens;
  return req;
}

// Collects events until the final one (or fails after 10 s).
std::vector<GenerationEvent> drain(RequestHandle& h) {
  std::vector<GenerationEvent> out;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto ev = h.next_event(50ms);
    if (!ev) continue;
    out.push_back(std::move(*ev));
    if (out.back().done) return out;
  }
  ADD_FAILURE() << "request did not finish";
  return out;
}

struct Fixture {
  std::shared_ptr<ScriptedModel> model;
  std::unique_ptr<Scheduler> sched;
  explicit Fixture(std::chrono::milliseconds delay) {
    model = std::make_shared<ScriptedModel>(32, std::vector<int32_t>{}, 10);
    model->step_delay = delay;
    sched = std::make_unique<Scheduler>(
        model, std::make_shared<PieceDetokenizer>(std::map<int32_t, std::string>{{10, "x"}}));
  }
};

TEST(Scheduler, RunsOneAtATimeInOrder) {
  Fixture f(5ms);
  auto a = f.sched->submit(request(5));
  auto b = f.sched->submit(request(3));
  // b cannot start before a has finished.
  auto first = a->next_event(5s);
  ASSERT_TRUE(first);
  EXPECT_EQ(b->state(), RequestHandle::State::kQueued);
  EXPECT_EQ(f.sched->queue_depth(), 1u);
  auto ea = drain(*a);
  EXPECT_EQ(ea.back().finish, FinishReason::kLength);
  auto eb = drain(*b);
  EXPECT_EQ(eb.back().finish, FinishReason::kLength);
  EXPECT_GE(eb.front().time, ea.back().time);
  std::string text;
  for (auto& e : eb) text += e.text;
  EXPECT_EQ(text, "xxx");
  EXPECT_EQ(f.sched->queue_depth(), 0u);
}

TEST(Scheduler, CancelQueuedDropsItWithoutRunning) {
  Fixture f(20ms);
  auto a = f.sched->submit(request(10));
  ASSERT_TRUE(a->next_event(5s));  // a is running
  auto b = f.sched->submit(request(10));
  EXPECT_EQ(f.sched->queue_depth(), 1u);
  b->cancel();
  EXPECT_EQ(f.sched->queue_depth(), 0u);
  auto ev = b->next_event(0ms);  // delivered at once, not after a finishes
  ASSERT_TRUE(ev);
  EXPECT_TRUE(ev->done);
  EXPECT_EQ(ev->finish, FinishReason::kCancelled);
  drain(*a);
  const int calls = f.model->forward_calls.load();
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(f.model->forward_calls.load(), calls);  // b never ran
}

TEST(Scheduler, CancelRunningStopsWithinOneToken) {
  Fixture f(10ms);
  auto a = f.sched->submit(request(100000));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(a->next_event(5s));
  a->cancel();
  const int calls_at_cancel = f.model->forward_calls.load();
  auto rest = drain(*a);
  EXPECT_EQ(rest.back().finish, FinishReason::kCancelled);
  EXPECT_LE(f.model->forward_calls.load(), calls_at_cancel + 1);
  // The worker is free again.
  auto b = f.sched->submit(request(2));
  EXPECT_EQ(drain(*b).back().finish, FinishReason::kLength);
}

TEST(Scheduler, DestructorCancelsEverything) {
  auto f = std::make_unique<Fixture>(10ms);
  auto a = f->sched->submit(request(100000));
  auto b = f->sched->submit(request(10));
  ASSERT_TRUE(a->next_event(5s));
  f.reset();
  EXPECT_EQ(drain(*a).back().finish, FinishReason::kCancelled);
  EXPECT_EQ(drain(*b).back().finish, FinishReason::kCancelled);
}

}  // namespace
}  // namespace dsv4::engine
