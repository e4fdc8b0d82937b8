"""Precise batch norm's forward passes (pipelines/precise_bn.py), traced against eager, in one run.

    PYTHONPATH=. .venv/bin/python bench/bench_precise_bn.py [--config CONFIG] [--batches 50] [--rounds 3]
        [-- key=value ...]

The config's model (the default config's unless `--config`), untrained, on
`--batches` training batches of its data (augmented as in training), read
once and cached, so that both ways see the same batches and neither pays for
the data pipeline: `recalibrate_batch_norm(traced=True)` (what `make train`
does on TensorFlow: one traced function, traced anew in each round, its
tracing timed with it) against
`traced=False` (the passes called eagerly: JAX and PyTorch, and TensorFlow
before it was traced), in turns, `--rounds` times each. Both must leave the
same moving statistics (checked). Reports the median seconds of each way and
their ratio (eager / traced, tracing included). TensorFlow only: elsewhere
both ways are the same eager passes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import table  # noqa: E402

from pipelines import cli  # noqa: E402

DEFAULT_CONFIG = os.path.join(ROOT, cli.DEFAULT_CONFIG)  # the jobs' default, from the repository root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = ap.parse_args(argv)
    if args.batches < 1 or args.rounds < 1:
        ap.error("--batches and --rounds must be at least 1")

    import keras

    if keras.backend.backend() != "tensorflow":
        print(f"error: this compares TensorFlow's traced passes with eager ones; KERAS_BACKEND is "
              f"{keras.backend.backend()}", file=sys.stderr)
        return 2
    import numpy as np
    import tensorflow as tf

    from pipelines import experiment
    from pipelines.config import load_config
    from pipelines.precise_bn import recalibrate_batch_norm

    cfg = load_config(args.config, args.overrides)
    splits = experiment.load_data(cfg)
    train_ds = experiment.make_datasets(cfg, splits, experiment.build_augmentation(cfg))[0]
    batches = list(train_ds.repeat().take(args.batches).as_numpy_iterator())
    cached = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=train_ds.element_spec)
    keras.utils.set_random_seed(cfg.train.seed)
    model = experiment.build_model(cfg, splits.image_shape, splits.num_classes)
    norms = [v for v in model.weights if "moving_" in v.path]

    times, stats = {"traced": [], "eager": []}, {}
    for _ in range(args.rounds):
        for way in ("eager", "traced"):
            t = time.perf_counter()
            n = recalibrate_batch_norm(model, cached, args.batches, traced=way == "traced")
            times[way].append(time.perf_counter() - t)
            assert n == args.batches, (n, args.batches)
            stats[way] = [keras.ops.convert_to_numpy(v).copy() for v in norms]
    worst = max((float(np.max(np.abs(a - b) / (1e-3 + np.abs(b)))) for a, b in zip(stats["traced"], stats["eager"])),
                default=0.0)
    if worst > 1e-3:
        print(f"error: the traced passes left other statistics than the eager ones (relative {worst:.2e})",
              file=sys.stderr)
        return 1
    eager, traced = statistics.median(times["eager"]), statistics.median(times["traced"])
    print(f"{os.path.relpath(args.config, ROOT)} {' '.join(args.overrides)}: {model.name}, "
          f"{model.count_params():,} parameters, {len(norms) // 2} batch norms, {args.batches} batches of "
          f"{cfg.data.batch_size}, {args.rounds} rounds in turns")
    runs = {way: " ".join(f"{t:.2f}" for t in times[way]) for way in times}
    print(table([{"way": "eager", "median s": f"{eager:.2f}", "runs (s)": runs["eager"]},
                 {"way": "traced (tracing included)", "median s": f"{traced:.2f}", "runs (s)": runs["traced"]}]))
    print(f"eager / traced: {eager / traced:.2f}x; the statistics agree (max relative difference {worst:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
