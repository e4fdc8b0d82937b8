"""Loaded model versions, the export directory poller, and the batching queue.

A `Servable` is one loaded version of one model: its `serving_default`
signature, the input and output specs, and the signature defs for the
metadata answer. `ModelManager` scans `<exports>/<name>/<version>/` every
`poll_s` seconds; when the highest version on disk differs from the one
served, it loads that version in its own thread, warms it up, and swaps it in
under a lock. A request holds the `Servable` it was resolved to, so requests
in flight when a swap happens finish on the version they started on, and none
waits for a load.

A version that fails to load (for example one still being copied in) is
tried again when its files change (their names, sizes and mtimes), at most
once per backoff interval (`poll_s`, doubling up to `retry_max_s`); each
attempt is logged. Publishing by renaming a complete directory into place
(what `pipelines.export` does) never shows the server a half-written version.

`Batcher` is the queue in front of a model (TF Serving's batching): a worker
thread takes the waiting requests, gathers more until `max_batch` rows or
`batch_wait_ms` have passed, runs one signature call on at most `max_batch`
rows and hands each request its slice. A request larger than `max_batch` rows
is run in chunks, and the rows of a batch are shared out evenly between the
waiting requests, so a large request cannot hold up the small ones for more
than one batch; a request's rows are taken (images decoded) one chunk at a
time. A batch that fails is rerun request by request, so one request cannot
fail the others.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("pipelines.serve")

SIGNATURE = "serving_default"


class NotFound(LookupError):
    """Unknown model or version (a 404)."""


# ----------------------------------------------------------------------------- one version


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple  # with None for unknown dims; dim 0 is the batch


@dataclass(eq=False)
class Servable:
    name: str
    version: int
    path: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    signature_defs: dict  # TF Serving's JSON form of the SavedModel's SignatureDefs
    _fn: object = field(repr=False)
    _keep: object = field(repr=False)  # the loaded object owns the variables the signature reads

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        feeds = {k: tf.constant(v, dtype=self.inputs[k].dtype) for k, v in inputs.items()}
        return {k: v.numpy() for k, v in self._fn(**feeds).items()}


def _signature_defs_json(path: str) -> dict:
    """The SignatureDefs of `path/saved_model.pb` as TF Serving prints them."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    defs = proto.meta_graphs[0].signature_def
    return {
        k: json_format.MessageToDict(
            defs[k], preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for k in sorted(defs)
    }


def load_servable(name: str, version: int, path: str) -> Servable:
    """Load `path`'s `serving_default`, read its specs, and warm it up on zeros."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path} has no {SIGNATURE!r} signature (has {sorted(loaded.signatures)})")
    fn = loaded.signatures[SIGNATURE]
    specs = fn.structured_input_signature[1]
    inputs = {
        k: TensorInfo(k, np.dtype(s.dtype.as_numpy_dtype), tuple(s.shape.as_list()))
        for k, s in sorted(specs.items())
    }
    outputs = {
        k: TensorInfo(k, np.dtype(s.dtype.as_numpy_dtype), tuple(s.shape.as_list()))
        for k, s in sorted(fn.structured_outputs.items())
    }
    servable = Servable(name, version, path, inputs, outputs, _signature_defs_json(path), fn, loaded)
    if all(d is not None for t in inputs.values() for d in t.shape[1:]):
        servable.run({k: np.zeros((1, *t.shape[1:]), t.dtype) for k, t in inputs.items()})
    return servable


# ----------------------------------------------------------------------------- batching


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

    def __init__(self, name: str, max_batch: int = 32, batch_wait_ms: float = 2.0, threads: int = 1):
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
                fut.set_exception(RuntimeError("the server is stopping"))
                return fut
            self._active.append(_Item(servable, inputs, rows, fut))
            self._waiting_rows += rows
            self._cv.notify()
        return fut

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            left, self._active = list(self._active), deque()
            self._waiting_rows = 0
            self._cv.notify_all()
        for it in left:
            _fail(it.future, RuntimeError("the server is stopping"))

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
            self.calls += 1
            out = servable.run(feeds)
        except Exception as e:  # noqa: BLE001 - a failed batch is retried piece by piece
            if len(feeds_of) == 1:
                self._failed(feeds_of[0][0][0], e)
                return
            for (it, a, b), f in feeds_of:
                try:
                    self.calls += 1
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


# ----------------------------------------------------------------------------- the export directory


def _freeze_heap() -> None:
    """Collect once, then move every object alive now (TensorFlow's, the model's: about a million)
    out of the garbage collector's sight (gc.freeze). Without it each full collection walks them
    all while holding the GIL, stalling every request for 0.5-2 s at unpredictable times; the
    parse of a large request is what sets such collections off. Unfrozen first, so that a
    version swapped out can still be collected."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()



@dataclass
class Failure:
    """A version that did not load: why, the state of its files then, and when to look again."""

    message: str
    signature: tuple  # dir_signature() taken just before the failed attempt
    attempts: int
    next_try: float  # time.monotonic() before which it is not retried


@dataclass
class ModelState:
    name: str
    batcher: Batcher
    servable: Servable | None = None
    loading: int | None = None
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it did not load
    failures: dict[int, Failure] = field(default_factory=dict)


def dir_signature(path: str) -> tuple:
    """Names, sizes and mtimes of every file under `path`: changes while it is being written."""
    sig = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            full = os.path.join(root, f)
            try:
                st = os.stat(full)
            except OSError:
                continue
            sig.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sig)


