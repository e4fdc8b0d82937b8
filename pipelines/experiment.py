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
import os
import re
import warnings

from pipelines.config import Config


def describe_devices() -> str:
    """The computing backend's devices (TensorFlow's feed only tf.data on the others) and TF's CPU kernel set."""
    import keras

    if (backend := keras.backend.backend()) != "tensorflow":
        if backend == "jax":
            import jax

            gpus = [str(d) for d in jax.devices() if d.platform == "gpu"]
        else:
            import torch

            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(gpus)} GPU(s): {', '.join(gpus)} ({backend})" if gpus else f"0 GPU(s); CPU only ({backend})"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpus = tf.config.list_physical_devices("CPU")
    names = [d.name for d in gpus] or [d.name for d in cpus]
    if gpus:
        return f"{len(gpus)} GPU(s): {', '.join(names)}"
    return f"0 GPU(s); CPU only: {', '.join(names)}; oneDNN {onednn_state()}"


def onednn_state() -> str:
    """Whether TensorFlow's CPU kernels are oneDNN's, and the variable that decided it: "off (TF_ENABLE_ONEDNN_OPTS=
    unset)" (unset: oneDNN only on CPUs with AVX-512 VNNI or AMX). The two sets differ in speed and round-off:
    every run records its set (the MLflow tag `devices`), and `make doctor` prints it."""
    from tensorflow.python.util import _pywrap_util_port

    state = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    return f"{state} (TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})"


def distribution_strategy(default=None):
    """MirroredStrategy over all GPUs when there are several, else `default` (None: the no-op strategy)."""
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
    where it was found. Reads labels only (`Split.labels()`), no image.
    """
    import numpy as np

    from data.sources import DataSourceError

    where = f"data.source {splits.source}"
    for name in ("train", "test", "validation"):
        if getattr(splits, name).total_count == 0:
            raise DataSourceError(f"{where}: the {name} split has no images" + (
                " (an empty validation folder? without one, validation is carved from the training images: "
                "data.validation_fraction)" if name == "validation" else ""))
    k = splits.num_classes
    if k < 2:
        names = f" ({', '.join(map(str, splits.class_names))})" if getattr(splits, "class_names", None) else ""
        raise DataSourceError(f"{where}: {k} class{names}; a classifier needs at least 2 (a folder source "
                              "has one subfolder per class)")
    train_labels = splits.train.labels()
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=k)
    empty = int(np.sum(counts[:k] == 0))
    n_train = len(train_labels)
    if empty > k - empty or k > n_train:
        top = k - 1
        named = (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
        found = next((f"{n}[{int(np.argmax(s.labels() == top))}]" for n, s in named if np.any(s.labels() == top)),
                     "no split")
        raise DataSourceError(
            f"{where}: label {top} (at {found}) makes {k} classes, {empty} of which have no training image "
            f"({n_train} training images); labels must be the class indices 0..K-1"
        )


MIN_TEST_IMAGES_PER_CLASS = 5


def small_test_split(splits) -> str | None:
    """A warning when the test split is too small to mean much (fewer than MIN_TEST_IMAGES_PER_CLASS per
    class on average), else None: its accuracy moves in steps of 1 / count."""
    n, k = splits.test.total_count, splits.num_classes
    if n >= MIN_TEST_IMAGES_PER_CLASS * k:
        return None
    return (f"the test split has {n} images for {k} classes (fewer than {MIN_TEST_IMAGES_PER_CLASS} per class): "
            f"its accuracy moves in steps of {100 / max(n, 1):.0f} points and says little")


def data_options(cfg: Config, shard: tuple[int, int] = (1, 0)):
    """The `data.options.DataOptions` of the config's `data` section, for process `shard[1]` of `shard[0]`."""
    from data.options import DataOptions

    return DataOptions.from_object(cfg.data, num_processes=shard[0], process_id=shard[1])


def load_data(cfg: Config, shard: tuple[int, int] = (1, 0)):
    """The checked `data.streaming.StreamSplits` of the config's `data` section (see `check_splits`).

    Decodes no image: counts, class names, image shape and labels come from the
    file list or the stored metadata (a folder's files get a header pass, which
    finds unreadable ones: `BadImagesError`, exit code 2, unless
    `data.skip_bad_images`). `shard=(processes, process id)`: every split is
    this process's disjoint part (`Split.count`; `total_count` is the whole's).
    """
    from data.streaming import open_source

    splits = open_source(cfg.data.source, data_options(cfg, shard))
    check_splits(splits)
    return splits


