"""The bases of the layers (not public API): config from `__init__`, pooling over one axis, wrapped batch norm.

`ConfigLayer` writes `get_config` once for every layer: the house plan
(docs/design.md) has each `__init__` argument stored under its own name, so
the config is those attributes, read back by name (initializers and
activations serialized, tuples as lists). `AxisPooling` is max or mean over
one axis of a 5-D map (the group and scale poolings); `WrappedBatchNorm`
holds the arguments and the float32 `keras.layers.BatchNormalization` of the
group and harmonic batch norms.
"""

from __future__ import annotations

import inspect

import keras
from keras import ops

from layers.common import validation as check


def _serialize(value):
    if isinstance(value, keras.initializers.Initializer):
        return keras.initializers.serialize(value)
    if isinstance(value, tuple):
        return list(value)
    if callable(value) and not isinstance(value, type):  # an activation function
        return keras.activations.serialize(value)
    return value


class ConfigLayer(keras.layers.Layer):
    """A `keras.layers.Layer` whose `get_config` is every `__init__` argument, read from the attribute of its name.

    The arguments are those of each `__init__` along the class's MRO down to
    the first class that sets `_config_root = True` in its own body (this
    class, and bases whose `__init__` takes arguments that not every subclass
    has), so that a subclass whose `__init__` passes `**kwargs` on to a public
    parent (ScaleHarmonicConv2D to HarmonicConv2D) writes the parent's
    arguments too. `input_ndim` sets the input spec's rank. `renamed_args`
    maps an argument's old name to its new one: `from_config` renames it, so
    models saved before the rename still load.
    """

    _config_root = True
    renamed_args: dict = {}
    input_ndim = None  # the input's rank, checked by Keras' InputSpec (None: any)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.input_ndim is not None:
            self.input_spec = keras.layers.InputSpec(ndim=self.input_ndim)

    @classmethod
    def init_arguments(cls) -> list[str]:
        """The names `get_config` writes: the `__init__` arguments down to the config root (see the class)."""
        names = []
        for klass in cls.__mro__:
            if klass.__dict__.get("_config_root") or not issubclass(klass, ConfigLayer):
                break
            if "__init__" in klass.__dict__:
                for p in inspect.signature(klass.__dict__["__init__"]).parameters.values():
                    if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names:
                        names.append(p.name)
        return names

    def get_config(self):
        config = super().get_config()
        config.update({name: _serialize(getattr(self, name)) for name in self.init_arguments()})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for old, new in cls.renamed_args.items():
            if old in config:
                config[new] = config.pop(old)
        return super().from_config(config)


class AxisPooling(ConfigLayer):
    """Max or mean over axis 3 of [batch, H, W, A, C] maps (the group axis, the scale axis): -> [batch, H, W, C].

    Args:
        mode: 'max' or 'mean'.
    """

    MODES = ("max", "mean")
    input_ndim = 5

    def __init__(self, mode="max", **kwargs):
        super().__init__(**kwargs)
        self.mode = check.choice(mode, "mode", self.MODES)

    def call(self, inputs):
        return ops.max(inputs, axis=3) if self.mode == "max" else ops.mean(inputs, axis=3)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (input_shape[4],)


class WrappedBatchNorm(ConfigLayer):
    """The arguments and the inner float32 `keras.layers.BatchNormalization` (attribute `bn`) of a batch norm.

    Subclasses build `self.bn` on their statistics' shape and call it in
    `call`; `self.activation_fn` is the activation applied after it.
    `bn_name` names the inner layer (part of the saved weights' paths).
    """

    bn_name = "bn"

    def __init__(self, momentum=0.99, epsilon=1e-3, center=True, scale=True, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.momentum = check.number(momentum, "momentum", low=0, high=1, low_open=False)
        self.epsilon = check.number(epsilon, "epsilon", low=0, what="a number > 0")
        self.center = check.boolean(center, "center")
        self.scale = check.boolean(scale, "scale")
        self.activation_fn = check.activation(activation, allow_none=True)
        self.activation = activation
        self.bn = keras.layers.BatchNormalization(
            axis=-1, momentum=self.momentum, epsilon=self.epsilon, center=center, scale=scale,
            dtype="float32", name=self.bn_name,
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)
