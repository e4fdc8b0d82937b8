"""Loading a version without starving the requests: the loading thread lets go of the GIL every 2 ms.

`tf.saved_model.load` runs much of its work in Python (the function library
is imported op by op), holding the GIL for about 0.35 s of a 0.6-1 s load of
the baseline CNN's export. Requests need the GIL at several points of their
way (decode, queue, answer); while the loader holds it they wait up to
Python's switch interval (5 ms) at each, which is what raised the p99 while a
version was swapped in. `polite(fn)` runs `fn` with a profile hook on the
calling thread only (`sys.setprofile`) that sleeps `pause_s` after each
`slice_s` of running, so waiting request threads get the GIL within about
2 ms and the loader's CPU share drops to about two thirds.

Measured with bench/bench_serve_grpc.py (8 clients, 28x28, the 2 cores
otherwise idle, runs interleaved): p99 in the swap window / steady p99 1.72
and 1.81 with this and the warm-up at the traffic's batch sizes
(`load_servable`), 2.52 and 2.28 without; the new version answers 1.2 s after
it is published instead of 0.6 s. Two things that did not help: a shorter
switch interval for the whole process (more switching between all threads:
2.97x) and a lower OS priority for the poller thread (descheduled while
holding the GIL: 3.49x). The first load at start-up, with nothing served
yet, runs at full speed.
"""

from __future__ import annotations

import sys
import time

SLICE_S = 0.002  # longest stretch the loading thread runs before it pauses
PAUSE_S = 0.001  # how long it pauses (releasing the GIL)


def polite(fn, slice_s: float = SLICE_S, pause_s: float = PAUSE_S):
    """`fn()`, pausing the calling thread for `pause_s` after every `slice_s` (at Python calls and returns)."""
    state = {"since": time.perf_counter()}

    def hook(frame, event, arg):
        if time.perf_counter() - state["since"] > slice_s:
            time.sleep(pause_s)
            state["since"] = time.perf_counter()

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        return fn()
    finally:
        sys.setprofile(previous)
