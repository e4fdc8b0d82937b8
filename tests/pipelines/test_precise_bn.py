"""Precise batch norm (`train.precise_bn_batches`): after training, the batch norms' moving statistics are those of
the final weights (pipelines/precise_bn.py `recalibrate_batch_norm`)."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.precise_bn import recalibrate_batch_norm


@pytest.mark.parametrize("traced", [True, False])  # one traced function (TensorFlow's default), or eager
def test_each_trainable_batch_norm_becomes_the_mean_of_the_batches_statistics_and_frozen_ones_stay(traced):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inp)
    inner = keras.Sequential([keras.layers.BatchNormalization(momentum=0.99, name="nested")], name="block")
    x = inner(x)  # a batch norm inside a nested model (a keras_app backbone, an invariance wrapper)
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False  # a frozen backbone's statistics are the pretrained ones: kept
    model = keras.Model(inp, frozen(keras.layers.Activation("relu")(x)))
    batches = [np.random.default_rng(i).normal(i, 1 + i, (n, 6, 6, 2)).astype("float32")
               for i, n in enumerate((4, 4, 1))]
    ds = tf.data.Dataset.from_tensor_slices((np.concatenate(batches), np.zeros(9))).batch(4)  # an epoch's last of 1

    assert recalibrate_batch_norm(model, ds, 3, traced=traced) == 3
    conv = [keras.ops.convert_to_numpy(model.get_layer("conv")(b)) for b in batches]
    bn = inner.get_layer("nested")
    moving_mean, moving_variance = (keras.ops.convert_to_numpy(v) for v in (bn.moving_mean, bn.moving_variance))
    weights = [4, 4, 1]  # each batch counts for its images
    np.testing.assert_allclose(moving_mean, np.average([c.mean(axis=(0, 1, 2)) for c in conv], axis=0, weights=weights),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moving_variance, np.average([c.var(axis=(0, 1, 2)) for c in conv], axis=0,
                                                           weights=weights), rtol=1e-4)
    assert bn.momentum == 0.99  # restored for any later training
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(frozen.moving_mean), np.zeros(3))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(frozen.moving_variance), np.ones(3))
    assert recalibrate_batch_norm(model, ds, 0) == 0


def test_make_train_re_estimates_the_statistics_unless_told_not_to(tmp_path, capsys):
    from pipelines.train import run
    from tests.pipelines.test_train import tiny_config

    def moving_means(result):
        model = keras.saving.load_model(f"{result.run_dir}/model.keras", compile=False)
        norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
        return [keras.ops.convert_to_numpy(la.moving_mean) for la in norms]

    off = run(tiny_config(tmp_path, "train.precise_bn_batches=0", "export.enabled=false"))
    assert "re-estimated" not in capsys.readouterr().out
    on = run(tiny_config(tmp_path, "export.enabled=false"))  # the default: 50 batches
    said = re.search(r"re-estimated for the final weights on 50 training batches \(train\.precise_bn_batches; an "
                     r"epoch has only (\d+), so they were repeated\)", capsys.readouterr().out)  # a tiny split
    assert said and int(said.group(1)) < 50
    before, after = moving_means(off), moving_means(on)
    assert before and len(before) == len(after)
    assert not all(np.allclose(a, b) for a, b in zip(before, after))  # the same training, other statistics

    # The final model's validation figures are logged (the last epoch's used the old statistics).
    import mlflow

    from pipelines import experiment

    cfg = tiny_config(tmp_path)
    logged = [mlflow.MlflowClient(on.tracking_uri).get_run(r.run_id).data.metrics for r in (off, on)]
    assert "final_val_accuracy" not in logged[0]
    splits = experiment.load_data(cfg)
    model = experiment.compile_model(keras.saving.load_model(f"{on.run_dir}/model.keras", compile=False), cfg, 1)
    val = model.evaluate(experiment.make_datasets(cfg, splits)[1], verbose=0, return_dict=True)
    assert logged[1]["final_val_accuracy"] == pytest.approx(val["accuracy"])
    assert logged[1]["final_val_loss"] == pytest.approx(val["loss"], rel=1e-4)
