"""The bases of the project's convolutions (not public API): shared arguments, bias, and the dense kernel.

`Conv2DBase` stores and checks what every convolution here takes (`filters`,
`kernel_size`, `strides`, `padding`, `use_bias`, the initializers), adds the
bias and checks the input's channel axis; `SpatialSeparableConv2D` uses it as
it is. `BasisConv2D` is the base of the convolutions whose kernel is not a
weight but a linear image of learned coefficients through a fixed basis (the
group, scale and harmonic convolutions): it builds that DENSE KERNEL under
one name, `dense_kernel()`, runs the one convolution with it, splits the
output channels into the layer's axes, adds the bias, gives the output shape,
and caches the kernel at inference where that is provably safe (see
`BasisConv2D`).
"""

from __future__ import annotations

import keras
from keras import ops

from layers.common import validation as check
from layers.common._ops import conv2d
from layers.common.base import ConfigLayer


class Conv2DBase(ConfigLayer):
    """Arguments, bias and input checks of a 2-D convolution, channels last.

    Class attributes say what a subclass accepts: `paddings` (default 'same'
    or 'valid'), `min_kernel_size` and `odd_kernel_size` (default any odd
    size: the filter is centred on a pixel), and `input_ndim` (ConfigLayer).
    """

    _config_root = True
    paddings = ("same", "valid")
    min_kernel_size = 1
    odd_kernel_size = True

    def __init__(self, filters, kernel_size, *, strides=1, padding="same", use_bias=True,
                 kernel_initializer="he_normal", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.filters = check.integer(filters, "filters", low=1)
        self.kernel_size = check.integer(kernel_size, "kernel_size", low=self.min_kernel_size,
                                         odd=self.odd_kernel_size)
        self.strides = check.integer(strides, "strides", low=1)
        self.padding = check.choice(padding, "padding", self.paddings)
        self.use_bias = check.boolean(use_bias, "use_bias")
        self.kernel_initializer = check.initializer(kernel_initializer, "kernel_initializer")
        self.bias_initializer = check.initializer(bias_initializer, "bias_initializer")

    @staticmethod
    def _channels(input_shape) -> int:
        """The input's (static) channel count, axis -1."""
        if input_shape[-1] is None:
            raise ValueError(f"the channel axis of the input must be known, got shape {tuple(input_shape)}")
        return int(input_shape[-1])

    def _add_bias(self):
        """In `build`: the bias [filters] when `use_bias`."""
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
                     if self.use_bias else None)

    def _bias_add(self, y):
        return y + ops.cast(self.bias, y.dtype) if self.use_bias else y


class _KernelCache:
    """The last dense kernel made at inference, with (a copy of) the coefficients and the dtype it was made from.

    One attribute, `entry` = (coefficients, dtype, kernel), replaced whole, so that a call on another thread
    never pairs one kernel with another kernel's coefficients.
    """

    __slots__ = ("entry",)

    def __init__(self):
        self.entry = None

    @property
    def kernel(self):
        return None if self.entry is None else self.entry[2]

    def clear(self):
        self.entry = None