def build_augmentation(cfg: Config):
    """The training-split augmentation of `cfg` (seeded by `train.seed`), or None when every operation is off."""
    from data.augment import build_augmentation as build

    return build(**cfg.augment.sections(), seed=cfg.train.seed)


def make_datasets(cfg: Config, splits, augment=None, shard: tuple[int, int] = (1, 0)):
    """(train, validation, test) batched datasets; shuffle and augmentation seeded by `train.seed`.

    One process: `data.pipeline.make_stream_datasets` over `splits`.

    `shard=(processes, process id)`: this process's part of a data-parallel
    step, built the same way for every source (streamed or in memory) from the
    splits opened for this shard (`load_data(cfg, shard)`; `splits` are opened
    again when they are not that shard, so each process decodes only its own
    images). The global batch stays `data.batch_size`; each process reads its
    disjoint part of each split (every `processes`-th image; together they are
    the split) in batches of `data.batch_size / processes`. Training takes
    `total // data.batch_size` whole batches per epoch from its shuffled part
    (drop_remainder), so every process runs the same number of steps;
    validation and test pad each part with zero-weight images up to the same
    number of whole batches instead, so their metrics (weighted, see
    `compile_model`) cover the whole split once. Elements are then
    `(image, label, weight)`.
    """
    from data.pipeline import make_stream_dataset, make_stream_datasets

    n, i = shard
    bs, seed = cfg.data.batch_size, cfg.train.seed
    if n == 1:
        return make_stream_datasets(splits, bs, seed=seed, augment=augment)
    if (splits.info.num_processes, splits.info.process_id) != (n, i):
        splits = load_data(cfg, shard)
    per = bs // n
    steps = splits.train.total_count // bs
    if steps == 0:
        raise ValueError(f"data.batch_size={bs} exceeds the {splits.train.total_count} training images")
    train = make_stream_dataset(splits.train, per, training=True, seed=seed, augment=augment, drop_remainder=True)
    # Repeated, then cut at `steps`: a shard that lost an image to `data.skip_bad_images` (a file that fails
    # only while decoding) still runs exactly `steps` steps, as every other process does (fewer would leave
    # the others waiting in a collective); it takes its first batches again to make up the difference.
    return train.repeat().take(steps), _padded(splits.validation, bs, n), _padded(splits.test, bs, n)


