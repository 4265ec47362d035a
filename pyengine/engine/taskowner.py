"""An owner for a job's background tasks: asyncio.TaskGroup's contract on Python 3.10.

The loop keeps only weak references to tasks, and a task nobody awaits loses its exception (the
loop logs "exception was never retrieved", at best). Every task a job starts is therefore spawned
through one :class:`TaskOwner`, which

- keeps a strong reference to each task until it ends;
- on the first failure of any task, cancels all the others and the body of the ``async with``
  (the job aborts at once instead of running on without, say, its journal);
- on leaving the ``async with`` (normally, by an error, or cancelled), cancels what is left and
  awaits every task, so nothing of the job runs after it;
- re-raises the first failure (or the body's own error, or the cancellation).

asyncio.TaskGroup (3.11+) does this too, but the package supports 3.10, and TaskGroup wraps
failures in an ExceptionGroup, where the job wants its one JournalError with its one-line text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("pyengine")

T = TypeVar("T")


class TaskOwner:
    """``async with TaskOwner() as owner: owner.spawn(coro)``; see the module docstring."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: BaseException | None = None
        self._parent: asyncio.Task[Any] | None = None
        self._entered = False
        self._exiting = False
        self._closed = False
        self._aborting = False
        self._parent_cancel_requested = False
        self._all_done: asyncio.Future[None] | None = None

    @property
    def failure(self) -> BaseException | None:
        """The first failure of a task (or the one given to :meth:`fail`), if any."""
        return self._failure

    @property
    def aborting(self) -> bool:
        """True once a failure or an exit started cancelling the tasks: spawn nothing more."""
        return self._aborting

    def __len__(self) -> int:
        return len(self._tasks)

    async def __aenter__(self) -> TaskOwner:
        if self._entered:
            raise RuntimeError("a TaskOwner is entered once")
        self._entered = True
        self._parent = asyncio.current_task()
        return self

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Start coro as a task owned here. While aborting, the task is cancelled at once (its
        coroutine then runs no further than its first await, and its finally blocks run)."""
        if not self._entered or self._closed:
            coro.close()
            raise RuntimeError("TaskOwner is not running")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._on_done)
        if self._aborting:
            task.cancel()
        return task

    def fail(self, exc: BaseException) -> None:
        """Record a failure seen outside a task (a loop callback): the job aborts as if a task
        had raised it."""
        if self._failure is None:
            self._failure = exc
            self._abort()
        else:
            log.debug("a further failure while aborting: %r", exc)

    def _abort(self) -> None:
        self._aborting = True
        for task in list(self._tasks):
            task.cancel()
        parent = self._parent
        # The body of the `async with` is interrupted too, unless it is already leaving (then
        # __aexit__ is waiting for the tasks and raises the failure itself).
        if (
            self._failure is not None
            and not self._exiting
            and not self._parent_cancel_requested
            and parent is not None
            and not parent.done()
        ):
            self._parent_cancel_requested = True
            parent.cancel()

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not self._tasks and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._exiting = True
        body_cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        if exc_type is not None:
            self._abort()  # the body failed or was cancelled: the tasks end with it
        cancelled_from_outside = False
        loop = asyncio.get_running_loop()
        while self._tasks:
            self._all_done = loop.create_future()
            try:
                await self._all_done
            except asyncio.CancelledError:
                # Cancelled while waiting for the tasks: they end now, and we still wait for
                # them, so that nothing of the job outlives this block.
                cancelled_from_outside = True
                self._abort()
            finally:
                self._all_done = None
        self._closed = True
        if self._parent_cancel_requested and self._parent is not None:
            uncancel = getattr(self._parent, "uncancel", None)  # 3.11+: undo our own cancel
            if uncancel is not None:
                uncancel()
        if self._failure is not None and (exc_type is None or body_cancelled):
            # The body saw only the cancellation this owner caused: the task's failure is the
            # news. (An outside cancellation at the same instant is indistinguishable on 3.10;
            # the job aborts either way.)
            raise self._failure
        if cancelled_from_outside and exc_type is None:
            raise asyncio.CancelledError
        return False  # the body's own error or cancellation propagates unchanged
