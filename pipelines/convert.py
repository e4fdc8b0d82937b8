"""Write any data source into sharded TFRecords: `make convert SRC=<source> DEST=<dir>`.

    python -m pipelines.convert --src folder:/data/pcam --dest /data/pcam-shards
    python -m pipelines.convert --src tfds:mnist --dest shards/mnist --data-dir ~/tensorflow_datasets

The shards are read back with `data.source=tfrecord:<dir>` (or a glob of
them). Files are stored as they are (no re-encoding); `data.image_size`,
`data.channels` and `data.resize` apply when reading. Parallel, resumable
(running the same command again skips the finished shards), with a progress
bar. A bad source or unreadable images end in one message and exit code 2
(`--skip-bad-images` leaves them out and lists them in dataset.json).
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args(argv=None):
    from data.options import SHARD_SIZE
    from data.sources import available_sources, source_usage  # the registry: no TensorFlow

    sources = "\n".join(f"  {s.usage:<17} {s.help}" for s in available_sources())
    p = argparse.ArgumentParser(prog="make convert", description="Write a data source into sharded TFRecords.",
                                epilog=f"data sources:\n{sources}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help=source_usage())
    p.add_argument("--dest", required=True, help="directory of the shards (created)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help=f"images per shard (default {SHARD_SIZE})")
    p.add_argument("--workers", type=int, default=min(8, (os.cpu_count() or 2) * 2), help="shards written at once")
    p.add_argument("--seed", type=int, default=0, help="seeds carved splits and the training order (default 0)")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="carved from train when the source has no validation split (default 0.1)")
    p.add_argument("--skip-bad-images", action="store_true", help="leave unreadable files out instead of failing")
    p.add_argument("--data-dir", default=None, help="tfds data_dir")
    p.add_argument("--download", action="store_true", help="tfds: allow downloading")
    p.add_argument("--cache-dir", default=".cache", help="synthetic digits' cache (default .cache)")
    p.add_argument("--overwrite", action="store_true", help="replace shards of another conversion in --dest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from data.options import BadImagesError, DataOptions
    from data.tfrecord import convert

    options = DataOptions(seed=args.seed, validation_fraction=args.validation_fraction,
                          skip_bad_images=args.skip_bad_images, data_dir=args.data_dir, download=args.download,
                          cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    try:
        meta = convert(args.src, args.dest, options, shard_size=args.shard_size, workers=args.workers,
                       overwrite=args.overwrite, progress=not args.no_progress)
    except BadImagesError as e:  # worded for this command, which has no config
        raise BadImagesError(e.source, e.bad, how_to_skip='add ARGS="--skip-bad-images"') from None
    counts = {k: sum(v["counts"]) for k, v in meta["splits"].items()}
    files = sum(len(v["files"]) for v in meta["splits"].values())
    done = meta["resumed_shards"]
    wrote = f"Wrote {files - done} of {files} shards ({done} already done)" if done else f"Wrote {files} shards"
    print(f"{wrote} of {sum(counts.values())} images to {args.dest} "
          f"(train {counts['train']}, validation {counts['validation']}, test {counts['test']}; "
          f"{len(meta['class_names'])} classes; image shape {meta['image_shape'] or 'mixed'}) "
          f"in {time.perf_counter() - t0:.1f} s")
    if meta["skipped_bad_images"]:
        bad = meta["skipped_bad_images"]
        print(f"Skipped {len(bad)} unreadable file(s): " + ", ".join(p for p, _ in bad[:10]) + (" ..." if len(bad) > 10 else ""))
    print(f"Read them with data.source=tfrecord:{args.dest}")
    return 0


if __name__ == "__main__":
    from pipelines.cli import exit_job, run_main

    exit_job(run_main(main, resumes="the conversion: the shards written are kept"))