def _padded(split, batch_size: int, processes: int):
    """This process's part of `split` as `(float image, label, weight)` batches of `batch_size / processes`,
    padded with zero-weight zero images to `ceil(total / batch_size)` batches (the same in every process)."""
    import numpy as np
    import tensorflow as tf

    from data.pipeline import without_autotuning

    per = batch_size // processes
    batches = -(-split.total_count // batch_size)
    real = split.elements().map(lambda x, y: (x, y, tf.constant(1.0, tf.float32)))
    spec = real.element_spec[0]
    zero = (tf.zeros(spec.shape, spec.dtype), tf.constant(0, tf.int64), tf.constant(0.0, tf.float32))
    # Padded without end, then cut at `batches`: the same count in every process even where
    # `data.skip_bad_images` dropped an image that failed to decode (the listed count is then one too many).
    ds = real.concatenate(tf.data.Dataset.from_tensors(zero).repeat())
    ds = ds.batch(per).take(batches).map(lambda x, y, w: (tf.cast(x, tf.float32) / np.float32(255.0), y, w))
    return without_autotuning(ds.prefetch(2))  # a new iterator per pass: data/pipeline.py


def steps_per_epoch(cfg: Config, splits, processes: int = 1) -> int:
    """Training steps per epoch, from the split's counts (no image read)."""
    if processes > 1:  # make_datasets takes whole global batches only
        return max(1, splits.train.total_count // cfg.data.batch_size)
    return max(1, math.ceil(splits.train.count / cfg.data.batch_size))


def fit_batches(train_ds, steps: int) -> dict:
    """`model.fit`'s training arguments: the training batches repeated without end, `steps` of them an epoch,
    so that one tf.data iterator serves the whole fit (each repetition is a new pass: a new shuffle and new
    augmentation draws, as a new iterator per epoch gave).

    Why not a new iterator per epoch (Keras' way for a finite dataset): on TensorFlow 2.21, with tf.data's
    autotuning on (the default), deleting an epoch's iterator intermittently waits for the autotuning thread
    to end its current sleep, which doubles from 10 ms up to 60 s. A gcnn D8 epoch of 44 s took 82 s (the
    threads idle meanwhile); in bench/bench_epoch_iterators.py epochs of 6.4 s took 10.2 s, 4 and 6 of 12 in
    two runs, and none with one iterator (docs/results.md, "tf.data's stall between epochs").
    """
    return {"x": train_ds.repeat(), "steps_per_epoch": steps}


@contextlib.contextmanager
def reading_splits_to_their_end():
    """Keras' "Your input ran out of data ... use the `.repeat()` function" warning left out: Keras gives it
    whenever a dataset of unknown length ends (a split read with `data.skip_bad_images`, whose files may drop
    out), which validation and evaluation do by design; the training batches repeat without end
    (`fit_batches`), so they cannot run out."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        yield


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

    # `train.xla` is TensorFlow's choice (graph mode without or with XLA). JAX has no graph mode of its own:
    # without jit Keras runs its train step op by op (a step of the default config took 1.27 s against
    # 0.59-0.69 s jitted on a 2-core CPU), so JAX always compiles ("auto": jit unless a layer says it
    # cannot be traced); PyTorch stays eager (`train.xla` is refused there: pipelines/cli.py).
    jit_compile = cfg.train.xla or ("auto" if keras.backend.backend() == "jax" else False)
    # Accuracy as a weighted metric: identical without sample weights, and exact over a split whose
    # shards were padded with zero-weight images (make_datasets across processes).
    model.compile(
        optimizer=make_optimizer(cfg, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=["accuracy"],
        jit_compile=jit_compile,
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
    """Import layers/ (its `__init__` imports every public layer) and the model builders: registers the custom layers."""
    import layers  # noqa: F401
    import models  # noqa: F401
    import data.augment  # noqa: F401  (its layers are serializable too)


def load_keras_model(path: str):
    import keras

    import_custom_layers()
    return keras.saving.load_model(path, compile=False)


def weights_digest(model) -> str:
    """SHA-256 of every weight's bytes, in order: equal digests mean bitwise-equal weights."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def check_augmentation(cfg: Config, image_shape) -> None:
    """The augmentation built for the images' shape now, its refusal as a `ConfigError` before anything runs:
    its settings that depend on the size (quarter turns need square images, a shift in pixels must be smaller
    than the image) are otherwise checked only when fit or the preview first calls it."""
    from pipelines.config import ConfigError

    augment = build_augmentation(cfg)
    if augment is not None:
        try:
            augment.build((None, *image_shape))
        except ValueError as e:
            raise ConfigError(f"augment.{e} (data.image_size sets the size)") from None


def check_model_builds(cfg: Config, splits) -> str:
    """Build the model once for the data's image shape and classes, before any run is written; return
    the digest of its initial weights (drawn from `train.seed`, as `make train` will draw them).

    A bad builder value (`model.params.downsample=bogus`), images too small
    for the model (2x2 through three poolings), quarter-turn augmentation of
    images that are not square, or `export.plain` of a model with a layer that
    has no stock form is a `ConfigError` naming the
    model and the shape, not a traceback after the run has started. Built on
    this process's devices alone (`distribute.local`): a build that fails in
    one process must not leave the others inside a collective.
    """
    import keras

    from pipelines import distribute
    from pipelines.config import ConfigError

    with distribute.local():  # its random state's variable on this process alone, as the model's below
        check_augmentation(cfg, splits.image_shape)
    try:
        keras.utils.set_random_seed(cfg.train.seed)
        with precision(cfg), distribute.local():
            model = build_model(cfg, splits.image_shape, splits.num_classes)
            digest, no_plain = weights_digest(model), _no_plain_form(cfg, model)
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
    if no_plain:
        raise ConfigError(f"export.plain: {no_plain}; set export.plain=false to publish it as it is")
    return digest


def _no_plain_form(cfg: Config, model) -> str | None:
    """Why `export.plain` cannot rewrite `model` in stock layers (a layer with no stock form), or None: known
    from the built model, where the export found it after the whole training."""
    if not (cfg.export.enabled and cfg.export.plain):
        return None
    from models.plain import to_plain

    try:
        to_plain(model)
    except ValueError as e:
        return str(e)
    return None
