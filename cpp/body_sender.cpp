#include "body_sender.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>

namespace pyengine {

BodySender::BodySender() : owner_pid_(::getpid()), thread_([this] { run(); }) {}

BodySender::~BodySender() { close(); }

bool BodySender::send(int fd, const uint8_t* head, size_t head_bytes, const uint8_t* body,
                      size_t body_bytes, uint64_t token) {
  if (::getpid() != owner_pid_) return false;
  const int own = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) return false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) {
      ::close(own);
      return false;
    }
    jobs_.push_back(Job{own, head, head_bytes, body, body_bytes, token});
  }
  cv_.notify_one();
  return true;
}

void BodySender::close() {
  if (::getpid() != owner_pid_) {
    // a forked child: the thread is the parent's, and joining it would wait forever
    if (thread_.joinable()) thread_.detach();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void BodySender::run() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return closing_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // closing, and every queued attempt made
      job = jobs_.front();
      jobs_.pop_front();
    }
    SendDone done = send_once(job.fd, job.head, job.head_bytes, job.body, job.body_bytes,
                              job.token);
    ::close(job.fd);
    done_.push(done);
  }
}

SendDone send_once(int fd, const uint8_t* head, size_t head_bytes, const uint8_t* body,
                   size_t body_bytes, uint64_t token) {
  iovec iov[2] = {{const_cast<uint8_t*>(head), head_bytes},
                  {const_cast<uint8_t*>(body), body_bytes}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  for (;;) {
    const ssize_t n = ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return SendDone{token, static_cast<int64_t>(n), 0};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return SendDone{token, 0, 0};
    return SendDone{token, 0, errno};
  }
}

}  // namespace pyengine
