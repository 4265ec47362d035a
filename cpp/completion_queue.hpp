// Completions handed from worker threads to one consumer (the asyncio loop): a deque under a
// mutex, a condition variable for blocking waits, and an eventfd the loop watches with
// add_reader. The reader pipeline and restore's writer both deliver their events this way.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <system_error>
#include <vector>

namespace pyengine {

template <class Event>
class CompletionQueue {
 public:
  CompletionQueue() {
    fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  ~CompletionQueue() { ::close(fd_); }
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  int fileno() const { return fd_; }

  void push(Event event) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(std::move(event));
    }
    cv_.notify_one();
    signal();
  }

  // Up to max_events, oldest first. The eventfd is re-armed while events remain, so a loop that
  // takes a batch at a time is woken again for the rest.
  std::vector<Event> poll(size_t max_events) {
    uint64_t counter;
    [[maybe_unused]] ssize_t r = ::read(fd_, &counter, sizeof(counter));
    std::vector<Event> out;
    bool more;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const size_t n = std::min(max_events, events_.size());
      out.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        out.push_back(std::move(events_.front()));
        events_.pop_front();
      }
      more = !events_.empty();
    }
    if (more) signal();
    return out;
  }

  // Blocks until an event is queued (timeout_s < 0: no limit); false on timeout.
  bool wait(double timeout_s) {
    std::unique_lock<std::mutex> lock(mu_);
    auto ready = [this] { return !events_.empty(); };
    if (timeout_s < 0) {
      cv_.wait(lock, ready);
      return true;
    }
    return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), ready);
  }

 private:
  void signal() {
    const uint64_t one = 1;
    // EAGAIN only when the counter is saturated, i.e. the loop has a wake-up pending anyway.
    [[maybe_unused]] ssize_t w = ::write(fd_, &one, sizeof(one));
  }

  int fd_ = -1;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
};

}  // namespace pyengine
