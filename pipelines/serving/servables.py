"""The served models: which versions to serve, the poller that loads and unloads them, version labels.

`ModelManager` looks at each model's versions on disk (`<base_path>/<version>/`)
every `poll_s` seconds and serves what its version policy asks for: without a
config file, every sub-folder of `exports` at its highest version (TF Serving's
default, `latest 1`); with `config_file`, the models of TF Serving's model
config file (`pipelines.serving.model_config`, read again when it changes) with
their `latest`, `all` or `specific` policy and `version_labels`.

Swaps keep the model available (TF Serving's availability-preserving policy):
a wanted version is loaded (in the poller's thread, warmed up at the batch
sizes its model's traffic has had, and pausing every 2 ms so that requests
keep the GIL: `pipelines.serving.polite`) and added first; versions no
longer wanted (replaced by a newer one, dropped by the policy, their
directory deleted: how a bad version is rolled back) are unloaded after;
while no wanted version loads, the highest other one keeps serving. A
request holds the `Servable` it was resolved to, so requests in flight on an
unloaded version finish on it, and none waits for a load. A request without a
version gets the highest served version; a label resolves to the version it
names once that one is AVAILABLE (until then to the one it named before,
while that is served). Each model has one `Batcher`.

A version that fails to load (for example one still being copied in) is
tried again when its files change (their names, sizes and mtimes), at most
once per backoff interval (`poll_s`, doubling up to `retry_max_s`); each
attempt is logged. Publishing by renaming a complete directory into place
(what `pipelines.export` does) never shows the server a half-written version.
`Servable`, `TensorInfo`, `load_servable` (`pipelines.serving.savedmodel`)
and `Batcher` (`pipelines.serving.batching`) are importable from here as before.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from pipelines.serving.batching import Batcher
from pipelines.serving.heap import Reclaimer, freeze_base
from pipelines.serving.model_config import ConfigWatcher, ModelSpec, exports_specs, version_number
from pipelines.serving.polite import polite
from pipelines.serving.responses import _first_line
from pipelines.serving.savedmodel import SIGNATURE, Servable, TensorInfo, load_servable

__all__ = [
    "SIGNATURE", "Batcher", "Failure", "ModelManager", "ModelSpec", "ModelState", "NotFound", "Servable",
    "TensorInfo", "VersionStatus", "dir_signature", "load_servable",
]

log = logging.getLogger("pipelines.serve")

RETIRE_GRACE_S = 60.0  # a removed model's batching queue is stopped this long after: its requests finish first


class NotFound(LookupError):
    """Unknown model, version or label (a 404)."""


@dataclass
class Failure:
    """A version that did not load: why, the state of its files then, and when to look again."""

    message: str
    signature: tuple  # dir_signature() taken just before the failed attempt
    attempts: int
    next_try: float  # time.monotonic() before which it is not retried


class VersionStatus(NamedTuple):
    """One row of a model's status (TF Serving's ModelVersionStatus)."""

    version: int
    state: str  # "AVAILABLE", "LOADING", or "END" (unloaded, error_code OK; or failed to load)
    error_code: str  # "OK" or "UNKNOWN"
    error_message: str


@dataclass
class ModelState:
    name: str
    batcher: Batcher
    spec: ModelSpec
    # The dicts below that readers take without copying are replaced, never changed in place.
    servables: dict[int, Servable] = field(default_factory=dict)  # version -> loaded (AVAILABLE)
    label_versions: dict[str, int] = field(default_factory=dict)  # label -> the served version it resolves to
    loading: int | None = None
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it did not load
    ended: frozenset = frozenset()  # versions unloaded (END in status, as TF Serving keeps them)
    failures: dict[int, Failure] = field(default_factory=dict)
    _label_notes: dict = field(default_factory=dict, repr=False)  # label -> what was last logged about it

    @property
    def servable(self) -> Servable | None:
        """The highest served version (what a request without a version gets), or None."""
        s = self.servables
        return s[max(s)] if s else None


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


def _versions(vs) -> str:
    vs = sorted(vs)
    return f"version{'s' if len(vs) > 1 else ''} {', '.join(map(str, vs))}" if vs else "no version"


class ModelManager:
    """The models under `exports` (or those of `config_file`), their versions loaded and unloaded live."""

    def __init__(
        self,
        exports: str,
        poll_s: float = 1.0,
        max_batch: int = 32,
        batch_wait_ms: float = 0.0,
        batch_threads: int = 1,
        retry_max_s: float = 30.0,
        config_file: str | None = None,
        max_request_pixels: int | None = None,
    ):
        self.exports = exports
        self.max_request_pixels = max_request_pixels  # of a request's encoded images together (Servable)
        self.poll_s = poll_s
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.batch_threads = batch_threads
        self.retry_max_s = retry_max_s
        self.config_file = config_file
        self._models: dict[str, ModelState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retired: list[tuple[float, Batcher]] = []
        self._noted: dict[str, tuple] = {}  # model -> what is missing on disk, last warned about
        # (model, version) -> its folder's name: "8", or "08" (TF Serving reads a version folder's name as a number)
        self._folders: dict[tuple[str, int], str] = {}
        self._reclaimer = Reclaimer()
        self._config = ConfigWatcher(config_file) if config_file is not None else None  # ModelConfigError

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

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> tuple[Servable, Batcher]:
        """The servable answering `name` at `version` or `label` (neither: its highest served version) and the
        model's batching queue; `NotFound` for an unknown model, a version not served, an unknown label."""
        st = self.state(name)
        with self._lock:
            servables, labels, failed, loading = st.servables, st.label_versions, dict(st.failed), st.loading
        if label is not None:
            version = self._label_version(st, label, labels)
        if not servables:
            why = "; ".join(f"version {v}: {m}" for v, m in sorted(failed.items())) or (
                "still loading" if loading is not None else f"no version under {st.spec.base_path}")
            raise NotFound(f"Servable not found for request: model {name!r} has no loaded version ({why})")
        if version is None:
            return servables[max(servables)], st.batcher
        s = servables.get(version)
        if s is None:
            raise NotFound(f"Servable not found for request: model {name!r} version {version} is not served "
                           f"(serving {_versions(servables)})")
        return s, st.batcher

    def get(self, name: str, version: int | None = None) -> tuple[Servable, Batcher]:
        """`resolve(name, version)`."""
        return self.resolve(name, version)

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """The status rows of `name`'s versions (of `version`, or of the one `label` names, only), by version:
        served ones AVAILABLE, the one loading LOADING, ones that failed to load END with the reason, unloaded
        ones END (error code OK), as TF Serving lists them."""
        st = self.state(name)
        with self._lock:
            servables, labels, loading = st.servables, st.label_versions, st.loading
            rows = {v: VersionStatus(v, "END", "OK", "") for v in st.ended}  # unloaded
            rows.update({v: VersionStatus(v, "END", "UNKNOWN", msg) for v, msg in st.failed.items()})
        if label is not None:
            version = self._label_version(st, label, labels)
        if loading is not None:
            rows[loading] = VersionStatus(loading, "LOADING", "OK", "")
        rows.update({v: VersionStatus(v, "AVAILABLE", "OK", "") for v in servables})
        if version is not None:
            if version not in rows:
                raise NotFound(f"Could not find version {version} of model {name!r}")
            return [rows[version]]
        if not rows:
            raise NotFound(f"Could not find any versions of model {name!r}")
        return [rows[v] for v in sorted(rows, reverse=True)]  # newest first, as TF Serving lists them

    @staticmethod
    def _label_version(st: ModelState, label: str, labels: dict[str, int]) -> int:
        if label in labels:
            return labels[label]
        named = st.spec.labels.get(label)
        if named is not None:
            raise NotFound(f"Servable not found for request: version label {label!r} of model {st.name!r} names "
                           f"version {named}, which is not available (a label only resolves to a loaded version)")
        known = ", ".join(map(repr, st.spec.labels)) or "none (version_labels in --model-config-file)"
        raise NotFound(f"Servable not found for request: model {st.name!r} has no version label {label!r} "
                       f"(labels: {known})")

    # -- polling (background)

    def poll_once(self) -> None:
        """Read the config (or list the export directory) once, then load and unload what it asks for."""
        specs = self._config.current() if self._config else exports_specs(self.exports)
        if specs is None:
            return
        self._retire([n for n in self.names() if n not in specs])
        for spec in specs.values():
            try:
                self._poll_model(spec)
            except Exception:  # noqa: BLE001 - one model's trouble must not stop the others
                log.exception("model %s: polling %s failed", spec.name, spec.base_path)
        self._stop_retired(time.monotonic())
        self._reclaimer.after_poll()  # no reference to an unloaded version is left in this thread

    def _retire(self, names: list[str]) -> None:
        """Stop serving these models (removed from the config, or their directory gone)."""
        with self._lock:
            gone = [self._models.pop(n) for n in names]
            self._retired += [(time.monotonic() + RETIRE_GRACE_S, st.batcher) for st in gone]
        for st in gone:
            self._reclaimer.unloaded(st.servables.values())
            why = "it is not in the model config any more" if self.config_file else "its directory is gone"
            log.info("model %s: unloaded (%s)", st.name, why)

    def _versions_on_disk(self, spec: ModelSpec) -> list[int] | None:
        """The numeric version directories under the model's base path, ascending; None if it cannot be read."""
        try:
            entries = os.listdir(spec.base_path)
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        except OSError as e:
            log.warning("model %s: cannot list %s: %s; left as it is", spec.name, spec.base_path, e)
            return None
        folders: dict[int, str] = {}
        for d in sorted(entries, key=lambda d: (len(d), d), reverse=True):  # "8" after "08": the plain name wins
            if (v := version_number(d)) is not None and os.path.isdir(os.path.join(spec.base_path, d)):
                folders[v] = d
        for v, d in folders.items():
            self._folders[spec.name, v] = d
        found = sorted(folders)
        missing = tuple(v for v in spec.versions if v not in found) if found else ("all",)
        if self.config_file is not None and missing and self._noted.get(spec.name) != missing:
            log.warning("model %s: %s under %s (expected %s/<version>/saved_model.pb)", spec.name,
                        f"no version {', '.join(map(str, missing))} of its specific policy" if found else "no version",
                        spec.base_path, spec.base_path)
        self._noted[spec.name] = missing
        return found

    def _poll_model(self, spec: ModelSpec) -> None:
        """Load and unload `spec`'s versions as its policy asks."""
        on_disk = self._versions_on_disk(spec)
        if on_disk is None:
            return
        with self._lock:
            st = self._models.get(spec.name)
            if st is None:
                if not on_disk:
                    return
                st = self._models[spec.name] = ModelState(
                    spec.name, Batcher(spec.name, self.max_batch, self.batch_wait_ms, self.batch_threads), spec
                )
            st.spec = spec
            for v in [v for v in st.failed if v not in on_disk]:  # deleted: forgotten
                st.failed.pop(v, None)
                st.failures.pop(v, None)
        wanted = spec.wanted(on_disk)
        blocked: set[int] = set()  # failed, and not to be tried again yet
        while True:
            aspired = spec.wanted([v for v in on_disk if v not in blocked])
            todo = sorted(aspired - set(st.servables) - blocked)
            if not todo:
                break
            v = todo[-1]  # the highest first: it is the one requests without a version get
            failure = st.failures.get(v)
            if failure is not None and not self._retry_due(st, v, failure):
                blocked.add(v)
            elif not self._load(st, v, failure.attempts + 1 if failure else 1):
                blocked.add(v)
        served = sorted(st.servables)
        extra = [v for v in served if v not in aspired]
        if wanted and not aspired & set(served):
            extra = extra[:-1]  # nothing wanted is available: the highest of the others keeps serving
        if extra:
            self._reclaimer.unloaded(st.servables[v] for v in extra)
            with self._lock:
                st.servables = {v: s for v, s in st.servables.items() if v not in extra}
                st.ended = st.ended | set(extra)
            for v in extra:
                log.info("model %s: unloaded version %s (%s); serving %s", spec.name, v,
                         "its directory is gone" if v not in on_disk else "the version policy no longer wants it",
                         _versions(st.servables))
        self._update_labels(st, spec)

    def _retry_due(self, st: ModelState, version: int, failure: Failure) -> bool:
        if time.monotonic() < failure.next_try:
            return False
        if dir_signature(self._path(st, version)) == failure.signature:
            return False  # unchanged since it failed: it would fail again
        log.info("model %s version %s: its files changed since load attempt %d failed; retrying",
                 st.name, version, failure.attempts)
        return True

    def _path(self, st: ModelState, version: int) -> str:
        return os.path.join(st.spec.base_path, self._folders.get((st.name, version), str(version)))

    def _load(self, st: ModelState, version: int, attempt: int = 1) -> bool:
        name, path = st.name, self._path(st, version)
        with self._lock:
            st.loading = version
        signature = dir_signature(path)  # before loading: a copy finishing meanwhile counts as a change
        log.info("model %s: loading version %s (attempt %d)", name, version, attempt)
        t0 = time.perf_counter()
        try:
            with self._lock:
                serving = any(m.servables for m in self._models.values())
            sizes = st.batcher.batch_sizes()  # warmed up at the batch sizes the traffic has run, most frequent first
            rows = sorted(sizes, key=lambda r: -sizes[r])
            load = functools.partial(load_servable, name, version, path, rows,
                                     max_request_pixels=self.max_request_pixels, max_batch=self.max_batch)
            servable = polite(load) if serving else load()  # requests may be waiting: leave them the GIL
        except Exception as e:  # noqa: BLE001 - a bad export must not stop the server or the others
            msg = f"{type(e).__name__}: {_first_line(e) if str(e) else ''}"  # a graph error's reason, not its 1st line
            backoff = min(self.poll_s * 2 ** (attempt - 1), self.retry_max_s)
            log.error(
                "model %s version %s failed to load (attempt %d): %s; retried when its files change "
                "(not before %.3g s)", name, version, attempt, msg, backoff,
            )
            with self._lock:
                st.failed[version] = msg
                st.failures[version] = Failure(msg, signature, attempt, time.monotonic() + backoff)
                st.loading = None
            return False
        with self._lock:
            st.servables = {**st.servables, version: servable}
            st.loading = None
            st.failed.pop(version, None)
            st.failures.pop(version, None)
        log.info("model %s: version %s loaded in %.1f s (attempt %d); serving %s",
                 name, version, time.perf_counter() - t0, attempt, _versions(st.servables))
        return True

    def _update_labels(self, st: ModelState, spec: ModelSpec) -> None:
        """Point each label at the version it names once that one is served (TF Serving's rule); until then
        at the one it named before, while that one is still served."""
        with self._lock:
            old, served = st.label_versions, st.servables
            new = {label: v if v in served else old[label] for label, v in spec.labels.items()
                   if v in served or old.get(label) in served}
            st.label_versions = new
        for label, v in spec.labels.items():
            note = (new.get(label), v)
            if st._label_notes.get(label) == note:
                continue
            st._label_notes[label] = note
            if new.get(label) == v:
                log.info("model %s: label %r -> version %s", st.name, label, v)
            else:
                log.warning("model %s: label %r names version %s, which is not available; %s", st.name, label, v,
                            f"it stays on version {new[label]} until then" if label in new else "404 until it is")
        for label in [x for x in st._label_notes if x not in spec.labels]:
            del st._label_notes[label]

    def _stop_retired(self, now: float) -> None:
        with self._lock:
            due = [b for t, b in self._retired if t <= now]
            self._retired = [(t, b) for t, b in self._retired if t > now]
        for b in due:
            b.stop()

    def start(self) -> None:
        """Load what is on disk now, then keep polling in a background thread."""
        freeze_base()
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="export-poller", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must survive anything on disk
                log.exception("polling %s failed", self.config_file or self.exports)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._stop_retired(float("inf"))
        with self._lock:
            batchers = [st.batcher for st in self._models.values()]
        for b in batchers:
            b.stop()
