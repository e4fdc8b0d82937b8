"""The MLflow model of a training run: the run's Keras model as an MLflow pyfunc that answers like the export.

MLflow logs this file as the model's code ("models from code") with the
trained Keras model (`model.keras`, the run's one copy of it) and its class
names as artifacts, and this project's `layers/` and `models/` as code paths,
so that the model loads wherever MLflow loads it. It answers what the export
(`make serve`) answers, for what the export takes:

- input: uint8 images `[N, H, W, C]` (the tensor `image`; a JSON request to
  `mlflow models serve` sends them as nested lists: `{"inputs": [[[[0], ...]]]}`);
- outputs: `probabilities` `[N, K]` (softmax of the logits of the images
  scaled to [0, 1]), `class_id` `[N]` and `class_name` `[N]` (text).

Nothing of the project imports this module; `pipelines/serving/mlflow_serve.py`
logs it. `answer` is the computation, shared with the logging (signature, example).
"""

from __future__ import annotations

import mlflow
import numpy as np


def answer(model, class_names, images: np.ndarray) -> dict[str, np.ndarray]:
    """The export's outputs for uint8 `images` from `model` (float [0, 1] images -> logits)."""
    logits = np.asarray(model.predict(images.astype("float32") / 255.0, batch_size=256, verbose=0), np.float64)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)
    ids = probs.argmax(axis=-1).astype(np.int64)
    return {"probabilities": probs, "class_id": ids, "class_name": np.asarray(class_names, dtype=str)[ids]}


class KerasImageModel(mlflow.pyfunc.PythonModel):
    """`predict(uint8 images)` -> probabilities, class_id, class_name of the artifact `keras_model`."""

    def load_context(self, context):
        import json

        import keras

        import layers  # noqa: F401 - the project's code, from the model's code paths; registers every layer
        import models  # noqa: F401 - registers the wrappers' layers

        self._model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        with open(context.artifacts["class_names"]) as fh:
            self._names = json.load(fh)

    def predict(self, context, model_input: np.ndarray, params=None):  # validated by the logged signature
        x = np.asarray(model_input)
        if x.dtype != np.uint8:  # MLflow's schema enforcement casts JSON numbers; a cast must not change them
            ok = np.issubdtype(x.dtype, np.number) and x.size and np.all((x >= 0) & (x <= 255) & (x == np.round(x)))
            if not ok:
                from mlflow.exceptions import MlflowException
                from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

                raise MlflowException(f"image: expected uint8 pixel values 0-255 [N, H, W, C], got {x.dtype} values "
                                      "outside them or not whole", error_code=INVALID_PARAMETER_VALUE)
            x = x.astype(np.uint8)
        return answer(self._model, self._names, x)


mlflow.models.set_model(KerasImageModel())
