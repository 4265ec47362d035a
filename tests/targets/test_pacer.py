"""The pacer: retry policy, adaptive concurrency, caps and the stall watch. Pure logic with a fake
sleep and clock (no network); only the stall-watch tests wait, a fraction of a second."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from pyengine.options import RetryPolicy
from pyengine.targets.pacer import (
    AdaptiveLimit,
    Pacer,
    RequestStalled,
    RetryableHTTPError,
    StallWatch,
    TokenBucket,
    server_delay_s,
)


class FakeSleep:
    """Records each wait and moves a fake clock by it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now_s = 0.0

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.now_s += delay

    def clock(self) -> float:
        return self.now_s


class Script:
    """fn for Pacer.call: raises the scripted exceptions in turn, then returns "ok"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def http(status: int, **headers: str) -> RetryableHTTPError:
    return RetryableHTTPError(status, headers, "x")


def run(pacer: Pacer, fn: Script) -> str:
    return asyncio.run(pacer.call(fn, what="test"))


def make(policy: RetryPolicy | None = None, rng: float = 1.0) -> tuple[Pacer, FakeSleep]:
    sleep = FakeSleep()
    pacer = Pacer(policy or RetryPolicy(), sleep=sleep, clock=sleep.clock, rng=lambda: rng)
    return pacer, sleep


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_status_is_retried_until_success(status: int) -> None:
    pacer, sleep = make()
    fn = Script(http(status), http(status))
    assert run(pacer, fn) == "ok"
    assert fn.calls == 3
    assert pacer.retries == 2
    assert len(sleep.delays) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_final_status_is_raised_at_once(status: int) -> None:
    pacer, sleep = make()
    fn = Script(http(status))
    with pytest.raises(RetryableHTTPError) as info:
        run(pacer, fn)
    assert info.value.status == status
    assert fn.calls == 1
    assert sleep.delays == []
    assert pacer.retries == 0


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("boom"),
        asyncio.TimeoutError(),
        ConnectionResetError(104, "reset"),
    ],
)
def test_connection_failures_are_retried(exc: BaseException) -> None:
    pacer, _ = make()
    fn = Script(exc)
    assert run(pacer, fn) == "ok"
    assert fn.calls == 2


def test_programming_errors_are_not_retried() -> None:
    pacer, _ = make()
    fn = Script(ValueError("bug"))
    with pytest.raises(ValueError):
        run(pacer, fn)
    assert fn.calls == 1


def test_backoff_doubles_up_to_max_delay_with_full_jitter_at_top() -> None:
    policy = RetryPolicy(max_tries=7, base_delay_s=0.5, max_delay_s=4.0)
    pacer, sleep = make(policy, rng=1.0)
    fn = Script(*[http(503)] * 6)
    run(pacer, fn)
    assert sleep.delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_full_jitter_scales_the_ceiling_by_the_random_draw() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=100.0)
    pacer, sleep = make(policy, rng=0.25)
    run(pacer, Script(http(500), http(500), http(500)))
    assert sleep.delays == [0.25, 0.5, 1.0]


def test_gives_up_after_max_tries_with_the_last_error() -> None:
    pacer, sleep = make(RetryPolicy(max_tries=3, base_delay_s=0.01))
    fn = Script(http(503), http(503), http(502), http(500))
    with pytest.raises(RetryableHTTPError) as info:
        run(pacer, fn)
    assert info.value.status == 502
    assert fn.calls == 3
    assert len(sleep.delays) == 2


def test_retry_after_seconds_is_honoured_over_a_shorter_backoff() -> None:
    pacer, sleep = make(RetryPolicy(base_delay_s=0.1), rng=1.0)
    run(pacer, Script(http(503, **{"Retry-After": "3"})))
    assert sleep.delays == [3.0]


def test_x_ms_retry_after_ms_wins_over_retry_after() -> None:
    pacer, sleep = make(RetryPolicy(base_delay_s=0.1), rng=0.0)
    run(pacer, Script(http(429, **{"x-ms-retry-after-ms": "1500", "Retry-After": "9"})))
    assert sleep.delays == [1.5]


def test_server_delay_is_capped_by_max_delay() -> None:
    pacer, sleep = make(RetryPolicy(max_delay_s=2.0))
    run(pacer, Script(http(503, **{"Retry-After": "120"})))
    assert sleep.delays == [2.0]


def test_unparseable_retry_after_falls_back_to_backoff() -> None:
    assert server_delay_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    pacer, sleep = make(RetryPolicy(base_delay_s=0.2), rng=1.0)
    run(pacer, Script(http(503, **{"Retry-After": "soon"})))
    assert sleep.delays == [0.2]


def test_elapsed_window_stops_retrying_before_it_is_overspent() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, max_elapsed_s=10.0)
    pacer, sleep = make(policy, rng=1.0)
    fn = Script(*[http(503)] * 50)
    with pytest.raises(RetryableHTTPError) as info:
        run(pacer, fn)
    # 1 + 2 + 4 = 7 s spent; the next 8 s wait would end past the 10 s window
    assert sleep.delays == [1.0, 2.0, 4.0]
    assert info.value.tries == 4
    assert info.value.elapsed_s == 7.0


def test_retries_are_bounded_by_elapsed_time_not_by_a_small_try_count() -> None:
    # a 5-minute storm of 503s: ~40 tries at the 15 s ceiling; the default policy rides it out
    pacer, sleep = make(rng=1.0)
    fn = Script(*[http(503, **{"x-ms-retry-after-ms": "1000"})] * 40)
    assert run(pacer, fn) == "ok"
    assert fn.calls == 41
    assert 100 < sum(sleep.delays) < RetryPolicy().max_elapsed_s


def test_default_window_is_at_least_15_minutes() -> None:
    assert RetryPolicy().max_elapsed_s >= 900
    assert RetryPolicy().max_tries is None
    assert RetryPolicy().stall_timeout_s <= 60


def test_time_spent_in_the_requests_counts_against_the_window() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=1.0, max_elapsed_s=10.0)
    sleep = FakeSleep()
    pacer = Pacer(policy, sleep=sleep, clock=sleep.clock, rng=lambda: 1.0)

    async def slow_failure() -> None:
        sleep.now_s += 4.0  # each try takes 4 s before its 503
        raise http(503)

    with pytest.raises(RetryableHTTPError):
        asyncio.run(pacer.call(slow_failure, what="t"))
    # tries end at 4, 9 (+1 s wait each); a third wait would end at 10 + 4 > window
    assert sleep.delays == [1.0, 1.0]


def test_throttled_time_counts_only_waits_after_429_and_503() -> None:
    pacer, sleep = make(RetryPolicy(base_delay_s=1.0, max_delay_s=1.0), rng=1.0)
    run(pacer, Script(http(503), http(429), http(500), aiohttp.ServerDisconnectedError()))
    assert sleep.delays == [1.0, 1.0, 1.0, 1.0]
    assert pacer.throttled_s == 2.0
    assert pacer.waited_s == 4.0


def test_retries_accumulate_across_calls_for_stats() -> None:
    pacer, _ = make()
    run(pacer, Script(http(503)))
    run(pacer, Script(http(500), http(500)))
    assert pacer.retries == 3


def test_cancellation_is_not_retried() -> None:
    pacer, _ = make()
    fn = Script(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        run(pacer, fn)
    assert fn.calls == 1


# ------------------------------------------------------------------------------------------
# Adaptive concurrency


def test_concurrency_halves_once_per_round_of_throttled_requests() -> None:
    limit = AdaptiveLimit(64)
    gen = 0  # every request of the first round started before any cut
    for _ in range(64):
        limit.on_slowdown(gen)
    assert limit.current == 32
    limit.on_slowdown(1)  # a request started after the first cut is throttled too
    assert limit.current == 16
    assert limit.lowest == 16


def test_concurrency_never_drops_below_one_and_recovers_additively() -> None:
    limit = AdaptiveLimit(8)
    for gen in range(10):
        limit.on_slowdown(gen)
    assert limit.current == 1 and limit.lowest == 1
    # +1/limit per success: 1 -> 2 after one, then 2 -> 2.5 -> 2.9 -> 3.24
    for _ in range(4):
        limit.on_success()
    assert limit.current == 3
    for _ in range(100):
        limit.on_success()
    assert limit.current == 8 and limit.highest == 8


def test_throttled_pacer_sends_fewer_requests_at_once_then_recovers() -> None:
    """16 workers share one pacer; a storm of 503s cuts the requests in flight, and after the
    storm the limit grows back."""
    in_flight = 0
    peak_during_storm = 0
    peak_after = 0
    storm = {"left": 60}

    async def request() -> str:
        nonlocal in_flight, peak_during_storm, peak_after
        in_flight += 1
        try:
            await asyncio.sleep(0.001)
            if storm["left"] > 0:
                storm["left"] -= 1
                peak_during_storm = max(peak_during_storm, in_flight)
                raise http(503)
            peak_after = max(peak_after, in_flight)
            return "ok"
        finally:
            in_flight -= 1

    async def go() -> Pacer:
        pacer = Pacer(
            RetryPolicy(base_delay_s=0.001, max_delay_s=0.002),
            max_concurrency=16,
        )

        async def worker() -> None:
            for _ in range(20):
                await pacer.call(request, what="t")

        await asyncio.gather(*(worker() for _ in range(16)))
        return pacer

    pacer = asyncio.run(go())
    assert pacer.limit.lowest <= 2
    assert pacer.limit.current > pacer.limit.lowest  # recovered
    assert pacer.limit.highest == 16
    assert pacer.retries == 60


def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    async def go() -> AdaptiveLimit:
        limit = AdaptiveLimit(1)
        await limit.acquire()
        waiter = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        limit.release()
        await asyncio.wait_for(limit.acquire(), 1)  # not blocked by the cancelled waiter
        return limit

    assert asyncio.run(go()).in_flight == 1


# ------------------------------------------------------------------------------------------
# Caps


def test_token_bucket_holds_the_rate_over_many_takes() -> None:
    sleep = FakeSleep()
    bucket = TokenBucket(1000.0, 100.0, clock=sleep.clock, sleep=sleep)

    async def go() -> None:
        for _ in range(50):
            await bucket.take(200)

    asyncio.run(go())
    # 50 x 200 = 10,000 units at 1,000/s: 10 s, the first 200 included (the bucket starts empty)
    assert sleep.now_s == pytest.approx(10.0)


def test_request_rate_cap_spaces_the_tries() -> None:
    sleep = FakeSleep()
    pacer = Pacer(RetryPolicy(), max_requests_per_s=5.0, sleep=sleep, clock=sleep.clock)

    async def go() -> None:
        for _ in range(10):
            await pacer.call(Script(), what="t")

    asyncio.run(go())
    assert sleep.now_s == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------
# Stall watch (real time, fractions of a second)


def test_a_try_without_progress_is_aborted_as_stalled() -> None:
    async def go() -> None:
        async with StallWatch(0.1):
            await asyncio.sleep(5)

    with pytest.raises(RequestStalled, match=r"no progress for 0\.1 s"):
        asyncio.run(go())


def test_progress_keeps_a_slow_try_alive_and_pause_stops_the_watch() -> None:
    async def go() -> None:
        async with StallWatch(0.1) as watch:
            for _ in range(6):
                await asyncio.sleep(0.05)
                watch.touch()
            watch.pause()
            await asyncio.sleep(0.3)  # waiting on a cap on purpose
            watch.touch()

    t0 = time.monotonic()
    asyncio.run(go())  # no RequestStalled
    assert time.monotonic() - t0 >= 0.6


def test_a_stall_is_detected_stall_s_after_the_last_progress_not_the_first() -> None:
    async def timed() -> float:
        t0 = time.monotonic()
        with pytest.raises(RequestStalled):
            async with StallWatch(0.2) as watch:
                await asyncio.sleep(0.15)
                watch.touch()
                await asyncio.sleep(5)
        return time.monotonic() - t0

    elapsed_s = asyncio.run(timed())
    assert 0.34 <= elapsed_s < 0.6  # 0.15 s of progress, then 0.2 s without


class _CountingLoop(asyncio.SelectorEventLoop):
    """An event loop counting the timers scheduled on it."""

    timers = 0

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


def test_progress_schedules_no_timer_per_touch() -> None:
    """A touch only notes the time: a small request touches 3 times, a large one hundreds, and
    a timer pushed and cancelled per touch was ~5 % of the loop's CPU on small files."""
    loop = _CountingLoop()

    async def go() -> None:
        async with StallWatch(30.0) as watch:
            for _ in range(1000):
                watch.touch()
                await asyncio.sleep(0)

    try:
        loop.run_until_complete(go())
    finally:
        loop.close()
    assert loop.timers <= 2


