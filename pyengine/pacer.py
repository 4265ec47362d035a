"""The one retry policy used by every request path (rclone ``lib/pacer`` style).

Every request to the destination goes through :meth:`Pacer.call`. The request function raises
:class:`RetryableHTTPError` for any HTTP failure status (or lets a connection error propagate);
the pacer alone decides, from the table below, whether to try again and how long to wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import aiohttp

from .options import RetryPolicy

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

# Transport failures that mean "the request may not have arrived": always safe to retry because
# every request we send is idempotent (Put Blob/Block/Block List overwrite with the same bytes).
RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,  # includes ServerDisconnectedError, ClientConnectorError
    aiohttp.ClientPayloadError,  # response body cut short
    asyncio.TimeoutError,  # sock_read / total timeout of the session
    ConnectionResetError,
    BrokenPipeError,
)


class RetryableHTTPError(Exception):
    """An HTTP failure status the pacer may retry; :data:`RETRY_STATUS` decides whether it does."""

    def __init__(self, status: int, headers: Mapping[str, str], message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.headers = headers
        self.message = message

    @property
    def retryable(self) -> bool:
        return RETRY_STATUS.get(self.status, False)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RetryableHTTPError):
        return exc.retryable
    return isinstance(exc, RETRY_EXCEPTIONS)


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


class Pacer:
    """Exponential back-off with full jitter, honouring the server's Retry-After, within a budget.

    ``sleep`` and ``rng`` are injectable so the schedule can be tested without waiting.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._rng = rng
        #: requests tried again (all calls together), for stats
        self.retries = 0
        #: seconds spent waiting between tries (all calls together)
        self.waited_s = 0.0

    def delay_s(self, attempt: int, exc: BaseException) -> float:
        """Wait before try number ``attempt + 1`` (``attempt`` >= 1 tries have failed)."""
        p = self.policy
        # Full jitter (AWS architecture blog "Exponential Backoff and Jitter"): uniform in
        # [0, base * 2^(n-1)] spreads a herd of throttled workers instead of syncing them.
        ceiling_s = min(p.max_delay_s, p.base_delay_s * (2 ** (attempt - 1)))
        delay = self._rng() * ceiling_s
        if isinstance(exc, RetryableHTTPError):
            asked_s = server_delay_s(exc.headers)
            if asked_s is not None:
                delay = max(delay, asked_s)
        return min(delay, p.max_delay_s)

    async def call(self, fn: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run ``fn`` until it returns, a final error occurs, or tries/budget run out.

        Raises the last exception of ``fn`` unchanged; ``what`` names the request in the log.
        """
        p = self.policy
        waited_s = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except Exception as exc:  # CancelledError (BaseException) is never retried
                if not is_retryable(exc) or attempt >= p.max_tries:
                    raise
                delay = self.delay_s(attempt, exc)
                if waited_s + delay > p.budget_s:
                    raise
                log.debug("retry %d of %s in %.3fs after %s", attempt, what, delay, _brief(exc))
                self.retries += 1
                waited_s += delay
                self.waited_s += delay
                await self._sleep(delay)


def _brief(exc: BaseException) -> str:
    if isinstance(exc, RetryableHTTPError):
        return f"HTTP {exc.status}"
    return type(exc).__name__
