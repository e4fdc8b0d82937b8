"""`synthetic`: the embedded MNIST-like digits (data/synthetic.py), generated, cached, held in memory; no network.

Sizes from `data.synthetic.train_size` and `test_size`, drawn with `data.seed`
and cached under `data.cache_dir`; validation is carved from train.
"""

from __future__ import annotations

from data.options import DataOptions
from data.sources.common import array_splits
from data.sources.registry import register_source


@register_source("synthetic", help="MNIST-like digits drawn from matplotlib's fonts; no network; in memory")
def open_synthetic(argument: str, o: DataOptions, stream):
    from data import synthetic

    (xtr, ytr), (xte, yte) = synthetic.load(o.synthetic.train_size, o.synthetic.test_size, o.seed, o.cache_dir)
    return array_splits({"train": (xtr, ytr), "test": (xte, yte)}, synthetic.CLASS_NAMES, o, stream)
