"""What the source modules share: the stratified carve, this process's shard, in-memory splits.

`stratified_split` carves validation (and, for a folder without test/, test)
splits, seeded; `shard_indices` and `split_masks` cut a split into this
process's part before anything is decoded (element i goes to process
i % num_processes); `array_splits` turns uint8 arrays held in memory
(`synthetic`, `npz:`) into the three `Split`s every source returns.
"""

from __future__ import annotations

import hashlib

import numpy as np

from data.options import SPLITS, DataOptions, DataSourceError

# Folder (and tfds split) names of a validation split, in order of preference (the first present is read).
VALIDATION_FOLDERS = ("validation", "valid", "val")

__all__ = ["VALIDATION_FOLDERS", "stratified_split", "shard_indices", "split_masks", "array_splits"]


def stratified_split(x, y, fraction: float, seed: int):
    """Split (x, y) into (rest, held-out) with about `fraction` of each class held out."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        if len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        held.append(idx[:k])
    held = np.sort(np.concatenate(held)) if held else np.array([], np.int64)
    mask = np.ones(len(y), bool)
    mask[held] = False
    return (x[mask], y[mask]), (x[held], y[held])


def shard_indices(n: int, o: DataOptions) -> np.ndarray:
    """The indices of this process's part of a split of `n` elements."""
    return np.arange(o.process_id, n, o.num_processes)


def split_masks(total_len: int, masks_or_none, o: DataOptions) -> np.ndarray:
    """Combine a carve mask (or None: everything) with the element-level shard of this process."""
    base = np.ones(total_len, bool) if masks_or_none is None else masks_or_none
    where = np.flatnonzero(base)
    keep = np.zeros(total_len, bool)
    keep[where[o.process_id::o.num_processes]] = True
    return keep


def array_splits(arrays: dict, class_names: list[str], o: DataOptions, stream):
    """An opener's result for images held in memory.

    `arrays`: {split: (uint8 images [N, H, W, C], int64 labels [N])} with `train` and
    `test` (and `validation`, else carved from train, stratified, with `o.seed`).
    """
    from data.splits import Split

    source = o.source
    if len(arrays["train"][0]) < 2:
        raise DataSourceError(f"{source}: the training split needs at least 2 images, has {len(arrays['train'][0])}")
    if "validation" not in arrays:
        arrays = dict(arrays)
        arrays["train"], arrays["validation"] = stratified_split(*arrays["train"], o.validation_fraction, o.seed)
    shapes = {arrays[k][0].shape[1:] for k in SPLITS}
    if len(shapes) > 1:
        raise DataSourceError(f"{source}: splits have different image shapes {sorted(shapes)}")
    stored = arrays["train"][0].shape[1:]
    c_in = stored[-1]
    channels = o.channels if o.channels != "auto" else (1 if c_in == 1 else 3)
    shape = (*(o.image_size or stored[:2]), channels)
    stream.native_size = tuple(stored[:2])
    stream.native_channels = 1 if c_in == 1 else 3
    splits = {}
    digest = hashlib.sha256()
    for k in SPLITS:
        x, y = arrays[k]
        digest.update(np.ascontiguousarray(y).tobytes())
        digest.update(np.ascontiguousarray(x[:64]).tobytes())
        idx = shard_indices(len(x), o)
        splits[k] = Split(k, "arrays", y[idx], stream=stream, images=x[idx], total=len(x))
    stream.key = f"{source}:{o.synthetic.train_size}:{o.synthetic.test_size}:{digest.hexdigest()}"
    return splits, list(class_names), shape, channels, []
