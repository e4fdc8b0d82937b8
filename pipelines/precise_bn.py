"""Precise batch norm (pycls; Radosavovic et al., "Designing Network Design Spaces", 2020), what `make train`
and every tuning trial do after training (`train.precise_bn_batches`)."""

from __future__ import annotations


def recalibrate_batch_norm(model, train_ds, batches: int, traced: bool = True) -> int:
    """The moving statistics of every trainable BatchNormalization in `model` (nested ones too) set to the mean
    of `batches` training batches' statistics under the final weights, each weighted by its number of images.
    Keras' moving averages still hold earlier weights' statistics after a short training (docs/manual.md: 3 of
    12 test images against 12 of 12 on a small folder). Returns the number of batches used.

    On TensorFlow the forward passes run as one traced function (`traced=False`: eagerly, as on JAX and PyTorch):
    50 batches of images.yaml's resnet took 4.7 s with the tracing against 8.9 s eager, the default config's 2.2 s
    against 3.8 s (bench/bench_precise_bn.py, 2 CPU cores; docs/results.md).
    Traced, a layer's momentum is fixed when traced, so each pass runs at momentum 0 (it leaves its own batch's
    statistics in the moving ones) and the images-weighted mean is summed here.
    """
    import keras

    norms = [la for la in model._flatten_layers(include_self=False)  # Keras has no public recursive walk
             if isinstance(la, keras.layers.BatchNormalization) and la.trainable]
    if not norms or batches <= 0:
        return 0
    stats = [v for la in norms for v in (la.moving_mean, la.moving_variance)]
    momenta, sums, n, seen = [la.momentum for la in norms], [0.0] * len(stats), 0, 0
    forward = lambda x: model(x, training=True)  # noqa: E731
    if traced and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        forward = tf.function(forward, reduce_retracing=True)  # traced again if an epoch's last batch is small
    try:
        for la in norms:
            la.momentum = 0.0
        for images, *_ in train_ds.repeat().take(batches).as_numpy_iterator():
            forward(images)
            n, seen = n + 1, seen + len(images)  # an epoch's last batch may be small: it counts for its images
            sums = [t + len(images) * keras.ops.convert_to_numpy(v).astype("float64") for t, v in zip(sums, stats)]
        for t, v in zip(sums, stats):
            v.assign((t / seen).astype(v.dtype))
    finally:
        for la, m in zip(norms, momenta):
            la.momentum = m
    return n
