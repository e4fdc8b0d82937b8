"""`folder:<path>`: one subfolder per class of image files, streamed from disk and decoded in the graph.

The class folders are directly under <path> (test and then validation carved
off, stratified and seeded, by file list) or under <path>/train, with
<path>/test and/or a validation folder (validation/, valid/ or val/; test
carved from train/ where test/ is missing; any other top-level folder is
named in a warning). The classes are train/'s subfolders: a class folder
only in test/ or val/, or one with no readable image, is refused; a split
with no image of a class is named in a warning. PNG, JPEG, BMP, GIF
(first frame) and still WebP: what `tf.io.decode_image` reads (an animated WebP is
named as unreadable: TensorFlow's decoder corrupts memory on one); hidden files and folders and
what operating systems leave (`Thumbs.db`, `desktop.ini`, `__MACOSX/`) are
skipped, any other file that is not an image is an error. A header pass (data/images.py
`scan_images`) finds every file's size and channels and the unreadable files
before anything is decoded: `BadImagesError` names them, unless
`skip_bad_images` (which decodes every file, so that each skipped one is named).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from data.options import SPLITS, BadImagesError, DataOptions, DataSourceError
from data.sources.common import VALIDATION_FOLDERS, shard_indices, stratified_split
from data.sources.registry import register_source


# What operating systems write beside a user's files, skipped as hidden files are: Windows' thumbnail caches and
# folder settings, and the folder of resource forks that macOS puts in a zip archive.
_OS_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini"}
_OS_FOLDERS = {"__MACOSX"}


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
                  and d not in _OS_FOLDERS)


def _list_split(root: str, class_names: list[str]):
    paths, labels = [], []
    for c, name in enumerate(class_names):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            dangling = os.path.islink(p) and not os.path.exists(p)  # kept: the header pass names it unreadable
            if fn.startswith(".") or fn.lower() in _OS_FILES or not (os.path.isfile(p) or dangling):
                continue
            paths.append(p)
            labels.append(c)
    return np.asarray(paths, dtype=object), np.asarray(labels, np.int64)


def _name_stray_files(root: str, read: str) -> None:
    """A warning naming the files directly in `root` (not hidden, not the system's), which are not read."""
    stray = sorted(f for f in os.listdir(root) if not f.startswith(".") and f.lower() not in _OS_FILES
                   and os.path.isfile(os.path.join(root, f)))
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        print(f"Warning: folder:{root}: ignored file(s) {shown}: images are read from {read}")


def list_folder(root: str):
    """The file lists of `folder:<root>` (before the header pass): ({split: (paths, labels)}, class names,
    whether it has test/). With split folders the classes are train/'s subfolders; without test/ the training
    list is returned as `all`, for the test split to be carved from it."""
    if not os.path.isdir(root):
        raise DataSourceError(f"folder:{root}: no such directory (give your folder: "
                              f"ARGS=\"data.source=folder:/path/to/images\")")
    top = _class_dirs(root)
    vnames = [v for v in VALIDATION_FOLDERS if v in top]
    if "train" in top and ("test" in top or vnames):
        class_names = _class_dirs(os.path.join(root, "train"))
        if not class_names:
            raise DataSourceError(f"folder:{root}/train: no class subfolders")
        used = ["train", *(["test"] if "test" in top else []), *vnames[:1]]
        for name in used[1:]:  # a class only in test/ or val/ would be dropped without a word: refused
            extra = sorted(set(_class_dirs(os.path.join(root, name))) - set(class_names))
            if extra:
                raise DataSourceError(
                    f"folder:{root}/{name}: class folder(s) {', '.join(extra)} are not in train/ (the classes are "
                    f"train/'s subfolders: {', '.join(class_names)}); rename or remove them")
        out = {"train" if "test" in top else "all": _list_split(os.path.join(root, "train"), class_names)}
        if "test" in top:
            out["test"] = _list_split(os.path.join(root, "test"), class_names)
        if vnames:
            out["validation"] = _list_split(os.path.join(root, vnames[0]), class_names)
        ignored = [d for d in top if d not in used]
        if ignored:  # every folder and file the source sees is used or named
            print(f"Warning: folder:{root}: ignored top-level folder(s) {', '.join(ignored)}: the splits read are "
                  f"{', '.join(used)} (a validation split is one of {', '.join(VALIDATION_FOLDERS)}/)")
        _name_stray_files(root, "the split folders")
        for name in used:
            _name_stray_files(os.path.join(root, name), "its class subfolders")
        return out, class_names, "test" in top
    if not top:
        raise DataSourceError(f"folder:{root}: expected one subfolder per class (or train/ and test/)")
    _name_stray_files(root, "the class subfolders")
    return {"all": _list_split(root, top)}, top, False


def _refuse_empty_classes(train_dir: str, labels: np.ndarray, class_names: list[str]) -> None:
    """Refuse a class with no readable training image (a model would be published with a class it never saw),
    before any split is carved from the training files."""
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [c for c, n in zip(class_names, counts) if n == 0]
    if empty:
        nested = any(os.path.isdir(os.path.join(train_dir, c, d)) for c in empty
                     for d in os.listdir(os.path.join(train_dir, c)))
        raise DataSourceError(
            f"folder:{train_dir}: class folder(s) {', '.join(repr(c) for c in empty)} hold no readable image file"
            + (" (files in nested subfolders are not read: put them directly in the class folder)" if nested else "")
            + "; add images or remove the folder(s)")


def _name_missing_classes(root: str, lists: dict, class_names: list[str], carved: set) -> None:
    """Name the classes that a test or validation split has no image of (their accuracy is not measured)."""
    for k in ("validation", "test"):
        missing = [c for c, n in zip(class_names, np.bincount(lists[k][1], minlength=len(class_names))) if n == 0]
        if missing:
            print(f"Warning: folder:{root}: the {k} split has no image of class(es) {', '.join(missing)}: their "
                  f"{k} accuracy is not measured"
                  + (" (classes with few images get none when a split is carved)" if k in carved else ""))


@register_source("folder", argument="<path>", files="path",
                 help="a subfolder per class of images (or train/, test/); streamed")
def open_folder(path: str, o: DataOptions, stream):
    from data.images import scan_images
    from data.splits import Split

    root = os.path.expanduser(path)
    lists, class_names, has_test = list_folder(root)
    train_dir = root if list(lists) == ["all"] else os.path.join(root, "train")
    every = np.concatenate([p for p, _ in lists.values()])
    if len(every) == 0:
        raise DataSourceError(f"folder:{root}: no image files in its class subfolders")
    # skip_bad_images decodes every file: a file whose header is intact but whose pixels are not is then named
    # and skipped here, instead of being dropped in training without a name (tf.data's ignore_errors)
    found = scan_images(every, o.scan_workers, full=o.check_images == "full" or o.skip_bad_images)
    bad = [(p, r) for p, r in zip(every, found) if isinstance(r, str)]
    if bad and not o.skip_bad_images:
        raise BadImagesError(f"folder:{root}", bad)
    badset = {p for p, _ in bad}
    good = [r for r in found if not isinstance(r, str)]
    if not good:
        raise DataSourceError(f"folder:{root}: none of its {len(every)} files is a readable image")
    lists = {k: (p[[x not in badset for x in p]], y[[x not in badset for x in p]]) for k, (p, y) in lists.items()}
    _refuse_empty_classes(train_dir, lists["all" if not has_test else "train"][1], class_names)
    carved = set() if has_test else {"test"}
    if not has_test:  # test carved with seed + 1, then validation with seed
        (p, y), test = stratified_split(*lists.pop("all"), o.validation_fraction, o.seed + 1)
        lists = {**lists, "train": (p, y), "test": test}
    if "validation" not in lists:
        if len(lists["train"][0]) < 2:
            raise DataSourceError(f"folder:{root}: the training split needs at least 2 images")
        lists["train"], lists["validation"] = stratified_split(*lists["train"], o.validation_fraction, o.seed)
        carved.add("validation")
    left = np.bincount(lists["train"][1], minlength=len(class_names))
    if carved and not left.all():  # every image of a class went to the carved splits
        gone = ", ".join(repr(c) for c, n in zip(class_names, left) if n == 0)
        raise DataSourceError(
            f"folder:{root}: class(es) {gone} have no image left for training once the {' and '.join(sorted(carved))} "
            f"split(s) are carved (data.validation_fraction={o.validation_fraction}): a model would be published "
            "with a class it never saw; add images, or give a smaller data.validation_fraction")
    _name_missing_classes(root, lists, class_names, carved)
    channels = o.channels if o.channels != "auto" else (1 if all(g for _, _, g, _ in good) else 3)
    sizes = sorted({(h, w) for h, w, _, _ in good})
    stream.native_size = sizes[0] if len(sizes) == 1 else None
    stream.native_channels = 1 if all(g for _, _, g, _ in good) else 3
    stream.webp = any(kind == "webp" for _, _, _, kind in good)
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
        idx = shard_indices(len(paths), o)
        splits[k] = Split(k, "files", labels[idx], stream=stream, paths=paths[idx].astype(str), total=len(paths))
    return splits, class_names, shape, channels, bad
