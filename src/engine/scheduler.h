// FIFO scheduler: requests queue and run one at a time on a worker thread
// (continuous batching is a later step). Callers follow a request through its
// RequestHandle: wait for events, see whether it is still queued, cancel it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "engine/generation.h"

namespace dsv4::engine {

class RequestHandle {
 public:
  enum class State { kQueued, kRunning, kFinished };

  // The next event, or nullopt if none arrived within `timeout` (the caller
  // can then send a keep-alive and look at state()).
  std::optional<GenerationEvent> next_event(std::chrono::milliseconds timeout);

  // Drops a queued request at once (it gets a kCancelled final event) or
  // stops a running one before its next model step.
  void cancel();

  State state() const;
  bool cancelled() const { return cancelled_.load(); }

 private:
  friend class Scheduler;
  bool start();  // queued -> running; false if it was cancelled meanwhile
  void push(GenerationEvent&& ev);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationEvent> events_;
  State state_ = State::kQueued;
  std::atomic<bool> cancelled_{false};
  GenerationRequest request_;
};

class Scheduler {
 public:
  // cache: optional prefix cache shared by every request (may be null).
  Scheduler(std::shared_ptr<const LanguageModel> model, std::shared_ptr<const Detokenizer> detok,
            std::shared_ptr<PrefixCache> cache = nullptr);
  ~Scheduler();  // cancels everything and joins the worker
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  std::shared_ptr<RequestHandle> submit(GenerationRequest request);

  size_t queue_depth() const;  // waiting, not cancelled
  size_t running() const { return running_.load(); }

  const LanguageModel& model() const { return *model_; }
  PrefixCache* prefix_cache() const { return cache_.get(); }
  // Prompt tokens the cache would serve this request now (0 without a cache).
  int64_t cached_prompt_tokens(const GenerationRequest& request) const {
    return engine::cached_prompt_tokens(*model_, cache_.get(), request);
  }

 private:
  void worker_loop();

  std::shared_ptr<const LanguageModel> model_;
  std::shared_ptr<const Detokenizer> detok_;
  std::shared_ptr<PrefixCache> cache_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<RequestHandle>> queue_;
  std::shared_ptr<RequestHandle> current_;
  std::atomic<size_t> running_{0};
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace dsv4::engine
