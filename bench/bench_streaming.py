"""Streaming input pipeline (issue 13): images/s and peak memory at real scale.

In a temporary directory it writes `--images` RGB `--size`x`--size` JPEG files in
`--classes` class folders (and the same data as TFRecord shards through
`data.tfrecord.convert`, what `make convert` runs), then measures in one run:

1. images/s of the training input pipeline (read, decode, resize to
   `--size`, shuffle, batch, augment: translation 0.1, rotation 30 degrees)
   from the folder and from the shards (`data.streaming` + `make_stream_dataset`),
   against `keras.utils.image_dataset_from_directory` on the same folder with
   the same augmentation, and against the training consumption of
   `baseline_cnn` at that size (`train_on_batch` on batches in memory).
   Goals: ours >= Keras' utility, and >= 3x the model's consumption.
2. peak resident memory (VmHWM) of one epoch of the input pipeline alone and
   of one training epoch of `baseline_cnn`, on the folder and on a copy twice
   as large (hard links), each in its own subprocess. Goal: within 10% of each
   other and well under the dataset's decoded size.

Full run (about 250 MB of temporary JPEGs plus shards; the 2x copy is hard links):
    PYTHONPATH=. .venv/bin/python bench/bench_streaming.py --images 50000
Quick run on a shared machine (`--cache none`: what `auto` resolves to at full size):
    PYTHONPATH=. .venv/bin/python bench/bench_streaming.py --images 4000 --batches 15 --model-steps 5 --rss-max-steps 8 --cache none
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

AUGMENT = {"translation": {"max": 0.1}, "rotation": {"max_degrees": 30.0}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000, help="JPEG files to generate (default 50000)")
    p.add_argument("--size", type=int, default=96, help="image side (default 96)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=100, help="batches timed per input pipeline (after 3 warm-up)")
    p.add_argument("--model-steps", type=int, default=20, help="train steps timed for the model's consumption")
    p.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds; the best of each is kept")
    p.add_argument("--shard-size", type=int, default=2048)
    p.add_argument("--cache", default="auto", help="data.cache of the measured pipelines (auto|memory|disk|none)")
    p.add_argument("--rss-max-steps", type=int, default=None,
                   help="cap the steps of the memory epochs (default: a whole epoch)")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--workdir", default=None, help="where to generate (default: a temporary directory, removed)")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--child-epoch", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-mode", default="train", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data


def _write_chunk(args):
    import numpy as np
    from PIL import Image

    root, start, stop, size, classes = args
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(start, stop):
        c = i % classes
        # a class-specific oriented stripe pattern, random phase and colour, plus noise: JPEGs of realistic size
        angle = np.pi * c / classes
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (3 + c % 4) * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        colour = rng.uniform(60, 200, 3)
        img = colour[None, None, :] * (0.6 + 0.4 * wave[..., None]) + rng.normal(0, 12, (size, size, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, f"class_{c:02d}", f"{i:06d}.jpg"), quality=90)
    return stop - start


def generate(root: str, n: int, size: int, classes: int, workers: int) -> float:
    from concurrent.futures import ProcessPoolExecutor

    for c in range(classes):
        os.makedirs(os.path.join(root, f"class_{c:02d}"), exist_ok=True)
    chunk = 1000
    jobs = [(root, s, min(n, s + chunk), size, classes) for s in range(0, n, chunk)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_write_chunk, jobs)) == n
    return time.perf_counter() - t0


def link_twice(src: str, dst: str) -> None:
    """A dataset twice as large: every file under two names (hard links, no extra disk)."""
    for c in sorted(os.listdir(src)):
        os.makedirs(os.path.join(dst, c), exist_ok=True)
        for fn in os.listdir(os.path.join(src, c)):
            for copy in ("a", "b"):
                os.link(os.path.join(src, c, fn), os.path.join(dst, c, f"{copy}{fn}"))


def dir_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


# ----------------------------------------------------------------------------- measurements


def rate(ds, batches: int) -> float:
    """Images/s of `batches` batches of `ds` after 3 warm-up batches."""
    it = iter(ds)
    for _ in range(3):
        next(it)
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - t0)


def ours(source: str, args, augment: bool = True):
    from data.augment import build_augmentation
    from data.pipeline import make_stream_dataset
    from data.streaming import open_source

    s = open_source(source, image_size=(args.size, args.size), cache=args.cache, seed=0)
    aug = build_augmentation(**AUGMENT, seed=0) if augment else None
    return s, make_stream_dataset(s.train, args.batch_size, training=True, seed=0, augment=aug).repeat()


def keras_utility(folder: str, args, augment: bool = True):
    import keras
    import tensorflow as tf

    from data.augment import augment_dataset, build_augmentation

    ds = keras.utils.image_dataset_from_directory(
        folder, image_size=(args.size, args.size), batch_size=args.batch_size, shuffle=True, seed=0,
        validation_split=0.1, subset="training", verbose=False)
    ds = ds.map(lambda x, y: (x / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        ds = augment_dataset(ds, build_augmentation(**AUGMENT, seed=0), seed=0)
    return ds.prefetch(tf.data.AUTOTUNE).repeat()


_MODEL = {}


def model_rate(args, num_classes: int) -> float:
    import keras
    import numpy as np

    from models import build_model

    if "model" not in _MODEL:
        model = build_model("baseline_cnn", (args.size, args.size, 3), num_classes)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        _MODEL["model"] = model
    model = _MODEL["model"]
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, args.size, args.size, 3), dtype=np.float32)
    y = rng.integers(0, num_classes, args.batch_size)
    for _ in range(2):
        model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(args.model_steps):
        model.train_on_batch(x, y)
    return args.model_steps * args.batch_size / (time.perf_counter() - t0)


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space made by exec;
    ru_maxrss would also count the parent's peak (Linux keeps it across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_epoch(args) -> None:
    """One epoch on the streamed folder, of training baseline_cnn (`train`) or of the input
    pipeline alone (`input`); prints the peak RSS as JSON."""
    import keras

    from data.augment import build_augmentation
    from data.pipeline import make_stream_dataset
    from data.streaming import open_source
    from models import build_model

    s = open_source(args.child_epoch, image_size=(args.size, args.size), cache=args.cache, seed=0)
    ds = make_stream_dataset(s.train, args.batch_size, training=True, seed=0,
                             augment=build_augmentation(**AUGMENT, seed=0))
    steps = -(-s.train.count // args.batch_size)
    if args.rss_max_steps:
        steps = min(steps, args.rss_max_steps)
        ds = ds.take(steps)
    model = None
    if args.child_mode == "train":
        model = build_model("baseline_cnn", s.image_shape, s.num_classes)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    before = current_rss_mb()
    t0 = time.perf_counter()
    if model is None:
        for _ in ds:
            pass
    else:
        model.fit(ds, epochs=1, verbose=0)
    wall = time.perf_counter() - t0
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "rss_before_mb": before, "steps": steps,
                      "images": s.train.count, "seconds": wall, "cache": s.info.cache,
                      "decoded_mb": s.info.decoded_bytes() / 2**20}))


def rss_of_epoch(source: str, args, mode: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-epoch", source, "--child-mode", mode, "--size", str(args.size),
           "--batch-size", str(args.batch_size), "--cache", args.cache]
    if args.rss_max_steps and mode == "train":
        cmd += ["--rss-max-steps", str(args.rss_max_steps)]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child_epoch:
        child_epoch(args)
        return 0
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    work = args.workdir or tempfile.mkdtemp(prefix="bench_streaming-")
    folder, shards, double = (os.path.join(work, d) for d in ("folder", "shards", "folder2x"))
    try:
        if not os.path.isdir(folder):
            secs = generate(folder, args.images, args.size, args.classes, args.workers)
            print(f"generated {args.images} JPEGs {args.size}x{args.size} in {args.classes} classes in {secs:.0f} s "
                  f"({dir_bytes(folder) / 2**20:.0f} MiB on disk; decoded {args.images * args.size ** 2 * 3 / 2**20:.0f} MiB)")
        from data.streaming import DataOptions
        from data.tfrecord import convert

        t0 = time.perf_counter()
        meta = convert(f"folder:{folder}", shards, DataOptions(seed=0), shard_size=args.shard_size,
                       workers=args.workers * 2, progress=False)
        print(f"convert -> {sum(len(v['files']) for v in meta['splits'].values())} shards in "
              f"{time.perf_counter() - t0:.0f} s (header pass included)")

        from data.streaming import open_source

        t0 = time.perf_counter()
        info = open_source(f"folder:{folder}", image_size=(args.size, args.size), cache=args.cache).info
        print(f"open_source(folder): {time.perf_counter() - t0:.1f} s (listing + parallel header pass); "
              f"cache resolved to {info.cache}")
        s_folder, ds_folder = ours(f"folder:{folder}", args)
        pipelines = {}
        for tag, aug in (("", True), ("_noaug", False)):
            pipelines["ours_folder" + tag] = ds_folder if aug else ours(f"folder:{folder}", args, aug)[1]
            pipelines["ours_tfrecord" + tag] = ours(f"tfrecord:{shards}", args, aug)[1]
            pipelines["keras_utility" + tag] = keras_utility(folder, args, aug)
        results = {k: 0.0 for k in pipelines}
        results["model"] = 0.0
        for _ in range(args.rounds):  # interleaved rounds, best of each: the machine is shared
            for name, ds in pipelines.items():
                results[name] = max(results[name], rate(ds, args.batches))
            results["model"] = max(results["model"], model_rate(args, args.classes))
        m = results["model"]
        for tag, what in (("", "read+decode+resize+shuffle+batch+augment"), ("_noaug", "the same without augment")):
            k = results["keras_utility" + tag]
            print(f"\ninput pipeline, images/s (batch {args.batch_size}, {args.size}x{args.size}x3, {what}; "
                  f"{args.batches} batches, best of {args.rounds} rounds):")
            for name in ("ours_folder", "ours_tfrecord", "keras_utility"):
                r = results[name + tag]
                print(f"  {name:14s} {r:8.0f}   x{r / k:5.2f} keras utility   x{r / m:5.2f} model consumption")
        print(f"  {'baseline_cnn':14s} {m:8.0f}   (training consumption, train_on_batch on in-memory batches)")

        if not args.skip_rss:
            if not os.path.isdir(double):
                link_twice(folder, double)
            for mode, what in (("input", "the input pipeline alone (with augment)"),
                               ("train", "training baseline_cnn" + (f", at most {args.rss_max_steps} steps"
                                                                    if args.rss_max_steps else ""))):
                one = rss_of_epoch(f"folder:{folder}", args, mode)
                two = rss_of_epoch(f"folder:{double}", args, mode)
                print(f"\npeak RSS of one epoch of {what} (cache {one['cache']}), separate processes:")
                for name, r in (("1x", one), ("2x", two)):
                    print(f"  {name}: {r['images']} training images, {r['steps']} steps, peak {r['peak_rss_mb']:.0f} MiB "
                          f"({r['rss_before_mb']:.0f} MiB before the epoch: TensorFlow, the model; decoded dataset "
                          f"{r['decoded_mb']:.0f} MiB), {r['seconds']:.0f} s")
                print(f"  ratio 2x/1x: {two['peak_rss_mb'] / one['peak_rss_mb']:.3f}")
                results.update({f"rss_{mode}_1x_mb": one["peak_rss_mb"], f"rss_{mode}_2x_mb": two["peak_rss_mb"]})
        print("\n" + json.dumps({k: round(v, 1) for k, v in results.items()}))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
