"""`tfrecord:<glob>`: TFRecord shards written by `make convert` (data/tfrecord.py), streamed.

The glob may also be the shards' directory (`<dir>/*.tfrecord`). `dataset.json`
beside them holds the class names, image shape, splits, per-file counts and
labels, so nothing is read to know them. A split given by some of its shards
reads those; validation is carved (by record, stratified, seeded) from train
when there are no validation shards. With at least as many files of a split
as processes, whole files go round-robin to the processes; otherwise records.
`data.check_images: full` reads and decodes every record once before
anything trains (`scan_shards`); a damaged shard, or a record whose image
does not decode, found in training is named the same way (data/streaming.py
`name_read_error`).
"""

from __future__ import annotations

import glob as globlib
import json
import os
import re

import numpy as np

from data.options import METADATA_FILE, PLAN_FILE, SHARD_SIZE, SPLITS, DataOptions, DataSourceError
from data.sources.common import split_masks, stratified_split
from data.sources.registry import register_source


def read_metadata(pattern: str):
    """The shard files matched by `tfrecord:<pattern>` and the `dataset.json` beside them."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*.tfrecord")
    files = sorted(globlib.glob(os.path.expanduser(pattern)))
    if not files:
        raise DataSourceError(f"tfrecord:{pattern}: no files match")
    meta_path = os.path.join(os.path.dirname(files[0]), METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise DataSourceError(f"tfrecord:{pattern}: no {METADATA_FILE} beside the shards; write them with "
                              f"`make convert SRC=<source> DEST=<dir>`")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except ValueError as e:
        raise DataSourceError(f"tfrecord:{pattern}: {meta_path} is not valid JSON ({e}); write the shards again "
                              "with `make convert`") from None
    missing = [k for k in ("splits", "class_names") if k not in meta] if isinstance(meta, dict) else ["splits"]
    if missing:
        raise DataSourceError(f"tfrecord:{pattern}: {meta_path} lacks {', '.join(missing)}; write the shards again "
                              "with `make convert`")
    return files, meta, os.path.dirname(files[0])


def scan_shards(expected: dict[str, int], decode: bool = False) -> list[tuple[str, str]]:
    """Read every record of each shard once (each record's checksum is checked), `expected` its record count in
    `dataset.json`: `(path, reason)` for each shard that is damaged or cut short. With `decode`, each record's image
    is decoded too (`data.images.decode_image`, as training decodes it): `("<path> record <i>", reason)` for each that
    does not decode."""
    import tensorflow as tf

    from data.images import op_error_reason

    bad = []
    for path, want in expected.items():
        try:
            n = int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda c, _: c + 1))
        except tf.errors.OpError as e:  # "corrupted record at <byte>", "truncated record at <byte>"; a shard gone
            m = re.search(r"(corrupted|truncated) record at (\d+)", str(e))
            bad.append((path, f"{m[1]} record at byte {m[2]}" if m else op_error_reason(e)))
            continue
        if n != want:
            bad.append((path, f"{n} records where {METADATA_FILE} lists {want}"))
        elif decode:
            bad += [(f"{path} record {i}", why) for i, why in _undecodable(path, n)]
    return bad


def _undecodable(path: str, n: int, reasons: int = 10) -> list[tuple[int, str]]:
    """(index, reason) of each record of the (checksum-clean) shard that does not parse as an image record or whose
    image `decode_image` refuses. The records are decoded in a parallel tf.data map that drops the failures
    (20,000 64x64 JPEGs: 2.8 s on one core, where an eager loop of a Python step per record took 18 s); only the
    first `reasons` failures are read again, for TensorFlow's message."""
    import tensorflow as tf

    from data.images import decode_image, op_error_reason, tf_decode_error
    from data.splits import _parse_record

    def decodes(i, raw):  # the index, once the image has decoded (its shape keeps the decode from being pruned)
        encoded, label = _parse_record(raw)
        image = decode_image(encoded)
        return tf.identity(i) + 0 * (tf.cast(tf.shape(image)[0], tf.int64) + label)

    def why(i: int) -> str:
        try:
            encoded, _ = _parse_record(next(iter(records.skip(i).take(1))))
        except tf.errors.OpError as e:  # not a record `make convert` writes (a feature missing, not an Example)
            return f"not an image record ({op_error_reason(e)})"
        return tf_decode_error(encoded) or "the record was not read"

    records = tf.data.TFRecordDataset(path)
    kept = records.enumerate().map(decodes, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(8192)
    failed = np.setdiff1d(np.arange(n), np.concatenate([np.zeros(0, np.int64), *kept.as_numpy_iterator()]))
    return [(int(i), why(int(i)) if k < reasons else "it does not parse, or its image does not decode")
            for k, i in enumerate(failed)]


def _convert_args(root: str) -> list[str]:
    """The settings of the conversion that wrote `root` (its plan file) that are not `make convert`'s defaults:
    given again, the same command resumes it, where other settings would be refused the folder."""
    try:
        with open(os.path.join(root, PLAN_FILE)) as f:
            plan = json.load(f)
    except (OSError, ValueError):
        return []
    defaults = DataOptions()
    args = [f"--shard-size {plan['shard_size']}" if plan.get("shard_size", SHARD_SIZE) != SHARD_SIZE else "",
            f"--seed {plan['seed']}" if plan.get("seed", defaults.seed) != defaults.seed else "",
            f"--validation-fraction {plan['validation_fraction']}"
            if plan.get("validation_fraction", defaults.validation_fraction) != defaults.validation_fraction else "",
            "--skip-bad-images" if plan.get("skip_bad_images") else ""]
    return [a for a in args if a]


def damaged_shards_error(pattern: str, bad: list[tuple[str, str]]) -> DataSourceError:
    """The error naming the damaged shards (or records whose image does not decode) of `tfrecord:<pattern>`, and
    how to write them again."""
    import shlex

    _, meta, root = read_metadata(pattern)
    shown = "; ".join(f"{p} ({r})" for p, r in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
    source = meta.get("source") or "<the source they were written from>"
    settings = _convert_args(root)

    def again(*extra: str) -> str:
        args = " ".join(dict.fromkeys([*settings, *extra]))
        return f"make convert SRC={shlex.quote(source)} DEST={shlex.quote(root)}" + (f' ARGS="{args}"' if args else "")

    if all(p.endswith(".tfrecord") for p, _ in bad):  # whole shards: convert writes the missing ones again
        return DataSourceError(f"tfrecord:{pattern}: {len(bad)} damaged shard(s): {shown}. Delete them and run "
                               f"`{again()}` again: it writes only the missing shards")
    other = (f", or convert again without them: `{again('--skip-bad-images', '--overwrite')}` (it decodes "
             "every file and leaves the unreadable ones out)") if source.startswith("folder:") else ""
    return DataSourceError(f"tfrecord:{pattern}: {len(bad)} unreadable record(s): {shown}. Set data.skip_bad_images: "
                           f"true to skip them{other}")


@register_source("tfrecord", argument="<glob>", files="glob",
                 help="shards written by make convert (a glob, or their folder); streamed")
def open_tfrecord(pattern: str, o: DataOptions, stream):
    from data.splits import Split

    files, meta, root = read_metadata(pattern)
    matched = {os.path.abspath(f) for f in files}
    splits = {}
    for k in SPLITS:
        sm = meta["splits"].get(k)
        if sm is None:
            continue
        names = [os.path.abspath(os.path.join(root, f)) for f in sm["files"]]
        counts = list(sm["counts"])
        labels = np.asarray(sm["labels"], np.int64) if sm.get("labels") is not None else None
        picked = [i for i, f in enumerate(names) if f in matched]
        if not picked:
            continue
        missing = [f for i, f in enumerate(names) if i in picked and not os.path.isfile(f)]
        if missing:
            raise DataSourceError(f"tfrecord:{pattern}: {k} shard {missing[0]} is missing")
        starts = np.concatenate([[0], np.cumsum(counts)])
        if labels is not None:
            labels = np.concatenate([labels[starts[i]:starts[i + 1]] for i in picked])
        names = [names[i] for i in picked]
        counts = [counts[i] for i in picked]
        splits[k] = (names, counts, labels)
    if "train" not in splits or "test" not in splits:
        raise DataSourceError(f"tfrecord:{pattern}: needs train and test shards, has {sorted(splits)}")
    if o.check_images == "full":  # every record read and decoded once, before anything trains
        bad = scan_shards({f: c for names, counts, _ in splits.values() for f, c in zip(names, counts)}, decode=True)
        if o.skip_bad_images and bad:  # records that do not decode are skipped in training; damaged shards are not
            records = [(p, r) for p, r in bad if not p.endswith(".tfrecord")]
            if records:
                print(f"Warning: tfrecord:{pattern}: {len(records)} unreadable record(s), skipped in training "
                      f"(data.skip_bad_images): " + "; ".join(f"{p} ({r})" for p, r in records[:10]))
            bad = [(p, r) for p, r in bad if p.endswith(".tfrecord")]
        if bad:
            raise damaged_shards_error(pattern, bad)
    if "validation" not in splits:
        names, counts, labels = splits["train"]
        if labels is None:
            raise DataSourceError(f"tfrecord:{pattern}: no validation shards and no labels in {METADATA_FILE} to carve one")
        idx = np.arange(len(labels))
        (rest, _), (held, _) = stratified_split(idx, labels, o.validation_fraction, o.seed)
        train_mask = np.zeros(len(labels), bool)
        train_mask[rest] = True
        splits["train"] = (names, counts, labels, train_mask)
        splits["validation"] = (names, counts, labels, ~train_mask)
    out = {}
    for k in SPLITS:
        names, counts, labels, *carve = splits[k]
        carve = carve[0] if carve else None
        total = int(carve.sum()) if carve is not None else int(sum(counts))
        if carve is None and len(names) >= o.num_processes:  # whole files round-robin
            pick = list(range(o.process_id, len(names), o.num_processes))
            starts = np.concatenate([[0], np.cumsum(counts)])
            lab = None if labels is None else np.concatenate(
                [labels[starts[i]:starts[i + 1]] for i in pick] or [np.zeros(0, np.int64)])
            out[k] = Split(k, "records", lab, stream=stream, files=[names[i] for i in pick],
                           file_counts=[counts[i] for i in pick], total=total)
        else:
            mask = split_masks(int(sum(counts)), carve, o)
            out[k] = Split(k, "records", None if labels is None else labels[mask], stream=stream, files=names,
                           file_counts=counts, mask=mask, total=total)
    class_names = list(meta["class_names"])
    hint = meta.get("channels") or 3
    channels = o.channels if o.channels != "auto" else int(hint)
    stream.native_size = tuple(meta["image_shape"][:2]) if meta.get("image_shape") else None
    stream.native_channels = int(hint)
    stream.webp = bool(meta.get("webp", True))  # written by convert since WebP is read; unknown before
    shape = (*(o.image_size or stream.native_size or (None, None)), channels)
    stream.key = f"tfrecord:{os.path.abspath(root)}:{meta.get('fingerprint', '')}:{sorted(matched)}"
    return out, class_names, shape, channels, []