class ModelManager:
    """Every model under `exports`, its highest version served, new versions swapped in live."""

    def __init__(
        self,
        exports: str,
        poll_s: float = 1.0,
        max_batch: int = 32,
        batch_wait_ms: float = 2.0,
        batch_threads: int = 1,
        retry_max_s: float = 30.0,
    ):
        self.exports = exports
        self.poll_s = poll_s
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.batch_threads = batch_threads
        self.retry_max_s = retry_max_s
        self._models: dict[str, ModelState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lookups (request threads)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def state(self, name: str) -> ModelState:
        with self._lock:
            st = self._models.get(name)
        if st is None:
            raise NotFound(f"Servable not found for request: model {name!r} is not served (served: {self.names()})")
        return st

    def get(self, name: str, version: int | None = None) -> tuple[Servable, Batcher]:
        """The servable answering `name` (and `version`, if given) and its batching queue."""
        st = self.state(name)
        s = st.servable
        if s is None:
            why = "; ".join(f"version {v}: {m}" for v, m in sorted(st.failed.items())) or "still loading"
            raise NotFound(f"Servable not found for request: model {name!r} has no loaded version ({why})")
        if version is not None and version != s.version:
            raise NotFound(
                f"Servable not found for request: model {name!r} version {version} is not served "
                f"(serving version {s.version})"
            )
        return s, st.batcher

    # -- polling (background)

    def poll_once(self) -> None:
        """Scan the export directory once and load whatever version should be served."""
        from pipelines.export import version_dirs

        try:
            names = sorted(
                d for d in os.listdir(self.exports)
                if not d.startswith(".") and os.path.isdir(os.path.join(self.exports, d))
            )
        except OSError as e:
            log.warning("cannot list %s: %s", self.exports, e)
            return
        for name in names:
            versions = version_dirs(os.path.join(self.exports, name))
            if not versions:
                continue
            with self._lock:
                st = self._models.get(name)
            target = versions[-1]
            if st is not None and st.servable is not None and st.servable.version == target:
                continue
            failure = st.failures.get(target) if st is not None else None
            path = os.path.join(self.exports, name, str(target))
            if failure is not None:
                if time.monotonic() < failure.next_try:
                    continue
                if dir_signature(path) == failure.signature:
                    continue  # unchanged since it failed: it would fail again
                log.info(
                    "model %s version %s: its files changed since load attempt %d failed; retrying",
                    name, target, failure.attempts,
                )
            self._load(name, target, failure.attempts + 1 if failure else 1)

    def _load(self, name: str, version: int, attempt: int = 1) -> None:
        with self._lock:
            st = self._models.get(name)
            if st is None:
                st = self._models[name] = ModelState(
                    name, Batcher(name, self.max_batch, self.batch_wait_ms, self.batch_threads)
                )
            st.loading = version
        path = os.path.join(self.exports, name, str(version))
        signature = dir_signature(path)  # before loading: a copy finishing meanwhile counts as a change
        log.info("model %s: loading version %s (attempt %d)", name, version, attempt)
        t0 = time.perf_counter()
        try:
            servable = load_servable(name, version, path)
        except Exception as e:  # noqa: BLE001 - a bad export must not stop the server or the others
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            backoff = min(self.poll_s * 2 ** (attempt - 1), self.retry_max_s)
            log.error(
                "model %s version %s failed to load (attempt %d): %s; retried when its files change "
                "(not before %.3g s)", name, version, attempt, msg, backoff,
            )
            with self._lock:
                st.failed[version] = msg
                st.failures[version] = Failure(msg, signature, attempt, time.monotonic() + backoff)
                st.loading = None
            return
        with self._lock:
            old, st.servable, st.loading = st.servable, servable, None
            st.failed.pop(version, None)
            st.failures.pop(version, None)
        log.info(
            "model %s: serving version %s (was %s), loaded in %.1f s (attempt %d)",
            name, version, old.version if old else None, time.perf_counter() - t0, attempt,
        )
        del old
        _freeze_heap()

    def start(self) -> None:
        """Load what is on disk now, then keep polling in a background thread."""
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="export-poller", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must survive anything on disk
                log.exception("polling %s failed", self.exports)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            for st in self._models.values():
                st.batcher.stop()
