"""Dataset sources: a source string -> train / validation / test arrays.

Sources:
    synthetic        the embedded MNIST-like digits (data/synthetic.py); no network.
    npz:<path>       arrays x_train, y_train, x_test, y_test (optionally x_val, y_val),
                     as in ../shared/data/mnist-partial.npz.
    folder:<path>    one subfolder per class of PNG/JPEG files; either directly under
                     <path> (test and validation splits are carved off) or under
                     <path>/train and <path>/test (and optionally <path>/validation).
    tfds:<name>      a tensorflow-datasets dataset from `data_dir`; download is off by
                     default so that no run hangs on the network.

Images come back as uint8 [N, H, W, C], labels as int64 [N]. A validation split
is carved (stratified, seeded) from the training data when the source has none.
Everything is held in memory, which suits the MNIST-scale datasets this tool is
for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# Folder names of a validation split, in order of preference (the first present is read).
VALIDATION_FOLDERS = ("validation", "valid", "val")

class DataSourceError(ValueError):
    """A data source the user named is missing or malformed; the message says how to fix it."""


@dataclass
class Splits:
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])


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


def _as_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise DataSourceError(f"{what}: {len(y)} labels for {n} images")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise DataSourceError(f"{what}: labels must be non-negative integers, got dtype {y.dtype}")
    return y.astype(np.int64)


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


# ----------------------------------------------------------------------------- sources


def _load_npz(path: str):
    if not os.path.isfile(path):
        raise DataSourceError(f"npz:{path}: no such file")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:  # zip/format errors come in many types
        raise DataSourceError(f"npz:{path}: not a readable .npz file ({e})") from None
    with f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
        if missing:
            raise DataSourceError(f"npz:{path}: missing array(s) {missing}; it has {sorted(f.files)}")
        arrays = {k: f[k] for k in f.files}
    out = {}
    for split, (xk, yk) in {"train": ("x_train", "y_train"), "test": ("x_test", "y_test"),
                            "validation": ("x_val", "y_val")}.items():
        if xk in arrays:
            if yk not in arrays:
                raise DataSourceError(f"npz:{path}: {xk} has no {yk}")
            x = _as_images(arrays[xk], f"npz:{path} {xk}")
            out[split] = (x, _as_labels(arrays[yk], len(x), f"npz:{path} {yk}"))
    classes = int(max(out["train"][1].max(initial=0), out["test"][1].max(initial=0))) + 1
    return out, [str(i) for i in range(classes)]


def _read_image(path: str, mode: str | None, size):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode) if mode else im
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataSourceError(f"folder: cannot read image {path} ({e})") from None


def _image_mode(path: str) -> str:
    """'L' for grayscale files, 'RGB' for the rest."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return "L" if im.mode in ("L", "1", "I;16", "I", "LA") else "RGB"
    except (UnidentifiedImageError, OSError) as e:
        raise DataSourceError(f"folder: cannot read image {path} ({e})") from None


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _load_folder_split(root: str, class_names: list[str], image_size):
    files, labels = [], []
    for c, name in enumerate(class_names):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            if fn.lower().endswith(IMAGE_SUFFIXES):
                files.append(os.path.join(d, fn))
                labels.append(c)
    if not files:
        raise DataSourceError(f"folder:{root}: no PNG/JPEG images in its class subfolders")
    modes = {_image_mode(p) for p in files}
    mode = "L" if modes == {"L"} else "RGB"
    images = [_read_image(p, mode, image_size) for p in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(p for p, im in zip(files, images) if im.shape != first)
        raise DataSourceError(
            f"folder:{root}: images differ in size ({files[0]} is {first[:2]}, {odd} is "
            f"{next(im.shape for im in images if im.shape != first)[:2]}); set data.image_size: [H, W]"
        )
    x = np.stack(images)
    return _as_images(x, f"folder:{root}"), np.asarray(labels, np.int64)


def _load_folder(root: str, image_size, validation_fraction: float, seed: int):
    if not os.path.isdir(root):
        raise DataSourceError(f"folder:{root}: no such directory")
    top = _class_dirs(root)
    if "train" in top and "test" in top:
        class_names = _class_dirs(os.path.join(root, "train"))
        if not class_names:
            raise DataSourceError(f"folder:{root}/train: no class subfolders")
        out = {"train": _load_folder_split(os.path.join(root, "train"), class_names, image_size),
               "test": _load_folder_split(os.path.join(root, "test"), class_names, image_size)}
        for vname in VALIDATION_FOLDERS:
            if vname in top:
                out["validation"] = _load_folder_split(os.path.join(root, vname), class_names, image_size)
                break
        return out, class_names
    if not top:
        raise DataSourceError(f"folder:{root}: expected one subfolder per class (or train/ and test/)")
    x, y = _load_folder_split(root, top, image_size)
    # No test split on disk: hold one out the same way as validation.
    train, test = stratified_split(x, y, validation_fraction, seed + 1)
    return {"train": train, "test": test}, top


def _load_tfds(name: str, data_dir: str | None, download: bool):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise DataSourceError(f"tfds:{name}: tensorflow-datasets is not importable ({e})") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataSourceError(f"tfds:{name}: unknown dataset or unreadable data_dir {data_dir!r} ({first})") from None
    if not builder.is_prepared():
        if not download:
            where = data_dir or "~/tensorflow_datasets"
            raise DataSourceError(
                f"tfds:{name}: not prepared in {where}. Prepare it on a machine with network access with "
                f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{where}')"
                f".download_and_prepare()\"` and copy the directory here (or set data.download=true)"
            )
        builder.download_and_prepare()
    splits = builder.info.splits
    features = builder.info.features
    # Datasets stored ad hoc (store_as_tfds_dataset) declare no supervised keys; take image/label.
    keys = builder.info.supervised_keys or (
        ("image", "label") if {"image", "label"} <= set(getattr(features, "keys", lambda: [])()) else None
    )
    if not keys:
        raise DataSourceError(f"tfds:{name}: the dataset has no (image, label) supervised keys")
    out = {}
    for split, names in {"train": ("train",), "test": ("test",), "validation": VALIDATION_FOLDERS}.items():
        found = next((s for s in names if s in splits), None)
        if found is None:
            continue
        xs, ys = [], []
        for ex in tfds.as_numpy(builder.as_dataset(split=found)):
            xs.append(ex[keys[0]])
            ys.append(ex[keys[1]])
        x = _as_images(np.stack(xs), f"tfds:{name} {found}")
        out[split] = (x, _as_labels(np.asarray(ys), len(x), f"tfds:{name} {found}"))
    if "train" not in out or "test" not in out:
        raise DataSourceError(f"tfds:{name}: needs 'train' and 'test' splits, has {sorted(splits)}")
    label = features[keys[1]]
    names = list(getattr(label, "names", None) or [])
    if not names:
        names = [str(i) for i in range(int(max(out["train"][1].max(), out["test"][1].max())) + 1)]
    return out, names


def load_splits(
    source: str,
    *,
    seed: int = 0,
    validation_fraction: float = 0.1,
    data_dir: str | None = None,
    download: bool = False,
    image_size=None,
    cache_dir: str | None = ".cache",
    synthetic_train_size: int = 12000,
    synthetic_test_size: int = 2000,
) -> Splits:
    """Load the data of `source` as train / validation / test splits."""
    if source == "synthetic":
        from data import synthetic

        (xtr, ytr), (xte, yte) = synthetic.load(synthetic_train_size, synthetic_test_size, seed, cache_dir)
        out, class_names = {"train": (xtr, ytr), "test": (xte, yte)}, list(synthetic.CLASS_NAMES)
    elif source.startswith("npz:"):
        out, class_names = _load_npz(os.path.expanduser(source[4:]))
    elif source.startswith("folder:"):
        out, class_names = _load_folder(os.path.expanduser(source[7:]), image_size, validation_fraction, seed)
    elif source.startswith("tfds:"):
        out, class_names = _load_tfds(source[5:], data_dir, download)
    else:
        raise DataSourceError(f"unknown data source {source!r}; use synthetic, npz:<path>, folder:<path> or tfds:<name>")

    train = out["train"]
    if len(train[0]) < 2:
        raise DataSourceError(f"{source}: the training split needs at least 2 images, has {len(train[0])}")
    if "validation" in out:
        validation = out["validation"]
    else:
        train, validation = stratified_split(*train, validation_fraction, seed)
    shapes = {train[0].shape[1:], validation[0].shape[1:], out["test"][0].shape[1:]}
    if len(shapes) > 1:
        hint = "; set data.image_size: [H, W] to resize them" if source.startswith("folder:") else ""
        raise DataSourceError(f"{source}: splits have different image shapes {sorted(shapes)}{hint}")
    n_classes = len(class_names)
    for split_name, (_, y) in (("train", train), ("validation", validation), ("test", out["test"])):
        if y.size and y.max() >= n_classes:
            raise DataSourceError(f"{source}: {split_name} label {int(y.max())} is outside the {n_classes} classes")
    return Splits(train, validation, out["test"], class_names, source)
