"""The garbage collector around version swaps: TensorFlow's objects frozen once, unloaded versions collected.

Importing TensorFlow leaves ~460,000 objects in the cyclic garbage collector's
sight; a full collection walks them all while holding the GIL, stalling every
request (0.2 s on an idle core, 0.5-2 s on busy ones) at times set off by
request parsing. `freeze_base` moves them out of its sight once, before the
first load: one collection, then `gc.freeze()`, which splices lists (O(1)).
The models' own objects (~13,000 for the tests' tiny CNN, ~30,000 for the
images.yaml ResNet) stay collectable, so an unloaded version (its objects form
cycles) is reclaimed by one full collection right after the unload
(`Reclaimer`), which walks the loaded models only, not TensorFlow; again
a few times later while requests in flight still held the version.

The previous way, `gc.unfreeze(); gc.collect(); gc.freeze()` after every load,
walked everything on every swap. Measured on this repository's 2-core machine
(Python 3.11, TF 2.21, shared), the worst lateness of a thread's 1 ms sleeps
during a swap's collection:

    stall of one swap           before                 after
    tiny CNN, lighter load      158-174 ms             6-10 ms
    ResNet, lighter load        181-270 ms             14-65 ms
    tiny CNN, load average 9    273-747 ms             13-46 ms
    ResNet, load average 9      205-425 ms (one 3.2 s) 13-94 ms (one 0.54 s)

(Four swaps each: `ModelManager.poll_once()` after publishing a new version
of a copied export, or load + collection alone.) The price: a collection
Python starts on its own now walks the loaded models' objects (3 ms for the
tiny CNN, 25-50 ms for the ResNet) where it walked nothing. The ResNet's
times grow with every load: TensorFlow's gradient registry keeps ~28,000
objects of each loaded ResNet (its custom gradients) for good; the tiny
CNN's do not.
"""

from __future__ import annotations

import gc
import logging
import time
import weakref

log = logging.getLogger("pipelines.serve")

_frozen = False


def freeze_base() -> None:
    """Collect once and freeze what is alive now (TensorFlow's modules); once per process, before any load."""
    global _frozen
    if not _frozen:
        import tensorflow  # noqa: F401 - its objects are the ones to freeze

        gc.collect()
        gc.freeze()
        _frozen = True


class Reclaimer:
    """Gives the memory of unloaded versions back: one full collection right after an unload, and again
    2, 10 and 60 s later while an unloaded version is still alive (requests in flight held it then)."""

    AGAIN_S = (2.0, 10.0, 60.0)

    def __init__(self):
        self._tracked: list[list] = []  # [weakref to an unloaded Servable, when unloaded, collections since]

    def unloaded(self, servables) -> None:
        """Track versions just unloaded (weakly): the next `after_poll` collects."""
        now = time.monotonic()
        self._tracked += [[weakref.ref(s), now, 0] for s in servables]

    def after_poll(self, now: float | None = None) -> None:
        """Collect if a version was unloaded since the last call, or one still alive is due again."""
        now = time.monotonic() if now is None else now
        self._tracked = [t for t in self._tracked if t[0]() is not None and t[2] <= len(self.AGAIN_S)]
        due = [t for t in self._tracked if t[2] == 0 or now >= t[1] + self.AGAIN_S[t[2] - 1]]
        if not due:
            return
        for t in due:
            t[2] += 1
        t0 = time.perf_counter()
        found = gc.collect()
        log.info("garbage collection after unloading: %d objects freed in %.0f ms", found,
                 1e3 * (time.perf_counter() - t0))
