"""A test server that runs its own asyncio loop in a daemon thread, so a test can drive
``asyncio.run(...)`` or a CLI subprocess in the main thread while it serves. Subclasses give
``_start`` (bind, set ``self.port``) and ``_stop``; the fault proxy and the Data Box stand-in
are two of them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class LoopThreadServer:
    #: the thread's name, and what a failed start says
    thread_name = "test-server"
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    def start(self) -> Any:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.thread_name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.thread_name} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
