"""What every job shares: a config resolved into data, model, optimizer and devices.

The jobs (`train`, `tune`, `evaluate`, `preview`, ...) are thin drivers over
this module; none imports another job. One config decides everything here:

- `data.seed` decides the data: the synthetic digits, the validation split.
- `train.seed` decides the training randomness: weight initialisation, the
  shuffle order and the augmentation draws (in training *and* in the preview,
  whose full-chain row shows what training's first batch draws).
"""

from __future__ import annotations

import contextlib
import math
import re

from pipelines.config import Config


def describe_devices() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpus = tf.config.list_physical_devices("CPU")
    names = [d.name for d in gpus] or [d.name for d in cpus]
    return f"{len(gpus)} GPU(s)" + (f": {', '.join(names)}" if gpus else f"; CPU only: {', '.join(names)}")


def distribution_strategy(default=None):
    """MirroredStrategy over all GPUs when there are several, else `default`
    (`tf.distribute.get_strategy()` when None: the no-op strategy)."""
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy() if default is None else default


@contextlib.contextmanager
def precision(cfg: Config):
    """Set Keras' global dtype policy for `cfg` (`train.mixed_precision`); restore the previous one after."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if cfg.train.mixed_precision else "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def check_splits(splits) -> None:
    """Refuse data whose labels make an implausible class count, or an empty split.

    One stray label (`1000` among digits) would make 1001 classes: a model with
    a 1001-way head, and figures sized by the class count. Refused when the
    classes without a training image outnumber those with one, or when there
    are more classes than training images; the message names the label and
    where it was found.
    """
    import numpy as np

    from data.sources import DataSourceError

    where = f"data.source {splits.source}"
    for name in ("train", "test"):
        if len(getattr(splits, name)[1]) == 0:
            raise DataSourceError(f"{where}: the {name} split has no images")
    k = splits.num_classes
    counts = np.bincount(np.asarray(splits.train[1], np.int64), minlength=k)
    empty = int(np.sum(counts[:k] == 0))
    n_train = len(splits.train[1])
    if empty > k - empty or k > n_train:
        top = k - 1
        named = (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
        found = next((f"{n}[{int(np.argmax(y == top))}]" for n, (_, y) in named if np.any(y == top)), "no split")
        raise DataSourceError(
            f"{where}: label {top} (at {found}) makes {k} classes, {empty} of which have no training image "
            f"({n_train} training images); labels must be the class indices 0..K-1"
        )


def load_data(cfg: Config):
    """The checked `data.sources.Splits` of the config's `data` section (see `check_splits`)."""
    splits = _load_splits(cfg)
    check_splits(splits)
    return splits


def _load_splits(cfg: Config):
    from data.sources import load_splits

    d = cfg.data
    return load_splits(
        d.source,
        seed=d.seed,
        validation_fraction=d.validation_fraction,
        data_dir=d.data_dir,
        download=d.download,
        image_size=d.image_size,
        cache_dir=d.cache_dir,
        synthetic_train_size=d.synthetic.train_size,
        synthetic_test_size=d.synthetic.test_size,
    )


def build_augmentation(cfg: Config):
    """The training-split augmentation of `cfg` (seeded by `train.seed`), or None when every operation is off."""
    from data.augment import build_augmentation as build

    return build(**cfg.augment.sections(), seed=cfg.train.seed)


