"""The retry policy, with a fake sleep: pure logic, no network, no waiting."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from pyengine.options import RetryPolicy
from pyengine.pacer import Pacer, RetryableHTTPError, server_delay_s


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


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
    return Pacer(policy or RetryPolicy(), sleep=sleep, rng=lambda: rng), sleep


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
    policy = RetryPolicy(max_tries=7, base_delay_s=0.5, max_delay_s=4.0, budget_s=1000)
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


def test_budget_stops_retrying_before_overspending() -> None:
    policy = RetryPolicy(max_tries=100, base_delay_s=1.0, max_delay_s=8.0, budget_s=10.0)
    pacer, sleep = make(policy, rng=1.0)
    fn = Script(*[http(503)] * 50)
    with pytest.raises(RetryableHTTPError):
        run(pacer, fn)
    # 1 + 2 + 4 = 7 s spent; the next 8 s wait would exceed the 10 s budget
    assert sleep.delays == [1.0, 2.0, 4.0]
    assert sum(sleep.delays) <= policy.budget_s


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