def test_a_cancellation_from_outside_is_not_taken_for_a_stall() -> None:
    async def go() -> None:
        async with StallWatch(0.1):
            await asyncio.sleep(5)

    async def main() -> None:
        task = asyncio.create_task(go())
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_stalled_try_is_retried_by_the_pacer() -> None:
    tries = 0

    async def request() -> str:
        nonlocal tries
        tries += 1
        async with StallWatch(0.1):
            if tries == 1:
                await asyncio.sleep(5)
        return "ok"

    pacer = Pacer(RetryPolicy(base_delay_s=0.001))
    assert asyncio.run(pacer.call(request, what="t")) == "ok"
    assert tries == 2 and pacer.stalls == 1
    assert pacer.limit.current < pacer.limit.max_limit  # a timeout counts as a slowdown


def test_throttled_time_is_wall_clock_time_not_a_sum_over_requests() -> None:
    """8 requests throttled at once, each told to wait 0.1 s: the job was throttled ~0.1 s."""
    policy = RetryPolicy(base_delay_s=0.001, max_delay_s=1.0)
    pacer = Pacer(policy, max_concurrency=8, rng=lambda: 0.0)

    def request() -> Any:
        script = Script(http(503, **{"x-ms-retry-after-ms": "100"}))

        async def fn() -> str:
            await asyncio.sleep(0.01)  # all 8 in flight together: one cut, to 4
            return await script()

        return fn

    async def go() -> None:
        await asyncio.gather(*(pacer.call(request(), what="t") for _ in range(8)))

    asyncio.run(go())
    assert pacer.retries == 8
    assert 0.1 <= pacer.throttled_s < 0.3


