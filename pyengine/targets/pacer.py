"""The one pacer every request path goes through (rclone ``lib/pacer`` style).

Every request to the destination goes through :meth:`Pacer.call`. The request function raises
:class:`RetryableHTTPError` for any HTTP failure status (or lets a connection error propagate);
the pacer alone decides, from the table below, whether to try again and how long to wait. It also
holds what is shared by all requests of one destination account:

- an adaptive concurrency limit (:class:`AdaptiveLimit`: additive increase, multiplicative
  decrease on throttling and timeouts), so a throttled job sends less and then recovers;
- optional caps on requests per second and on body bytes per second (:class:`TokenBucket`);
- the stall watch (:class:`StallWatch`) a request arms around each try.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from pyengine.options import RetryPolicy

T = TypeVar("T")

log = logging.getLogger("pyengine")

# Classification table: HTTP status -> retry?  Anything not listed is final (no retry).
# Why each one: Azure Storage "Troubleshoot / error codes" and the SDK's ExponentialRetry,
# which retry 408, 429 and 5xx except 501/505 and never retry other 4xx.
RETRY_STATUS: Mapping[int, bool] = {
    408: True,  # request timeout: the server gave up reading our body; send it again
    429: True,  # throttled (account or partition over its target): back off
    500: True,  # internal error / OperationTimedOut: transient on the service side
    502: True,  # bad gateway: front end could not reach the partition server
    503: True,  # ServerBusy: partition or account over its scalability target
    504: True,  # gateway timeout
    400: False,  # bad request (invalid header, Md5Mismatch, Crc64Mismatch): our bytes are wrong
    401: False,  # no/invalid credential: retrying the same credential cannot help
    403: False,  # AuthenticationFailed / AuthorizationPermissionMismatch: wrong key or SAS
    404: False,  # ContainerNotFound / BlobNotFound: the caller decides what that means
    409: False,  # conflict (container being deleted, lease, blob type): state, not transience
}

#: the service asked us to slow down: waits after these count as throttled time
THROTTLE_STATUS = frozenset({429, 503})
#: throttling and timeouts: the concurrency limit is cut (multiplicative decrease). Not 500/502
#: or a reset connection: those say nothing about our request rate.
SLOWDOWN_STATUS = frozenset({408, 429, 503, 504})


class RequestStalled(Exception):
    """A try made no progress (no body byte taken, no response byte) for ``stalled_s``."""

    def __init__(self, stalled_s: float) -> None:
        super().__init__(f"no progress for {stalled_s:g} s")
        self.stalled_s = stalled_s


# Transport failures that mean "the request may not have arrived": always safe to retry because
# every request we send is idempotent (Put Blob/Block/Block List overwrite with the same bytes).
RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,  # includes ServerDisconnectedError, ClientConnectorError
    aiohttp.ClientPayloadError,  # response body cut short
    asyncio.TimeoutError,  # sock_read / total timeout of the session
    ConnectionResetError,
    BrokenPipeError,
    RequestStalled,  # aborted by the stall watch: the connection is closed, the request resent
)


class RetryableHTTPError(Exception):
    """An HTTP failure status the pacer may retry; :data:`RETRY_STATUS` decides whether it does."""

    def __init__(self, status: int, headers: Mapping[str, str], message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.headers = headers
        self.message = message
        #: set by the pacer when it gives up: tries made and seconds since the first
        self.tries = 1
        self.elapsed_s = 0.0

    @property
    def retryable(self) -> bool:
        return RETRY_STATUS.get(self.status, False)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RetryableHTTPError):
        return exc.retryable
    return isinstance(exc, RETRY_EXCEPTIONS)


def is_slowdown(exc: BaseException) -> bool:
    """Throttling or a timeout: the destination has more than it can take from us."""
    if isinstance(exc, RetryableHTTPError):
        return exc.status in SLOWDOWN_STATUS
    return isinstance(exc, (asyncio.TimeoutError, RequestStalled))


def server_delay_s(headers: Mapping[str, str]) -> float | None:
    """The wait the server asked for: ``x-ms-retry-after-ms`` (Azure) or ``Retry-After`` (s)."""
    for name, scale in (("x-ms-retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            # Retry-After may also be an HTTP date; Azure Storage sends seconds, so ignore dates.
            continue
    return None


class TokenBucket:
    """``rate_per_s`` units per second with at most ``burst`` saved up.

    A taker may drive the bucket into debt and then sleeps until its share is paid: concurrent
    takers queue in the order they asked, and the long-run rate is exact whatever the sizes
    taken (a 256 KiB slice or one request).
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        # start empty: a cap holds from the first byte, not after a free burst
        self._tokens = 0.0
        self._last = clock()

    async def take(self, amount: float) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now
        self._tokens -= amount
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate_per_s)


