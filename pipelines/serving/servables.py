"""Loaded model versions, the export directory poller, and the batching queue.

A `Servable` is one loaded version of one model: its `serving_default`
signature, the input and output specs, and the signature defs for the
metadata answer. `ModelManager` scans `<exports>/<name>/<version>/` every
`poll_s` seconds; when the highest version on disk differs from the one
served, it loads that version in its own thread, warms it up, and swaps it in
under a lock. A request holds the `Servable` it was resolved to, so requests
in flight when a swap happens finish on the version they started on, and none
waits for a load.

`Batcher` is the queue in front of a model (TF Serving's batching): a worker
thread takes the first waiting request, gathers more until `max_batch` rows or
`batch_wait_ms` have passed, runs one signature call on the concatenation and
hands each request its slice. A batch that fails is rerun request by request,
so one request cannot fail the others.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
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
    servable: Servable
    inputs: dict[str, np.ndarray]
    rows: int
    future: Future


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
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # one worker gathers at a time; others run batches
        self._workers = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True) for i in range(threads)
        ]
        self._leftover: _Item | None = None
        self._stopped = False
        for w in self._workers:
            w.start()

    def submit(self, servable: Servable, inputs: dict[str, np.ndarray]) -> Future:
        """Queue one request; its future gets the dict of output arrays (or the exception)."""
        rows = len(next(iter(inputs.values())))
        fut: Future = Future()
        self._queue.put(_Item(servable, inputs, rows, fut))
        return fut

    def stop(self) -> None:
        self._stopped = True
        for _ in self._workers:
            self._queue.put(None)

    def _gather(self) -> list[_Item] | None:
        with self._lock:
            first, self._leftover = (self._leftover, None) if self._leftover else (self._queue.get(), None)
            if first is None:
                return None
            batch, rows = [first], first.rows
            deadline = time.perf_counter() + self.batch_wait_ms / 1000.0
            while rows < self.max_batch:
                timeout = deadline - time.perf_counter()
                try:
                    item = self._queue.get_nowait() if timeout <= 0 else self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                if rows + item.rows > self.max_batch:
                    self._leftover = item  # starts the next batch
                    break
                batch.append(item)
                rows += item.rows
            return batch

    def _work(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            groups: dict[int, list[_Item]] = {}
            for item in batch:  # a version switch can put two servables into one batch
                groups.setdefault(id(item.servable), []).append(item)
            for items in groups.values():
                self._run(items)

    def _run(self, items: list[_Item]) -> None:
        items = [it for it in items if it.future.set_running_or_notify_cancel()]
        if not items:
            return
        servable = items[0].servable
        try:
            if len(items) == 1:
                feeds = items[0].inputs
            else:
                feeds = {k: np.concatenate([it.inputs[k] for it in items]) for k in items[0].inputs}
            self.calls += 1
            out = servable.run(feeds)
        except Exception as e:  # noqa: BLE001 - a failed batch is retried item by item
            if len(items) == 1:
                items[0].future.set_exception(e)
                return
            for it in items:
                try:
                    self.calls += 1
                    it.future.set_result(servable.run(it.inputs))
                except Exception as e1:  # noqa: BLE001
                    it.future.set_exception(e1)
            return
        start = 0
        for it in items:
            it.future.set_result({k: v[start : start + it.rows] for k, v in out.items()})
            start += it.rows


# ----------------------------------------------------------------------------- the export directory


@dataclass
class ModelState:
    name: str
    batcher: Batcher
    servable: Servable | None = None
    loading: int | None = None
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it did not load


class ModelManager:
    """Every model under `exports`, its highest version served, new versions swapped in live."""

    def __init__(
        self,
        exports: str,
        poll_s: float = 1.0,
        max_batch: int = 32,
        batch_wait_ms: float = 2.0,
        batch_threads: int = 1,
    ):
        self.exports = exports
        self.poll_s = poll_s
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.batch_threads = batch_threads
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
            if st is not None and (st.servable is not None and st.servable.version == target or target in st.failed):
                continue
            self._load(name, target)

    def _load(self, name: str, version: int) -> None:
        with self._lock:
            st = self._models.get(name)
            if st is None:
                st = self._models[name] = ModelState(
                    name, Batcher(name, self.max_batch, self.batch_wait_ms, self.batch_threads)
                )
            st.loading = version
        path = os.path.join(self.exports, name, str(version))
        t0 = time.perf_counter()
        try:
            servable = load_servable(name, version, path)
        except Exception as e:  # noqa: BLE001 - a bad export must not stop the server or the others
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.error("model %s version %s failed to load: %s", name, version, msg)
            with self._lock:
                st.failed[version] = msg
                st.loading = None
            return
        with self._lock:
            old, st.servable, st.loading = st.servable, servable, None
        log.info(
            "model %s: serving version %s (was %s), loaded in %.1f s",
            name, version, old.version if old else None, time.perf_counter() - t0,
        )

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
