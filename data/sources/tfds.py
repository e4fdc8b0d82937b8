"""`tfds:<name>`: a tensorflow-datasets dataset from `data.data_dir`, streamed with `builder.as_dataset`.

Images are left encoded (`tfds.decode.SkipDecoding`) and decoded in the
pipeline. Download is off unless `data.download` (so that no run hangs on the
network): a dataset that is not prepared is an error that says how to prepare
it. Needs `train` and `test` splits (and reads `validation`, `valid` or `val`;
else validation is carved from train, stratified and seeded, by record).
"""

from __future__ import annotations

import os

import numpy as np

from data.options import SPLITS, DataOptions, DataSourceError
from data.sources.common import VALIDATION_FOLDERS, split_masks, stratified_split
from data.sources.registry import register_source


TFDS_HOST = "storage.googleapis.com"  # TFDS' own mirror of prepared datasets, and many datasets' downloads


def _reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


@register_source("tfds", argument="<name>",
                 help="a tensorflow-datasets dataset from data.data_dir; streamed")
def open_tfds(name: str, o: DataOptions, stream):
    from data.splits import Split

    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise DataSourceError(f"tfds:{name}: tensorflow-datasets is not importable ({e})") from None
    try:
        builder = tfds.builder(name, data_dir=o.data_dir)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataSourceError(f"tfds:{name}: unknown dataset or unreadable data_dir {o.data_dir!r} ({first})") from None
    if not builder.is_prepared():
        where = o.data_dir or "~/tensorflow_datasets"
        prepare = (f"Prepare it on a machine with network access with `python -c \"import tensorflow_datasets as "
                   f"tfds; tfds.builder('{name}', data_dir='{where}').download_and_prepare()\"` and copy the directory "
                   "here")
        if not o.download:
            raise DataSourceError(f"tfds:{name}: not prepared in {where}. {prepare} (or set data.download=true)")
        proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
        if not proxied and not _reachable(TFDS_HOST):  # no network: TFDS retried for minutes, then tracebacks
            raise DataSourceError(f"tfds:{name}: not prepared in {where}, and data.download=true cannot reach "
                                  f"{TFDS_HOST} (no network here?). {prepare}")
        try:
            builder.download_and_prepare()
        except Exception as e:  # requests', urllib3's and TFDS' own errors: one line, whichever
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataSourceError(f"tfds:{name}: the download failed ({type(e).__name__}: {first}). {prepare}") \
                from None
    info = builder.info
    features = info.features
    # Datasets stored ad hoc (store_as_tfds_dataset) declare no supervised keys; take image/label.
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
        mask = split_masks(n, base, o)
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
