#include "engine/scheduler.h"

#include <exception>

namespace dsv4::engine {

std::optional<GenerationEvent> RequestHandle::next_event(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  GenerationEvent ev = std::move(events_.front());
  events_.pop_front();
  return ev;
}

void RequestHandle::cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.store(true);
  if (state_ == State::kQueued) {
    state_ = State::kFinished;
    GenerationEvent ev;
    ev.done = true;
    ev.finish = FinishReason::kCancelled;
    ev.prompt_tokens = static_cast<int64_t>(request_.prompt.size());
    ev.time = std::chrono::steady_clock::now();
    events_.push_back(std::move(ev));
    cv_.notify_all();
  }
}

RequestHandle::State RequestHandle::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_;
}

bool RequestHandle::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ != State::kQueued) return false;
  state_ = State::kRunning;
  return true;
}

void RequestHandle::push(GenerationEvent&& ev) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ev.done) state_ = State::kFinished;
  events_.push_back(std::move(ev));
  cv_.notify_all();
}

Scheduler::Scheduler(std::shared_ptr<const LanguageModel> model,
                     std::shared_ptr<const Detokenizer> detok, std::shared_ptr<PrefixCache> cache)
    : model_(std::move(model)), detok_(std::move(detok)), cache_(std::move(cache)) {
  worker_ = std::thread([this] { worker_loop(); });
}

Scheduler::~Scheduler() {
  std::deque<std::shared_ptr<RequestHandle>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    left.swap(queue_);
    if (current_) current_->cancel();
  }
  cv_.notify_all();
  for (auto& h : left) h->cancel();
  worker_.join();
}

std::shared_ptr<RequestHandle> Scheduler::submit(GenerationRequest request) {
  auto handle = std::make_shared<RequestHandle>();
  handle->request_ = std::move(request);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) {
      handle->cancel();
      return handle;
    }
    queue_.push_back(handle);
  }
  cv_.notify_one();
  return handle;
}

size_t Scheduler::queue_depth() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& h : queue_)
    if (h->state() == RequestHandle::State::kQueued) ++n;
  return n;
}

void Scheduler::worker_loop() {
  while (true) {
    std::shared_ptr<RequestHandle> handle;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      handle = std::move(queue_.front());
      queue_.pop_front();
      if (!handle->start()) continue;  // cancelled while queued
      current_ = handle;
    }
    running_.store(1);
    bool finished = false;
    try {
      generate(
          *model_, *detok_, handle->request_, handle->cancelled_,
          [&](GenerationEvent&& ev) {
            finished = ev.done;
            handle->push(std::move(ev));
          },
          cache_.get());
    } catch (const std::exception& e) {
      // A fault outside the model step (e.g. in the detokenizer): end the
      // request with an error rather than leaving its client waiting.
      if (!finished) {
        GenerationEvent ev;
        ev.done = true;
        ev.finish = FinishReason::kError;
        ev.error = e.what();
        ev.time = std::chrono::steady_clock::now();
        handle->push(std::move(ev));
      }
    }
    running_.store(0);
    std::lock_guard<std::mutex> lock(mu_);
    current_.reset();
  }
}

}  // namespace dsv4::engine
