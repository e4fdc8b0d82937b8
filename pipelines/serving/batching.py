"""The batching queue in front of one model's signature calls (TF Serving's batching).

`Batcher`: a worker thread takes the waiting requests, gathers more until
`max_batch` rows or `batch_wait_ms` have passed (0 by default, TF Serving's
`batch_timeout_micros` default: the requests that arrived while the previous
batch ran form the next one, so a lone request never waits), runs one signature call on at
most `max_batch` rows and hands each request its slice. A request larger than
`max_batch` rows is run in chunks, and the rows of a batch are shared out
evenly between the waiting requests, so a large request cannot hold up the
small ones for more than one batch; a request's rows are taken (images
decoded) one chunk at a time. A batch that fails is rerun request by request,
so one request cannot fail the others.

Each `Batcher` tallies the rows of its signature calls (`batch_sizes()`: rows
-> calls, whichever front end the rows came from), which the server's metrics
read at scrape time (`pipelines.serving.metrics`: `serving_batch_size_rows`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from pipelines.serving.savedmodel import Servable


class ServerStopping(RuntimeError):
    """A request the batcher will not run: the server is stopping (REST 503, gRPC UNAVAILABLE: try again)."""

    def __init__(self):
        super().__init__("the server is stopping; try again")


@dataclass(eq=False)
class _Item:
    """One queued request; its rows go out in chunks (`sent` so far) and come back in `parts`."""

    servable: Servable
    inputs: dict  # name -> array, or rows decoded on demand (anything with len() and [a:b] -> array)
    rows: int
    future: Future
    sent: int = 0
    parts: dict = field(default_factory=dict)  # first row -> outputs of that chunk
    answered: int = 0


class Batcher:
    """Batching queue in front of one model's signature calls (see the module docstring)."""

    def __init__(self, name: str, max_batch: int = 32, batch_wait_ms: float = 0.0, threads: int = 1):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms!r}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.name = name
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.threads = threads
        self.calls = 0  # signature calls made (for tests and stats)
        self._sizes: dict[int, int] = {}  # rows per signature call -> calls made with that many
        self._sizes_lock = threading.Lock()
        self._cv = threading.Condition()  # guards everything below and each item's counters
        self._active: deque[_Item] = deque()  # requests with rows not yet sent, in turn order
        self._waiting_rows = 0
        self._stopped = False
        self._workers = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True) for i in range(threads)
        ]
        for w in self._workers:
            w.start()

    def submit(self, servable: Servable, inputs: dict) -> Future:
        """Queue one request; its future gets the dict of output arrays (or the exception).

        The request's rows are run in chunks of at most `max_batch` rows; the
        future may be failed from outside (a client gone, a timeout) and its
        remaining chunks are then dropped.
        """
        rows = len(next(iter(inputs.values())))
        fut: Future = Future()
        if rows == 0:
            fut.set_exception(ValueError("empty batch"))
            return fut
        with self._cv:
            if self._stopped:
                fut.set_exception(ServerStopping())
                return fut
            self._active.append(_Item(servable, inputs, rows, fut))
            self._waiting_rows += rows
            self._cv.notify()
        return fut

    def batch_sizes(self) -> dict[int, int]:
        """Rows per signature call -> how many calls had that many rows, since the start."""
        with self._sizes_lock:
            return dict(self._sizes)

    def _called(self, feeds: dict) -> None:
        rows = len(next(iter(feeds.values()))) if feeds else 0
        with self._sizes_lock:
            self.calls += 1
            self._sizes[rows] = self._sizes.get(rows, 0) + 1

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            left, self._active = list(self._active), deque()
            self._waiting_rows = 0
            self._cv.notify_all()
        for it in left:
            _fail(it.future, ServerStopping())

    def _drop_finished(self) -> None:
        """Forget requests whose future is already done (failed or abandoned by the client)."""
        if any(it.future.done() for it in self._active):
            for it in [it for it in self._active if it.future.done()]:
                self._active.remove(it)
                self._waiting_rows -= it.rows - it.sent

    def _gather(self) -> list[tuple[_Item, int, int]] | None:
        """The next batch: (request, first row, end row) pieces, at most `max_batch` rows in all.

        Rows are shared out evenly between the waiting requests (a request
        asking for fewer than its share gives the rest to the others), so a
        large request takes what the small ones leave and cannot hold them up
        for more than one batch; requests that got rows go to the back of the
        turn order.
        """
        with self._cv:
            while True:
                self._drop_finished()
                if self._stopped:
                    return None
                if self._active:
                    break
                self._cv.wait()
            deadline = time.monotonic() + self.batch_wait_ms / 1000.0
            while self._waiting_rows < self.max_batch and not self._stopped:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                self._cv.wait(timeout)
                self._drop_finished()
            if self._stopped or not self._active:
                return None if self._stopped else []
            items = list(self._active)
            want = [it.rows - it.sent for it in items]
            give = [0] * len(items)
            room = self.max_batch
            while room > 0:
                open_ = [i for i in range(len(items)) if give[i] < want[i]]
                if not open_:
                    break
                share = room // len(open_)
                if share == 0:  # fewer rows left than requests: one each, in turn order
                    for i in open_[:room]:
                        give[i] += 1
                    break
                for i in open_:
                    g = min(share, want[i] - give[i])
                    give[i] += g
                    room -= g
            pieces, served, unserved = [], [], []
            for it, g in zip(items, give):
                if g == 0:
                    unserved.append(it)
                    continue
                if it.sent == 0 and not _start(it.future):  # cancelled or failed before it ran
                    self._waiting_rows -= it.rows
                    continue
                pieces.append((it, it.sent, it.sent + g))
                it.sent += g
                self._waiting_rows -= g
                if it.sent < it.rows:
                    served.append(it)
            self._active = deque(unserved + served)
            return pieces

    def _work(self) -> None:
        while True:
            pieces = self._gather()
            if pieces is None:
                return
            groups: dict[int, list] = {}
            for piece in pieces:  # a version switch can put two servables into one batch
                groups.setdefault(id(piece[0].servable), []).append(piece)
            for group in groups.values():
                try:
                    self._run(group)
                except Exception as e:  # noqa: BLE001 - a worker must survive anything
                    for it, _, _ in group:
                        _fail(it.future, e)

    def _run(self, pieces: list[tuple[_Item, int, int]]) -> None:
        feeds_of = []
        for it, a, b in pieces:  # take (decode) each request's rows; a bad row fails its request only
            try:
                feeds_of.append(((it, a, b), {k: v[a:b] for k, v in it.inputs.items()}))
            except Exception as e:  # noqa: BLE001
                self._failed(it, e)
        feeds_of = [(p, f) for p, f in feeds_of if not p[0].future.done()]
        if not feeds_of:
            return
        servable = feeds_of[0][0][0].servable
        try:
            if len(feeds_of) == 1:
                feeds = feeds_of[0][1]
            else:
                feeds = {k: np.concatenate([f[k] for _, f in feeds_of]) for k in feeds_of[0][1]}
            self._called(feeds)
            out = servable.run(feeds)
        except Exception as e:  # noqa: BLE001 - a failed batch is retried piece by piece
            if len(feeds_of) == 1:
                self._failed(feeds_of[0][0][0], e)
                return
            for (it, a, b), f in feeds_of:
                try:
                    self._called(f)
                    self._answered(it, a, servable.run(f))
                except Exception as e1:  # noqa: BLE001
                    self._failed(it, e1)
            return
        start = 0
        for (it, a, b), _ in feeds_of:
            self._answered(it, a, {k: v[start : start + b - a] for k, v in out.items()})
            start += b - a

    def _answered(self, it: _Item, first: int, out: dict[str, np.ndarray]) -> None:
        with self._cv:
            if it.future.done():
                return
            it.parts[first] = out
            it.answered += len(next(iter(out.values()))) if out else 0
            if it.answered < it.rows:
                return
            parts = [it.parts[k] for k in sorted(it.parts)]
            it.parts = {}
        result = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if not it.future.done():
            try:
                it.future.set_result(result)
            except Exception:  # noqa: BLE001 - failed from outside meanwhile
                pass

    def _failed(self, it: _Item, e: BaseException) -> None:
        with self._cv:
            it.parts = {}
        _fail(it.future, e)


def _start(fut: Future) -> bool:
    """Mark `fut` running; False if it was cancelled or already failed from outside."""
    try:
        return fut.set_running_or_notify_cancel()
    except RuntimeError:  # finished meanwhile (failed by the HTTP side)
        return False


def _fail(fut: Future, e: BaseException) -> None:
    """Fail `fut` unless it is already done (a request can fail in two chunks at once)."""
    try:
        if not fut.done():
            fut.set_exception(e)
    except Exception:  # noqa: BLE001 - InvalidStateError: finished meanwhile
        pass