def make_datasets(cfg: Config, splits, augment=None, shard: tuple[int, int] = (1, 0)):
    """(train, validation, test) batched datasets; shuffle and augmentation seeded by `train.seed`.

    `shard=(processes, process id)`: this process's part of a data-parallel
    step. The global batch stays `data.batch_size`; each process reads every
    `processes`-th image (disjoint shards that together are the split) in
    batches of `data.batch_size / processes`. Training drops the last partial
    global batch, so every process runs the same number of steps; validation
    pads its shards with zero-weight images instead, so its metrics (weighted,
    see `compile_model`) cover the whole split once.
    """
    from data.pipeline import make_dataset
    from data.pipeline import make_datasets as make

    n, i = shard
    if n == 1:
        return make(splits, cfg.data.batch_size, seed=cfg.train.seed, augment=augment)
    import numpy as np
    import tensorflow as tf

    per = cfg.data.batch_size // n
    x, y = splits.train
    keep = len(x) // cfg.data.batch_size * cfg.data.batch_size
    if keep == 0:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} exceeds the {len(x)} training images")
    train = make_dataset(x[i:keep:n], y[i:keep:n], per, training=True, seed=cfg.train.seed, augment=augment)

    def padded(split):
        xs, ys = split
        total = -(-len(xs) // cfg.data.batch_size) * cfg.data.batch_size
        pad = total - len(xs)
        xs = np.concatenate([xs, np.zeros((pad,) + xs.shape[1:], xs.dtype)])
        ys = np.concatenate([ys, np.zeros((pad,), ys.dtype)])
        w = np.concatenate([np.ones(total - pad, np.float32), np.zeros(pad, np.float32)])
        ds = tf.data.Dataset.from_tensor_slices((xs[i::n], ys[i::n], w[i::n]))
        return ds.map(lambda a, b, c: (tf.cast(a, tf.float32) / 255.0, b, c)).batch(per).prefetch(2)

    return train, padded(splits.validation), padded(splits.test)


def steps_per_epoch(cfg: Config, splits, processes: int = 1) -> int:
    n = len(splits.train[0])
    if processes > 1:  # make_datasets drops the last partial global batch
        return max(1, n // cfg.data.batch_size)
    return max(1, math.ceil(n / cfg.data.batch_size))


def make_optimizer(cfg: Config, steps: int):
    import keras

    t = cfg.train
    lr = t.learning_rate
    if t.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=max(1, t.epochs * steps))
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)


def build_model(cfg: Config, image_shape, num_classes: int):
    """The registered model `model.name` with `model.params`, for images of `image_shape`."""
    import models

    return models.build_model(cfg.model.name, image_shape, num_classes, **cfg.model.params)


def compile_model(model, cfg: Config, steps: int):
    import keras

    # Accuracy as a weighted metric: identical without sample weights, and exact over a split whose
    # shards were padded with zero-weight images (make_datasets across processes).
    model.compile(
        optimizer=make_optimizer(cfg, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=["accuracy"],
        jit_compile=cfg.train.xla,
    )
    return model


def fit_verbosity(cfg: Config):
    """Keras' `verbose` for `fit`: with `train.verbose: auto`, the progress bar on a terminal
    and one line per epoch otherwise (a bar writes ~220 bytes of control codes per step
    into a log file or CI output)."""
    import sys

    if cfg.train.verbose != "auto":
        return int(cfg.train.verbose)
    return 1 if sys.stdout.isatty() else 2


def import_custom_layers() -> None:
    """Import every module of layers/ (and the model builders), which registers the custom layers."""
    import importlib
    import pkgutil

    import layers
    import models  # noqa: F401

    for mod in pkgutil.iter_modules(layers.__path__):
        importlib.import_module(f"layers.{mod.name}")
    import data.augment  # noqa: F401  (its layers are serializable too)


def load_keras_model(path: str):
    import keras

    import_custom_layers()
    return keras.saving.load_model(path, compile=False)


def check_model_builds(cfg: Config, splits) -> None:
    """Build the model once for the data's image shape and classes, before any run is written.

    A bad builder value (`model.params.downsample=bogus`) or images too small
    for the model (2x2 through three poolings) is a `ConfigError` naming the
    model and the shape, not a traceback after the run has started.
    """
    import keras

    from pipelines.config import ConfigError

    try:
        with precision(cfg):
            build_model(cfg, splits.image_shape, splits.num_classes)
    except (ValueError, TypeError) as e:
        text = re.sub(r"\x1b\[[0-9;]*m|\[[0-9;]*m", "", str(e))  # Keras colours its messages
        first = " ".join(text.split())[:400] or type(e).__name__
        raise ConfigError(
            f"model {cfg.model.name!r} with model.params={cfg.model.params} does not build for images of shape "
            f"{tuple(splits.image_shape)} and {splits.num_classes} classes: {first}"
        ) from None
    finally:
        placed = keras.distribution.distribution()  # clear_session forgets the distribution too
        keras.backend.clear_session()
        if placed is not None:
            keras.distribution.set_distribution(placed)
