"""`npz:<path>`: arrays x_train, y_train, x_test, y_test (optionally x_val, y_val) in a .npz file, held in memory.

Images as [N, H, W] or [N, H, W, C] with C in 1, 3, 4: uint8, integers in
[0, 255], or floats (in [0, 1]: scaled by 255); labels non-negative integers,
or one-hot rows [N, classes]. The class names are `0` .. the largest label of
any split (or the one-hot rows' width less one, where that is larger). Validation is
carved from train when the file has no x_val.
"""

from __future__ import annotations

import os

import numpy as np

from data.options import DataOptions, DataSourceError
from data.sources.common import array_splits
from data.sources.registry import register_source


def _as_images(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataSourceError(f"{what}: expected images [N, H, W] or [N, H, W, C] with C in 1, 3, 4, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        hi = float(np.nanmax(x)) if x.size else 0.0
        if not np.all(np.isfinite(x)):
            raise DataSourceError(f"{what}: images contain NaN or infinite values")
        x = x * 255.0 if hi <= 1.0 else x
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataSourceError(f"{what}: integer pixel values must lie in [0, 255]")
        return x.astype(np.uint8)
    raise DataSourceError(f"{what}: unsupported image dtype {x.dtype}")


def _as_labels(y: np.ndarray, n: int, what: str) -> tuple[np.ndarray, int | None]:
    """(class indices, the one-hot rows' width or None for indices)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1 and len(y) == n:  # one-hot rows [N, classes] (keras.utils.to_categorical)
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DataSourceError(f"{what}: labels of shape {y.shape} are neither class indices [N] nor one-hot rows "
                                  "(a single 1 per row)")
        return y.argmax(axis=1).astype(np.int64), y.shape[1]
    y = y.reshape(-1)
    if len(y) != n:
        raise DataSourceError(f"{what}: {len(y)} labels for {n} images")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise DataSourceError(f"{what}: labels must be non-negative integers, got dtype {y.dtype}")
    return y.astype(np.int64), None


def load_npz(path: str):
    """({split: (uint8 images, int64 labels)}, class names) of the .npz file at `path`."""
    if not os.path.isfile(path):
        raise DataSourceError(f"npz:{path}: no such file")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:  # zip/format errors come in many types
        raise DataSourceError(f"npz:{path}: not a readable .npz file ({e})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):  # np.load reads a .npy too: one array, not the named ones
        raise DataSourceError(f"npz:{path}: a single .npy array, not an .npz archive of x_train, y_train, x_test, "
                              "y_test (np.savez)")
    with f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
        if missing:
            raise DataSourceError(f"npz:{path}: missing array(s) {missing}; it has {sorted(f.files)}")
        arrays = {}
        for k in f.files:
            try:
                arrays[k] = f[k]
            except ValueError as e:  # object arrays (pickles) are refused; a damaged member
                raise DataSourceError(f"npz:{path}: array {k} is not readable ({e}); images and labels must be "
                                      "numeric arrays") from None
    out, widths = {}, {}
    for split, (xk, yk) in {"train": ("x_train", "y_train"), "test": ("x_test", "y_test"),
                            "validation": ("x_val", "y_val")}.items():
        if xk in arrays:
            if yk not in arrays:
                raise DataSourceError(f"npz:{path}: {xk} has no {yk}")
            x = _as_images(arrays[xk], f"npz:{path} {xk}")
            y, width = _as_labels(arrays[yk], len(x), f"npz:{path} {yk}")
            out[split] = (x, y)
            if width is not None:
                widths[yk] = width
    if len(set(widths.values())) > 1:
        raise DataSourceError(f"npz:{path}: the one-hot labels have different numbers of classes: {widths}")
    width = next(iter(widths.values()), None)
    for split, (_, y) in out.items():
        if width is not None and y.size and int(y.max()) >= width:  # indices beside one-hot rows of fewer classes
            raise DataSourceError(f"npz:{path}: {split} has label {int(y.max())}, but the one-hot labels have "
                                  f"{width} classes")
    # One-hot rows give the class count even where the last classes have no image; indices give the largest + 1.
    classes = max([int(y.max(initial=0)) + 1 for _, y in out.values()] + list(widths.values()))
    return out, [str(i) for i in range(classes)]


@register_source("npz", argument="<path>", files="path",
                 help="arrays x_train, y_train, x_test, y_test (x_val, y_val); in memory")
def open_npz(path: str, o: DataOptions, stream):
    arrays, class_names = load_npz(os.path.expanduser(path))
    return array_splits(arrays, class_names, o, stream)
