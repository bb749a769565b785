"""Adaptive batching: concurrent requests merged into one scorer call, in one scorer thread.

A DAI scorer costs about the same per call for 1 row as for 1000. The scorer thread takes the
queue when free and merges items of the same ``key``, oldest first, up to ``max_rows``; when
idle it waits up to ``max_wait`` only while more clients are connected than have asked.
``enabled=False`` runs one item per call. The runner must call each item's ``done`` exactly
once; retrying a failed merged call is its business (:mod:`.app`). See docs/serving.md.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple


class Item:
    """One request waiting for the scorer.

    Args:
        key: requests with equal keys (hashable tuples) may share a call; None never does.
        rows: its row count (for the cap).
        payload: what the runner needs to score it.
        done: ``done(result, error)``, called once from the scorer thread.
    """

    __slots__ = ("key", "rows", "payload", "done", "arrived")

    def __init__(
        self,
        key: Optional[Tuple[Any, ...]],
        rows: int,
        payload: Any,
        done: Callable[[Any, Optional[BaseException]], None],
    ) -> None:
        self.key = key
        self.rows = rows
        self.payload = payload
        self.done = done
        self.arrived = time.monotonic()


class RequestTimeout(Exception):
    """The request waited longer than the server's timeout."""


class Batcher:
    """The queue and the scorer thread (started by :meth:`start`)."""

    def __init__(
        self,
        run: Callable[[List[Item]], None],
        max_rows: int = 1000,
        max_wait: float = 0.002,
        enabled: bool = True,
        timeout: Optional[float] = None,
    ) -> None:
        self.run = run
        self.max_rows = max(1, max_rows)
        self.max_wait = max(0.0, max_wait)
        self.enabled = enabled
        self.timeout = timeout
        # Connected clients, kept current by the HTTP side (an int: read without a lock).
        self.clients = 0
        self._queue: Deque[Item] = deque()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="scorer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Item) -> None:
        """Queue ``item`` (any thread)."""
        with self._cond:
            self._queue.append(item)
            if len(self._queue) == 1 or len(self._queue) >= self.clients:
                self._cond.notify()

    def _take(self) -> List[Item]:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            if self.enabled and self.max_wait > 0:
                deadline = self._queue[0].arrived + self.max_wait
                while len(self._queue) < self.clients and self._rows() < self.max_rows:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            first = self._queue.popleft()
            items = [first]
            if not self.enabled or first.key is None:
                return items
            rows = first.rows
            rest: Deque[Item] = deque()
            while self._queue:
                item = self._queue.popleft()
                if item.key == first.key and rows + item.rows <= self.max_rows:
                    items.append(item)
                    rows += item.rows
                else:
                    rest.append(item)
            self._queue.extendleft(reversed(rest))
            return items

    def _rows(self) -> int:
        return sum(item.rows for item in self._queue)

    def _loop(self) -> None:
        while True:
            items = self._take()
            if self.timeout is not None:
                now = time.monotonic()
                late = [i for i in items if now - i.arrived > self.timeout]
                for item in late:
                    item.done(None, RequestTimeout("Request processing time exceeded limit"))
                items = [i for i in items if now - i.arrived <= self.timeout]
                if not items:
                    continue
            try:
                self.run(items)
            except BaseException as e:  # the scorer thread must survive anything
                for item in items:
                    with contextlib.suppress(Exception):  # already answered
                        item.done(None, e)
