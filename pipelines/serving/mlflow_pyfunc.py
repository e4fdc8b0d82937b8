"""The MLflow model of a training run: the exported SavedModel's `serving_default`, as an MLflow pyfunc.

MLflow logs this file as the model's code ("models from code"): it is copied
into the model and run when the model loads, so the model needs TensorFlow,
NumPy and MLflow only, not this project. It answers what the export answers,
for what the export takes:

- input: uint8 images `[N, H, W, C]` (the tensor `image`; a JSON request to
  `mlflow models serve` sends them as nested lists: `{"inputs": [[[[0], ...]]]}`);
- outputs: `probabilities` `[N, K]`, `class_id` `[N]` and `class_name` `[N]`
  (text).

Nothing of the project imports this module; `pipelines/serving/mlflow_serve.py`
logs it.
"""

from __future__ import annotations

import mlflow
import numpy as np


class ExportedModel(mlflow.pyfunc.PythonModel):
    """`predict(uint8 images)` -> the `serving_default` outputs of the SavedModel artifact `saved_model`."""

    def load_context(self, context):
        import tensorflow as tf

        self._tf = tf
        self._fn = tf.saved_model.load(context.artifacts["saved_model"]).signatures["serving_default"]

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
        out = self._fn(image=self._tf.constant(x))
        answer = {}
        for name, value in out.items():
            value = value.numpy()
            if value.dtype == object:  # tf.string: bytes -> text
                value = np.array([v.decode("utf-8") for v in value.reshape(-1)]).reshape(value.shape)
            answer[name] = value
        return answer


mlflow.models.set_model(ExportedModel())
