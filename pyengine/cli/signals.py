"""How `pyengine` stops on SIGINT (Ctrl-C) and SIGTERM (what systemd, Kubernetes and `timeout`
send): the same graceful stop for both.

- Before and after the event loop (parsing, imports, opening the journal, the summary), a
  signal raises :class:`Interrupted`; main() turns it into one line and exit 128 + signal.
- While a job's loop runs, the first signal cancels the job's main task once: the engine cancels
  the requests in flight, makes every acknowledged block durable in the journal and marks the job
  "interrupted" (job.py), so `pyengine resume` goes on from there. A second signal exits at
  once (os._exit): the journal is SQLite in WAL mode and survives that like a kill -9.

Kept free of heavy imports: pyengine.cli installs the handlers before it imports the rest of
the command line, so a Ctrl-C during start-up prints one line, not a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

TYPE_CHECKING = False  # not `from typing import ...`: this module loads before anything else
if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any, TypeVar

    T = TypeVar("T")

#: the signals that stop a job, and the exit status of each (the shell's 128 + signal number)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by ``signum``. A KeyboardInterrupt, so code that lets
    Ctrl-C through (``except Exception``) lets SIGTERM through too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def install_sync_handlers() -> None:
    """Outside an event loop: SIGINT and SIGTERM raise Interrupted (main thread only)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_interrupted)


def run_interruptible(coro: Coroutine[Any, Any, T], *, on_stop: str) -> T:
    """``asyncio.run(coro)``, stopped gracefully by the first SIGINT or SIGTERM (its main task
    cancelled once; ``on_stop`` printed to stderr) and at once by a second one. Raises
    Interrupted once the coroutine has ended after a signal, whatever it returned."""
    import asyncio  # here: this module is imported before anything heavy (see above)

    received: list[int] = []

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if received:
                sys.stderr.write("interrupted again: exiting now (resumable from the journal)\n")
                sys.stderr.flush()
                os._exit(exit_status(signum))
            received.append(signum)
            sys.stderr.write(f"{signal.Signals(signum).name}: {on_stop} (again to exit at once)\n")
            sys.stderr.flush()
            task.cancel()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        return await coro

    try:
        result = asyncio.run(guarded())
    except (asyncio.CancelledError, KeyboardInterrupt):
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        # the loop's close restored the defaults: back to raising Interrupted until exit
        install_sync_handlers()
    if received:
        raise Interrupted(received[0])
    return result