class AdaptiveLimit:
    """Requests in flight at once, adapted AIMD-style (as TCP congestion control): +1 per
    ``limit`` successes, x0.5 on throttling or a timeout, between 1 and ``max_limit``.

    One cut per round trip: a slowdown from a request that started before the last cut is the
    same congestion already answered, so 64 simultaneous 503s halve the limit once, not 6 times.
    """

    def __init__(self, max_limit: int, *, decrease_factor: float = 0.5) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        self.max_limit = max_limit
        self.decrease_factor = decrease_factor
        self.limit = float(max_limit)
        self.in_flight = 0
        #: lowest and highest whole limit reached (for the report)
        self.lowest = self.highest = max_limit
        self._generation = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> int:
        """Waits for a slot; returns the generation to hand back to :meth:`on_slowdown`."""
        if self.in_flight < self.current and not self._waiters:
            self.in_flight += 1
            return self._generation
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was granted just as we were cancelled
            else:
                self._waiters.remove(fut)
            raise
        return self._generation

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.current:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    def on_success(self) -> None:
        if self.limit < self.max_limit:
            self.limit = min(float(self.max_limit), self.limit + 1.0 / self.limit)
            self.highest = max(self.highest, self.current)
            self._wake()

    def on_slowdown(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._generation += 1
        self.limit = max(1.0, self.limit * self.decrease_factor)
        self.lowest = min(self.lowest, self.current)
        log.debug("concurrency cut to %d", self.current)


class StallWatch:
    """Aborts a try that makes no progress for ``stall_s`` (raises :class:`RequestStalled`).

    The request calls :meth:`touch` whenever it makes progress (a body slice taken by the
    socket, the response headers, a response chunk) and :meth:`pause` while it waits on
    purpose (a bandwidth cap), so a slow but moving request is never aborted.

    A touch only notes the time: the one timer of the try, when it fires, looks at the last
    touch and sleeps again for what is left. (asyncio.timeout's reschedule on every touch
    cancelled and pushed a timer three times per small Put Blob: ~5 % of the event loop's
    CPU in bench upload's small files, py-spy.) A stall still aborts stall_s after the last
    progress, as the asyncio.timeout did; the cancellation is taken back the same way.
    """

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._touched_s = 0.0
        self._paused = False
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> StallWatch:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("StallWatch must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._touched_s = loop.time()
        self._timer = loop.call_at(self._touched_s + self.stall_s, self._check)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._expired:
            assert self._task is not None
            # as asyncio.timeout: ours was the cancellation unless someone else's is pending
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise RequestStalled(self.stall_s) from None
        return None

    def _check(self) -> None:
        assert self._loop is not None and self._task is not None
        self._timer = None
        due_s = self._touched_s + self.stall_s
        if due_s > self._loop.time():  # progress since the timer was set: wait for the rest
            self._timer = self._loop.call_at(due_s, self._check)
            return
        self._expired = True
        self._task.cancel()

    def touch(self) -> None:
        assert self._loop is not None
        self._touched_s = self._loop.time()
        if self._paused and not self._expired:
            self._paused = False
            self._timer = self._loop.call_at(self._touched_s + self.stall_s, self._check)

    def pause(self) -> None:
        self._paused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def expired(self) -> bool:
        """Whether this watch aborted its try."""
        return self._expired


class Pacer:
    """Exponential back-off with full jitter, honouring the server's Retry-After, bounded by the
    time since a request's first try; plus the limits shared by every request of one store.

    ``sleep``, ``clock`` and ``rng`` are injectable so the schedule can be tested without waiting.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        max_concurrency: int = 64,
        max_requests_per_s: float | None = None,
        cap_bytes_per_s: float | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self.limit = AdaptiveLimit(max_concurrency)
        #: one request at a time may go over the rate (burst 1): a cap is a cap
        self.request_rate = (
            TokenBucket(max_requests_per_s, 1.0, clock=clock, sleep=sleep)
            if max_requests_per_s
            else None
        )
        #: body bytes; the burst of 64 KiB is a quarter of a slice, well inside the ±10 % a
        #: cap must hold over seconds
        self.bandwidth = (
            TokenBucket(cap_bytes_per_s, 64 * 1024, clock=clock, sleep=sleep)
            if cap_bytes_per_s
            else None
        )
        #: requests tried again (all calls together), for stats
        self.retries = 0
        #: seconds spent waiting between tries (all calls together)
        self.waited_s = 0.0
        #: wall-clock seconds during which at least one request was backing off after a
        #: 429/503 (a union of intervals, so it compares with the job's elapsed time)
        self.throttled_s = 0.0
        self._throttled_now = 0
        self._throttled_since = 0.0
        #: no try starts before this time (clock): set by a throttled answer at concurrency 1
        self._not_before = 0.0
        #: tries aborted by the stall watch
        self.stalls = 0

    def stall_watch(self) -> StallWatch:
        return StallWatch(self.policy.stall_timeout_s)

    def delay_s(self, attempt: int, exc: BaseException) -> float:
        """Wait before try number ``attempt + 1`` (``attempt`` >= 1 tries have failed)."""
        p = self.policy
        # Full jitter (AWS architecture blog "Exponential Backoff and Jitter"): uniform in
        # [0, base * 2^(n-1)] spreads a herd of throttled workers instead of syncing them.
        ceiling_s = min(p.max_delay_s, p.base_delay_s * (2 ** min(attempt - 1, 30)))
        delay = self._rng() * ceiling_s
        if isinstance(exc, RetryableHTTPError):
            asked_s = server_delay_s(exc.headers)
            if asked_s is not None:
                delay = max(delay, asked_s)
        return min(delay, p.max_delay_s)

    async def call(self, fn: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run ``fn`` in a concurrency slot until it returns, a final error occurs, or the
        policy's time (or try) limit runs out.

        Raises the last exception of ``fn`` unchanged; ``what`` names the request in the log.
        """
        p = self.policy
        start: float | None = None
        attempt = 0
        while True:
            attempt += 1
            generation = await self._acquire()
            if start is None:
                # from the first try, not from the queue for a slot: at concurrency 1 behind
                # thousands of queued requests the wait says nothing about this request
                start = self._clock()
            try:
                if self.request_rate is not None:
                    await self.request_rate.take(1)
                result = await fn()
            except Exception as exc:  # CancelledError (BaseException) is never retried
                self.limit.release()
                if is_slowdown(exc):
                    self.limit.on_slowdown(generation)
                if isinstance(exc, RequestStalled):
                    self.stalls += 1
                if not is_retryable(exc):
                    raise
                delay = self.delay_s(attempt, exc)
                elapsed_s = self._clock() - start
                out_of_tries = p.max_tries is not None and attempt >= p.max_tries
                if out_of_tries or elapsed_s + delay > p.max_elapsed_s:
                    if isinstance(exc, RetryableHTTPError):
                        exc.tries, exc.elapsed_s = attempt, elapsed_s
                    raise
                log.debug("retry %d of %s in %.3fs after %s", attempt, what, delay, _brief(exc))
                self.retries += 1
                self.waited_s += delay
                if isinstance(exc, RetryableHTTPError) and exc.status in THROTTLE_STATUS:
                    if self.limit.current == 1:
                        # Already down to one request at a time and still throttled: answers
                        # come back at once, so one slot still sends tens of requests a second
                        # (959 tries in a 30 s storm); now nobody sends until this wait is over.
                        self._not_before = max(self._not_before, self._clock() + delay)
                    await self._throttled_sleep(delay)
                else:
                    await self._sleep(delay)
            except BaseException:
                self.limit.release()
                raise
            else:
                self.limit.release()
                self.limit.on_success()
                return result

    async def _acquire(self) -> int:
        """A concurrency slot, once the throttling gate (if any) is open."""
        while True:
            wait_s = self._not_before - self._clock()
            if wait_s > 0:
                await self._throttled_sleep(wait_s)
                continue
            generation = await self.limit.acquire()
            if self._clock() >= self._not_before:
                return generation
            self.limit.release()  # the gate closed while we queued for the slot

    async def _throttled_sleep(self, delay_s: float) -> None:
        if self._throttled_now == 0:
            self._throttled_since = self._clock()
        self._throttled_now += 1
        try:
            await self._sleep(delay_s)
        finally:
            self._throttled_now -= 1
            if self._throttled_now == 0:
                self.throttled_s += self._clock() - self._throttled_since


def _brief(exc: BaseException) -> str:
    if isinstance(exc, RetryableHTTPError):
        return f"HTTP {exc.status}"
    return type(exc).__name__
