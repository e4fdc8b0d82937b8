"""The served models: the export directory poller and its atomic version swaps.

`ModelManager` scans `<exports>/<name>/<version>/` every `poll_s` seconds;
when the highest version on disk differs from the one served, it loads that
version in its own thread, warms it up, and swaps it in under a lock. A
request holds the `Servable` it was resolved to, so requests in flight when a
swap happens finish on the version they started on, and none waits for a
load. Each model has its own `Batcher` (`pipelines.serving.batching`).

A version that fails to load (for example one still being copied in) is
tried again when its files change (their names, sizes and mtimes), at most
once per backoff interval (`poll_s`, doubling up to `retry_max_s`); each
attempt is logged. Publishing by renaming a complete directory into place
(what `pipelines.export` does) never shows the server a half-written version.

One loaded version (`Servable`, `TensorInfo`, `load_servable`) lives in
`pipelines.serving.savedmodel`, the batching queue (`Batcher`) in
`pipelines.serving.batching`; both are importable from here as before.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from pipelines.serving.batching import Batcher
from pipelines.serving.savedmodel import SIGNATURE, Servable, TensorInfo, load_servable

__all__ = [
    "SIGNATURE", "Batcher", "Failure", "ModelManager", "ModelState", "NotFound", "Servable", "TensorInfo",
    "dir_signature", "load_servable",
]

log = logging.getLogger("pipelines.serve")


class NotFound(LookupError):
    """Unknown model or version (a 404)."""


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
