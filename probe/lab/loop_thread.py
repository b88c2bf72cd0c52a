"""An asyncio event loop run in a background thread, for the lab's servers that share one loop.

The smart host fleet and the client submission ports each serve all their listeners from one loop; this is
that loop's thread: start it, run a coroutine on it from another thread, and stop it after closing what
runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """One event loop, run forever in a daemon thread once started."""

    def __init__(self, *, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        """Start the loop's thread."""
        self._thread.start()
        self._started = True

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float) -> T:
        """Run ``coroutine`` on the loop and wait up to ``timeout`` seconds for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def stop(self, close: Callable[[], Coroutine[Any, Any, None]], *, timeout: float) -> None:
        """Run ``close()`` on the loop (bounded by ``timeout``), then end the loop and its thread."""
        if not self._started:
            self.loop.close()
            return
        self._started = False
        with contextlib.suppress(TimeoutError, RuntimeError):
            self.run(close(), timeout=timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    async def cancel_the_rest(self) -> None:
        """Cancel every task of the loop but the one running this, and wait for them to end."""
        tasks = [t for t in asyncio.all_tasks(self.loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()