def _eager_without_gradients(values) -> bool:
    """Whether this call runs eagerly and nothing can differentiate through `values` (the input, the coefficients).

    TensorFlow: executing eagerly with no GradientTape or ForwardAccumulator
    active (`layers/common/_tf_fast.py`). JAX: no value is a tracer (jit,
    grad and Keras' stateless calls all trace). PyTorch: not compiling, and
    autograd off or no coefficient requiring a gradient (the kept kernel is
    a constant: a gradient still reaches the input).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from layers.common import _tf_fast  # lazy: TensorFlow only

        return _tf_fast.eager_without_tape()
    if backend == "jax":
        import jax

        return not any(isinstance(v, jax.core.Tracer) for v in values)
    if backend == "torch":
        import torch

        if torch.compiler.is_compiling():
            return False
        return not torch.is_grad_enabled() or not any(v.requires_grad for v in values[1:])
    return False


class BasisConv2D(Conv2DBase):
    """A convolution by a dense kernel built from learned coefficients and a fixed basis, one `ops.conv`.

    A subclass makes its weights in `build` (`coefficient_shape` and the
    default `build`, or its own), says which weights the kernel is made of
    (`kernel_weights`, default `[self.kernel]`), writes `dense_kernel()` and
    gives `output_axes`, the axes the output channels split into after
    [batch, H', W'] (the group's elements and the filters, ...). The default
    `call` folds the input's trailing axes into channels, convolves with the
    kernel at `strides` and `padding`, splits the channels into
    `output_axes` and adds the bias.

    `dense_kernel()` always builds the kernel from the current weights
    (differentiable; the models' analyses read it). At inference a call
    reuses the kernel it made last instead, when all of these hold:
    `training` is falsy, the call runs eagerly with nothing recording
    gradients (`_eager_without_gradients`: never inside `tf.function`,
    `jax.jit`, `jax.grad`, a `GradientTape` or `torch.compile`, where a
    kept kernel would be a stale constant or cut the gradient), and the
    coefficients and the compute dtype are those it was made from. That last
    test compares the coefficients' values with a copy taken then: it costs
    one elementwise pass over the coefficients (J * C_in * filters values,
    against |G| * k * k times that for building a group kernel) and one
    device sync; it holds whatever changed the weights (`fit`,
    `set_weights`, loading, `assign`). Compiled inference (Keras' `predict`
    on TensorFlow and JAX, which runs under `tf.function` or `jax.jit`, and
    exported SavedModels) builds the kernel on every call, inside the
    compiled graph: there the weights are inputs of the graph, and a kernel
    folded in at trace time would go stale when they change. PyTorch's
    `predict` runs eagerly under `torch.no_grad()` and keeps it. What it
    saves: bench/bench_kernel_cache.py (TensorFlow, 2 shared CPU cores,
    28 x 28 maps, 32 -> 32 channels): a kept kernel made an eager call 0.74x
    (GroupConv2D, C8, 5 x 5), 0.80x (HarmonicConv2D) and 0.92x (ScaleConv2D)
    as long at batch 1, 0.92-0.99x at batch 8.
    """

    _config_root = True

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self._kernel_cache = _KernelCache()

    # -- what a subclass gives
    @property
    def output_axes(self) -> tuple:
        """The axes the output channels split into, after [batch, H', W']."""
        raise NotImplementedError

    def coefficient_shape(self, channels: int) -> tuple:
        """The shape of the coefficients `kernel` for `channels` input channels (the default `build`)."""
        raise NotImplementedError

    def check_input_shape(self, input_shape):
        """Raise ValueError for an input this layer cannot take (the default `build`)."""

    def dense_kernel(self):
        """The convolution kernel [k, k, C_in', C_out'] made from the current weights, in the compute dtype."""
        raise NotImplementedError

    def kernel_weights(self) -> list:
        """The weights `dense_kernel` is made of."""
        return [self.kernel]

    # -- the shared parts
    def build(self, input_shape):
        self.check_input_shape(tuple(input_shape))
        self._c_in = self._channels(input_shape)
        self.kernel = self.add_weight(name="kernel", shape=self.coefficient_shape(self._c_in),
                                      initializer=self.kernel_initializer)
        self._add_bias()

    def call_kernel(self, inputs, training=None):
        """The kernel a call on `inputs` uses: `dense_kernel()`, or at eager inference the one kept from the last."""
        values = [ops.convert_to_tensor(w) for w in self.kernel_weights()]
        if training or not _eager_without_gradients([inputs, *values]):
            return self.dense_kernel()
        entry = self._kernel_cache.entry
        if (entry is not None and entry[1] == self.compute_dtype
                and all(bool(ops.all(ops.equal(a, b))) for a, b in zip(values, entry[0]))):
            return entry[2]
        kernel = self.dense_kernel()
        # a copy of the coefficients: torch updates weights in place
        self._kernel_cache.entry = ([ops.copy(v) for v in values], self.compute_dtype, kernel)
        return kernel

    def fold_input(self, x):
        """[batch, H, W, ...] -> [batch, H, W, channels]: the trailing axes (static) folded into channels."""
        if len(x.shape) == 4:
            return x
        channels = 1
        for d in x.shape[3:]:
            channels *= int(d)
        s = ops.shape(x)
        return ops.reshape(x, (s[0], s[1], s[2], channels))

    def unfold_output(self, y):
        """[batch, H', W', prod(output_axes)] -> [batch, H', W', *output_axes]."""
        s = ops.shape(y)
        return ops.reshape(y, (s[0], s[1], s[2], *self.output_axes))

    def call(self, inputs, training=None):
        x = self.fold_input(ops.cast(inputs, self.compute_dtype))
        y = conv2d(x, self.call_kernel(x, training), self.strides, self.padding)  # a strided 1x1: see conv2d
        return self._bias_add(self.unfold_output(y))

    def spatial_size(self, n):
        """An output's height or width for an input's `n` (None: unknown)."""
        if n is None:
            return None
        if self.padding == "same":
            return -(-n // self.strides)
        return (n - self.kernel_size) // self.strides + 1

    def compute_output_shape(self, input_shape):
        self.check_input_shape(tuple(input_shape))
        return (input_shape[0], self.spatial_size(input_shape[1]), self.spatial_size(input_shape[2]),
                *self.output_axes)
