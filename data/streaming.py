"""Streaming sources: a source string -> lazily read `tf.data` splits plus their metadata.

The array API of data/sources.py (`load_splits`) holds every image in memory;
this module is the streaming one beside it (issue 13). `open_source` returns a
`StreamSplits`: three `Split`s (train, validation, test) whose `elements()` is
a `tf.data.Dataset` of `(uint8 image [H, W, C], int64 label)` read from disk
and decoded in the graph, in parallel, and a `DatasetInfo` (class names,
per-split counts, image shape, bad files skipped) known without decoding the
images: from the file list and a header pass, from the `dataset.json` beside
TFRecord shards, or from the tfds `DatasetInfo`.

Sources:
    folder:<path>    one subfolder per class, directly under <path> (test and then
                     validation carved off, stratified and seeded, by file list) or
                     under <path>/train and <path>/test (and optionally validation/,
                     valid/ or val/). PNG, JPEG, BMP and GIF (first frame): what
                     `tf.io.decode_image` reads.
    tfrecord:<glob>  shards written by `make convert` (data/tfrecord.py); the glob may
                     also be the shards' directory. `dataset.json` beside them holds
                     the class names, image shape, splits, per-file counts and labels.
    tfds:<name>      `builder.as_dataset` with the image left encoded
                     (`tfds.decode.SkipDecoding`) and decoded in the pipeline.
    npz:<path>, synthetic
                     loaded into memory by data/sources.py (small by nature) and
                     exposed through the same `Split` interface.

Why not `keras.utils.image_dataset_from_directory`: it fits neither the split
nor the error contract. It splits only by a fraction of a shuffled file list
(not stratified per class, no train/ test/ val/ layout), gives no
three-way split, returns float32 images already batched (so no uint8 cache, no
per-process sharding before decoding, no random crop after caching), and a
corrupt file surfaces as a TensorFlow error in the middle of an epoch instead
of one error naming the file before training. Its decode (`tf.io.decode_image`
+ `tf.image.resize`) is the same as here; bench/bench_streaming.py compares
their speed.

Modules: this one opens each kind of source (file lists, metadata, carved
splits, sharding) and resolves the options (`open_source`); data/options.py
holds `DataOptions`, `DatasetInfo` and `BadImagesError`; data/images.py the
header pass and the graph ops that decode and preprocess (channels, `resize`
to `image_size`: stretch, crop, pad); data/splits.py `Split` (reading,
caching, shuffling, random crops) and `StreamSplits`. Every public name of
those modules is importable from here too.

Sharding (`num_processes`, `process_id`): every split is cut before decoding
into `num_processes` disjoint parts whose union is the split: element i goes
to process i % num_processes (for TFRecords with at least as many files of a
split as processes, whole files go round-robin instead). Counts in
`DatasetInfo.counts` are this process's; `total_counts` are the whole split's.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import json
import os

import numpy as np

from data.images import scan_images
from data.options import METADATA_FILE, SPLITS, BadImagesError, DataOptions, DatasetInfo
from data.sources import VALIDATION_FOLDERS, DataSourceError, load_splits, stratified_split
from data.splits import Split, StreamSplits, _StreamConfig

# Re-exported: callers import these from data.streaming as before the split into modules.
from data.images import IMAGE_SUFFIXES, RESIZE_MODES, convert_channels, decode_image, preprocess_image  # noqa: F401
from data.options import CACHE_MODES  # noqa: F401
from data.splits import AUTOTUNE, clear_disk_cache, steps_per_epoch  # noqa: F401

__all__ = [
    "DataOptions",
    "DatasetInfo",
    "Split",
    "StreamSplits",
    "BadImagesError",
    "open_source",
    "scan_images",
    "preprocess_image",
    "decode_image",
]


# ----------------------------------------------------------------------------- sources


def _shard_indices(n: int, o: DataOptions) -> np.ndarray:
    return np.arange(o.process_id, n, o.num_processes)


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _list_split(root: str, class_names: list[str]):
    paths, labels = [], []
    for c, name in enumerate(class_names):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            if fn.startswith(".") or not os.path.isfile(p):
                continue
            paths.append(p)
            labels.append(c)
    return np.asarray(paths, dtype=object), np.asarray(labels, np.int64)


def list_folder(root: str, options: DataOptions):
    """The file lists of `folder:<root>` (before the header pass): ({split: (paths, labels)}, class names)."""
    if not os.path.isdir(root):
        raise DataSourceError(f"folder:{root}: no such directory")
    top = _class_dirs(root)
    if "train" in top and "test" in top:
        class_names = _class_dirs(os.path.join(root, "train"))
        if not class_names:
            raise DataSourceError(f"folder:{root}/train: no class subfolders")
        out = {"train": _list_split(os.path.join(root, "train"), class_names),
               "test": _list_split(os.path.join(root, "test"), class_names)}
        used = ["train", "test"]
        for vname in VALIDATION_FOLDERS:
            if vname in top:
                out["validation"] = _list_split(os.path.join(root, vname), class_names)
                used.append(vname)
                break
        ignored = [d for d in top if d not in used]
        if ignored:  # every folder the source sees is used or named
            print(f"Warning: folder:{root}: ignored top-level folder(s) {', '.join(ignored)}: the splits read are "
                  f"{', '.join(used)} (a validation split is one of {', '.join(VALIDATION_FOLDERS)}/)")
        return out, class_names, True
    if not top:
        raise DataSourceError(f"folder:{root}: expected one subfolder per class (or train/ and test/)")
    return {"all": _list_split(root, top)}, top, False


def _open_folder(root: str, o: DataOptions, stream: _StreamConfig):
    lists, class_names, has_test = list_folder(root, o)
    every = np.concatenate([p for p, _ in lists.values()])
    if len(every) == 0:
        raise DataSourceError(f"folder:{root}: no image files in its class subfolders")
    found = scan_images(every, o.scan_workers, full=o.check_images == "full")
    bad = [(p, r) for p, r in zip(every, found) if isinstance(r, str)]
    if bad and not o.skip_bad_images:
        raise BadImagesError(f"folder:{root}", bad)
    badset = {p for p, _ in bad}
    good = [r for r in found if not isinstance(r, str)]
    if not good:
        raise DataSourceError(f"folder:{root}: none of its {len(every)} files is a readable image")
    lists = {k: (p[[x not in badset for x in p]], y[[x not in badset for x in p]]) for k, (p, y) in lists.items()}
    if not has_test:  # the same carve as data.sources.load_splits: test with seed + 1, then validation with seed
        (p, y), test = stratified_split(*lists.pop("all"), o.validation_fraction, o.seed + 1)
        lists = {"train": (p, y), "test": test}
    if "validation" not in lists:
        if len(lists["train"][0]) < 2:
            raise DataSourceError(f"folder:{root}: the training split needs at least 2 images")
        lists["train"], lists["validation"] = stratified_split(*lists["train"], o.validation_fraction, o.seed)
    channels = o.channels if o.channels != "auto" else (1 if all(g for _, _, g in good) else 3)
    sizes = sorted({(h, w) for h, w, _ in good})
    stream.native_size = sizes[0] if len(sizes) == 1 else None
    stream.native_channels = 1 if all(g for _, _, g in good) else 3
    stream.mixed_sizes_hint = f"({len(sizes)} sizes, e.g. {sizes[0]} and {sizes[-1]})"
    shape = (*(o.image_size or stream.native_size or (None, None)), channels)
    fingerprint = hashlib.sha256()
    for k in SPLITS:
        for p in lists[k][0]:
            st = os.stat(p)
            fingerprint.update(f"{k}|{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    stream.key = f"folder:{os.path.abspath(root)}:{fingerprint.hexdigest()}"
    splits = {}
    for k in SPLITS:
        paths, labels = lists[k]
        idx = _shard_indices(len(paths), o)
        splits[k] = Split(k, "files", labels[idx], stream=stream, paths=paths[idx].astype(str), total=len(paths))
    return splits, class_names, shape, channels, bad


def _open_arrays(source: str, o: DataOptions, stream: _StreamConfig):
    s = load_splits(source, seed=o.seed, validation_fraction=o.validation_fraction, data_dir=o.data_dir,
                    download=o.download, image_size=None, cache_dir=o.cache_dir,
                    synthetic_train_size=o.synthetic_train_size, synthetic_test_size=o.synthetic_test_size)
    c_in = s.image_shape[-1]
    channels = o.channels if o.channels != "auto" else (1 if c_in == 1 else 3)
    shape = (*(o.image_size or s.image_shape[:2]), channels)
    stream.native_size = tuple(s.image_shape[:2])
    stream.native_channels = 1 if c_in == 1 else 3
    splits = {}
    digest = hashlib.sha256()
    for k in SPLITS:
        x, y = getattr(s, k)
        digest.update(np.ascontiguousarray(y).tobytes())
        digest.update(np.ascontiguousarray(x[:64]).tobytes())
        idx = _shard_indices(len(x), o)
        splits[k] = Split(k, "arrays", y[idx], stream=stream, images=x[idx], total=len(x))
    stream.key = f"{source}:{o.synthetic_train_size}:{o.synthetic_test_size}:{digest.hexdigest()}"
    return splits, s.class_names, shape, channels, []


def _split_masks(total_len: int, masks_or_none, o: DataOptions):
    """Combine a carve mask with the element-level shard of this process."""
    base = np.ones(total_len, bool) if masks_or_none is None else masks_or_none
    where = np.flatnonzero(base)
    keep = np.zeros(total_len, bool)
    keep[where[o.process_id::o.num_processes]] = True
    return keep


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
    with open(meta_path) as f:
        meta = json.load(f)
    return files, meta, os.path.dirname(files[0])


def _open_tfrecord(pattern: str, o: DataOptions, stream: _StreamConfig):
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
            mask = _split_masks(int(sum(counts)), carve, o)
            out[k] = Split(k, "records", None if labels is None else labels[mask], stream=stream, files=names,
                           file_counts=counts, mask=mask, total=total)
    class_names = list(meta["class_names"])
    hint = meta.get("channels") or 3
    channels = o.channels if o.channels != "auto" else int(hint)
    stream.native_size = tuple(meta["image_shape"][:2]) if meta.get("image_shape") else None
    stream.native_channels = int(hint)
    shape = (*(o.image_size or stream.native_size or (None, None)), channels)
    stream.key = f"tfrecord:{os.path.abspath(root)}:{meta.get('fingerprint', '')}:{sorted(matched)}"
    return out, class_names, shape, channels, []


def _open_tfds(name: str, o: DataOptions, stream: _StreamConfig):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise DataSourceError(f"tfds:{name}: tensorflow-datasets is not importable ({e})") from None
    # Reuse the array loader's checks (not prepared, unknown name) without reading any image.
    try:
        builder = tfds.builder(name, data_dir=o.data_dir)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataSourceError(f"tfds:{name}: unknown dataset or unreadable data_dir {o.data_dir!r} ({first})") from None
    if not builder.is_prepared():
        if not o.download:
            where = o.data_dir or "~/tensorflow_datasets"
            raise DataSourceError(
                f"tfds:{name}: not prepared in {where}. Prepare it on a machine with network access with "
                f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{where}')"
                f".download_and_prepare()\"` and copy the directory here (or set data.download=true)")
        builder.download_and_prepare()
    info = builder.info
    features = info.features
    keys = info.supervised_keys or (
        ("image", "label") if {"image", "label"} <= set(getattr(features, "keys", lambda: [])()) else None)
    if not keys:
        raise DataSourceError(f"tfds:{name}: the dataset has no (image, label) supervised keys")
    ikey, lkey = keys
    found = {}
    for k, names in {"train": ("train",), "test": ("test",), "validation": VALIDATION_FOLDERS}.items():
        hit = next((s for s in names if s in info.splits), None)
        if hit is not None:
            found[k] = hit
    if "train" not in found or "test" not in found:
        raise DataSourceError(f"tfds:{name}: needs 'train' and 'test' splits, has {sorted(info.splits)}")
    out = {}
    carve = None
    if "validation" not in found:
        train_labels = Split("train", "tfds", None, stream=stream, tfds_args=(builder, found["train"], ikey, lkey),
                             mask=np.ones(info.splits[found["train"]].num_examples, bool)).labels()
        idx = np.arange(len(train_labels))
        (rest, _), _ = stratified_split(idx, train_labels, o.validation_fraction, o.seed)
        carve = np.zeros(len(idx), bool)
        carve[rest] = True
    for k in SPLITS:
        split_name = found.get(k, found["train"])
        n = info.splits[split_name].num_examples
        base = None
        if carve is not None and k in ("train", "validation") and "validation" not in found:
            base = carve if k == "train" else ~carve
        mask = _split_masks(n, base, o)
        out[k] = Split(k, "tfds", None, stream=stream, tfds_args=(builder, split_name, ikey, lkey), mask=mask,
                       total=int(base.sum()) if base is not None else n)
    label = features[lkey]
    class_names = list(getattr(label, "names", None) or [str(i) for i in range(getattr(label, "num_classes", 0))])
    shape_in = tuple(getattr(features[ikey], "shape", (None, None, None)))
    c_in = shape_in[-1] if len(shape_in) == 3 else None
    channels = o.channels if o.channels != "auto" else (1 if c_in == 1 else 3)
    stream.native_size = None if None in shape_in[:2] or len(shape_in) != 3 else tuple(shape_in[:2])
    stream.native_channels = 1 if c_in == 1 else 3
    shape = (*(o.image_size or stream.native_size or (None, None)), channels)
    stream.key = f"tfds:{name}:{info.version}:{os.path.abspath(o.data_dir or '~')}"
    return out, class_names, shape, channels, []


def open_source(source: str, options: DataOptions | None = None, *, allow_mixed_sizes: bool = False,
                **kwargs) -> StreamSplits:
    """Open `source` for streaming: the three splits and their metadata. Decodes no image.

    `options` (a `DataOptions`) or its fields as keyword arguments.
    `allow_mixed_sizes` (for `make convert`, which stores the files as they are):
    images of different sizes without `image_size` are not an error; the
    info's image shape then has None for height and width. Raises
    `DataSourceError` (a `ValueError`) for a missing or malformed source and its
    subclass `BadImagesError` for unreadable files (unless `skip_bad_images`).
    """
    o = options if options is not None else DataOptions(**kwargs)
    if options is not None and kwargs:
        o = dataclasses.replace(options, **kwargs)
    stream = _StreamConfig(options=o, key=source)
    if source == "synthetic" or source.startswith("npz:"):
        splits, class_names, shape, channels, bad = _open_arrays(source, o, stream)
    elif source.startswith("folder:") and len(source) > 7:
        splits, class_names, shape, channels, bad = _open_folder(os.path.expanduser(source[7:]), o, stream)
    elif source.startswith("tfrecord:") and len(source) > 9:
        splits, class_names, shape, channels, bad = _open_tfrecord(source[9:], o, stream)
    elif source.startswith("tfds:") and len(source) > 5:
        splits, class_names, shape, channels, bad = _open_tfds(source[5:], o, stream)
    else:
        raise DataSourceError(f"unknown data source {source!r}; use synthetic, npz:<path>, folder:<path>, "
                              f"tfrecord:<glob> or tfds:<name>")
    if splits["train"].total_count < 1:
        raise DataSourceError(f"{source}: the training split is empty")
    if None in shape[:2] and not allow_mixed_sizes:
        raise DataSourceError(f"{source}: images differ in size {stream.mixed_sizes_hint}; "
                              f"set data.image_size: [H, W] (and data.resize: stretch, crop or pad)")
    stream.channels = int(channels)
    stream.image_shape = tuple(None if v is None else int(v) for v in shape)
    stream.skip_errors = bool(o.skip_bad_images)
    counts = {k: splits[k].count for k in SPLITS}
    if o.cache == "auto":
        decoded = sum(counts.values()) * int(np.prod([v or 0 for v in stream.image_shape]))
        stream.cache = "memory" if decoded <= o.cache_budget_mb * 2**20 else "none"
    else:
        stream.cache = o.cache
    info = DatasetInfo(source=source, class_names=list(class_names), image_shape=stream.image_shape, counts=counts,
                       total_counts={k: splits[k].total_count for k in SPLITS}, cache=stream.cache,
                       bad_files=[(str(p), r) for p, r in bad], num_processes=o.num_processes,
                       process_id=o.process_id)
    n_classes = len(class_names)
    for k in SPLITS:
        lab = splits[k]._labels
        if lab is not None and lab.size and lab.max() >= n_classes:
            raise DataSourceError(f"{source}: {k} label {int(lab.max())} is outside the {n_classes} classes")
    return StreamSplits(splits["train"], splits["validation"], splits["test"], info)
