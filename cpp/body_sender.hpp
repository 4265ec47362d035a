// Small plain-HTTP requests (head and body) handed to the kernel by one thread beside the asyncio
// loop, which then serves other files: the loop's thread spent ~78 us of its ~365 us a 256 KiB
// file in that copy, and the loop is what bounds small files/s. This thread never touches
// Python, so unlike a Python thread it never waits for (or makes the loop wait for) the GIL.
//
// One non-blocking attempt per send: it reports how many bytes the kernel took, and the caller
// writes the rest through its transport, so a slow or stalled peer never blocks this thread.
// Each send works on a dup() of the caller's descriptor, made at submit time and closed after
// the attempt: the caller closing its own mid-send cannot hand this thread a reused number.
//
// A forked child inherits the object but not its thread (nor, maybe, an unlocked mutex): there
// send() refuses (the caller's transport sends) and close() lets the thread object go unjoined.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "completion_queue.hpp"

namespace pyengine {

struct SendDone {
  uint64_t token;
  int64_t sent_bytes;  // what the kernel took; 0 when its buffer was full
  int error;           // errno of a failed attempt (sent_bytes is then 0), else 0
};

class BodySender {
 public:
  BodySender();
  ~BodySender();
  BodySender(const BodySender&) = delete;
  BodySender& operator=(const BodySender&) = delete;

  // Queues one attempt. The two ranges must stay valid until its SendDone is polled. False when
  // the descriptor cannot be duplicated (out of descriptors, a closed one), after close(), or in
  // a forked child: nothing is queued.
  bool send(int fd, const uint8_t* head, size_t head_bytes, const uint8_t* body,
            size_t body_bytes, uint64_t token);

  int fileno() const { return done_.fileno(); }
  std::vector<SendDone> poll(size_t max_events) { return done_.poll(max_events); }
  bool wait(double timeout_s) { return done_.wait(timeout_s); }

  // Makes every queued attempt, then stops the thread. Idempotent.
  void close();

 private:
  struct Job {
    int fd;
    const uint8_t* head;
    size_t head_bytes;
    const uint8_t* body;
    size_t body_bytes;
    uint64_t token;
  };
  void run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool closing_ = false;
  pid_t owner_pid_;
  CompletionQueue<SendDone> done_;
  std::thread thread_;
};

// The attempt itself (the thread's step; also used by the tests): one sendmsg of both ranges,
// MSG_DONTWAIT | MSG_NOSIGNAL.
SendDone send_once(int fd, const uint8_t* head, size_t head_bytes, const uint8_t* body,
                   size_t body_bytes, uint64_t token);

}  // namespace pyengine