def test_at_concurrency_one_a_throttled_answer_holds_back_every_request() -> None:
    """Down to one slot and still throttled: a 503 shuts the gate for its wait, so the other
    requests do not hammer the service with tries that come back at once."""
    sent: list[tuple[str, float]] = []
    t0 = 0.0

    def request(name: str, failures: int) -> Script:
        script = Script(*[http(503, **{"x-ms-retry-after-ms": "200"})] * failures)

        async def fn() -> str:
            sent.append((name, asyncio.get_running_loop().time() - t0))
            return await script()

        return fn  # type: ignore[return-value]

    async def go() -> None:
        nonlocal t0
        t0 = asyncio.get_running_loop().time()
        pacer = Pacer(RetryPolicy(base_delay_s=0.001), max_concurrency=1, rng=lambda: 0.0)
        first = asyncio.create_task(pacer.call(request("a", 2), what="a"))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, *(pacer.call(request(n, 0), what=n) for n in "bcd"))

    asyncio.run(go())
    # a: 503 at 0; b, c, d (arriving at 0.05) wait for the gate, not just for the slot
    assert sent[0][0] == "a"
    assert all(t >= 0.19 for n, t in sent if n != "a")
    assert sorted(n for n, _ in sent) == ["a", "a", "a", "b", "c", "d"]
