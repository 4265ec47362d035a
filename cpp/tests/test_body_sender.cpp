// BodySender: one non-blocking sendmsg of head and body per attempt, on a dup of the caller's
// descriptor, by a thread; completions polled with the byte count or errno.
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "body_sender.hpp"
#include "check.hpp"

using namespace pyengine;

namespace {

std::string read_all(int fd, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, out.data() + got, n - got);
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  out.resize(got);
  return out;
}

std::vector<SendDone> wait_for(BodySender& s, size_t n) {
  std::vector<SendDone> all;
  while (all.size() < n && s.wait(5.0)) {
    for (auto& d : s.poll(1024)) all.push_back(d);
  }
  return all;
}

}  // namespace

void test_body_sender() {
  // SIGPIPE left at its default: an attempt on a closed peer must not kill the process
  // (MSG_NOSIGNAL), only answer EPIPE.
  const auto old_handler = ::signal(SIGPIPE, SIG_DFL);
  int sv[2];
  CHECK(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  const std::string head = "PUT /c/b HTTP/1.1\r\n\r\n", body(100000, 'b');

  {
    BodySender s;
    CHECK(s.send(sv[0], reinterpret_cast<const uint8_t*>(head.data()), head.size(),
                 reinterpret_cast<const uint8_t*>(body.data()), body.size(), 7));
    auto done = wait_for(s, 1);
    CHECK(done.size() == 1);
    if (done.size() == 1) {
      CHECK(done[0].token == 7);
      CHECK(done[0].error == 0);
      CHECK(done[0].sent_bytes == static_cast<int64_t>(head.size() + body.size()));
    }
    CHECK(read_all(sv[1], head.size() + body.size()) == head + body);  // in order, whole
  }

  // a full buffer: nothing taken, no error; a descriptor that cannot be duplicated: refused
  {
    const int small = 4096;
    ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    const std::string filler(4096, 'f');
    while (::send(sv[0], filler.data(), filler.size(), MSG_DONTWAIT) > 0) {
    }
    const SendDone full = send_once(sv[0], reinterpret_cast<const uint8_t*>(head.data()),
                                    head.size(), reinterpret_cast<const uint8_t*>(body.data()),
                                    body.size(), 8);
    CHECK(full.sent_bytes == 0 && full.error == 0);
    BodySender s;
    CHECK(!s.send(-1, nullptr, 0, nullptr, 0, 9));
    CHECK(s.poll(16).empty());
  }

  // the caller's descriptor closed right after the submit: the attempt still has its own; the
  // peer gone: EPIPE, and the process lives
  {
    int tv[2];
    CHECK(::socketpair(AF_UNIX, SOCK_STREAM, 0, tv) == 0);
    BodySender s;
    CHECK(s.send(tv[0], reinterpret_cast<const uint8_t*>(head.data()), head.size(),
                 reinterpret_cast<const uint8_t*>(body.data()), 1000, 10));
    ::close(tv[0]);
    auto done = wait_for(s, 1);
    CHECK(done.size() == 1 && done[0].error == 0 &&
          done[0].sent_bytes == static_cast<int64_t>(head.size() + 1000));
    CHECK(read_all(tv[1], head.size() + 1000).size() == head.size() + 1000);
    ::close(tv[1]);

    int uv[2];
    CHECK(::socketpair(AF_UNIX, SOCK_STREAM, 0, uv) == 0);
    ::close(uv[1]);
    CHECK(s.send(uv[0], reinterpret_cast<const uint8_t*>(head.data()), head.size(),
                 reinterpret_cast<const uint8_t*>(body.data()), 10, 11));
    done = wait_for(s, 1);
    CHECK(done.size() == 1 && done[0].error == EPIPE && done[0].sent_bytes == 0);
    ::close(uv[0]);
  }

  // close() makes every queued attempt before the thread stops; later sends are refused
  {
    int wv[2];
    CHECK(::socketpair(AF_UNIX, SOCK_STREAM, 0, wv) == 0);
    BodySender s;
    for (uint64_t t = 1; t <= 50; ++t) {
      CHECK(s.send(wv[0], reinterpret_cast<const uint8_t*>(head.data()), head.size(),
                   reinterpret_cast<const uint8_t*>(body.data()), 10, t));
    }
    s.close();
    CHECK(s.poll(1024).size() == 50);
    CHECK(!s.send(wv[0], nullptr, 0, nullptr, 0, 51));
    CHECK(read_all(wv[1], 50 * (head.size() + 10)).size() == 50 * (head.size() + 10));
    ::close(wv[0]);
    ::close(wv[1]);
  }
  ::close(sv[0]);
  ::close(sv[1]);
  ::signal(SIGPIPE, old_handler);
}
