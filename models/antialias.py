"""Anti-alias any functional Keras model: Zhang's rewrites of its strided layers, weights carried over.

`antialias(model)` returns a new functional model computing what `model`
computes, except that every downsampling step is anti-aliased after R. Zhang,
"Making Convolutional Networks Shift-Invariant Again" (ICML 2019), or replaced
by adaptive polyphase sampling after A. Chaman and I. Dokmanic, "Truly
Shift-Invariant Convolutional Neural Networks" (CVPR 2021):

- `MaxPooling2D` with stride s -> the same max at stride 1, then the
  downsampling step (for a 2x2/2 `valid` pool: `MaxBlurPool2D`, Zhang's MaxBlurPool);
- strided `Conv2D`, `DepthwiseConv2D`, `SeparableConv2D` -> the same layer at
  stride 1, then its following normalisation and activation (a chain of
  `BatchNormalization`, `Activation`, `ReLU`, `LeakyReLU`, `ELU` that is the
  conv output's only consumer), then the downsampling step (Zhang's ConvBlurPool);
- strided `AveragePooling2D` -> `BlurPool2D` (a 2x2/2 `valid` pool on even
  sizes becomes one `BlurPool2D(blur_size + 1)`: box (x) binomial is the
  binomial filter one longer), otherwise the average at stride 1 then the step;
- a layer with its own anti-aliasing option (`blur_size` or `blur` in its
  config, like `HarmonicAveragePooling2D`) -> the same layer with that option
  set to `blur_size` (method `blur` only);
- nested models (a backbone inside a classifier, `Sequential` or functional)
  are rewritten recursively.

The downsampling step is `BlurPool2D(blur_size, stride)` for `method="blur"`
(reflect padding, or zero padding where a map is too small to reflect) and
`AdaptivePolyphaseSampling2D(blur_size)` for `method="aps"` (stride 2 only;
an odd-sized map is zero-padded by one row/column at the end first).

Exactness: with `method="blur", blur_size=1` the new model computes exactly
what the old one did. Keras' `same` padding of a strided layer is
TensorFlow's: it pads (total // 2) before, which for stride 2 on an even size
is one less than the stride-1 layer pads, so the strided output i sits at
stride-1 position 2i + 1, not 2i. The rewrite crops that offset
(`Cropping2D`) before the downsampling step, so the blur is centred where the
original layer sampled and `blur_size=1` picks exactly its samples. This
needs static spatial sizes for `same`-padded strided layers. `aps` chooses its
own phase, so it is never equal to the original.

The parameter count never changes: the added layers have no weights, and
every kept or rewritten layer is a fresh copy (from its config) holding a copy
of the original's weights, so training the new model leaves the original alone.

Shift invariance: each `aps` step is circular-shift equivariant, so a chain
of circularly padded convolutions, pointwise layers and `aps` steps ending in
global average pooling is exactly circular-shift invariant. Residual branches
that downsample separately (ResNet's strided shortcut) each choose their own
phase, which breaks exactness; `models.resnet` with `antialias: aps` shares
one step between both branches instead.

What cannot be rewritten -- a subclassed model (no graph to rewrite), a
strided layer of another kind (a custom layer, Keras' `Conv1D`), non-square
strides, channels-first data -- raises one `ValueError` naming it; with
`strict=False` it is kept as it is, with a warning (a nested subclassed model
is copied from its config when it can be, else shared with the original; the
model given must itself be functional or Sequential).
"""

from __future__ import annotations

import math
import warnings

import keras
from keras import layers

from layers.shift.blurpool import BlurPool2D
from layers.shift.max_blurpool import MaxBlurPool2D
from layers.shift.polyphase import AdaptivePolyphaseSampling2D

METHODS = ("blur", "aps")

# Layers that act per position and per channel: subsampling commutes with them, so the
# downsampling step of a strided conv moves after them (Zhang's conv -> norm -> act -> blur).
_PASS_THROUGH = (layers.BatchNormalization, layers.Activation, layers.ReLU, layers.LeakyReLU, layers.ELU)
_CONVS = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
_POOLS = (layers.MaxPooling2D, layers.AveragePooling2D)
# Strided but not downsampling, or already anti-aliased: kept as they are.
_NOT_ALIASING = (
    layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose,
    BlurPool2D, MaxBlurPool2D, AdaptivePolyphaseSampling2D,
)


def _pair(value):
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)


def _strides(layer) -> tuple | None:
    """The layer's strides as a tuple, when its config has strides (or a pool size standing in for them)."""
    try:
        config = layer.get_config()
    except Exception:  # noqa: BLE001 -- a layer without a config: judged by its attributes
        config = {}
    strides = config.get("strides", getattr(layer, "strides", None))
    if strides is None and ("pool_size" in config or hasattr(layer, "pool_size")):
        strides = config.get("pool_size", getattr(layer, "pool_size", None))
    if strides is None:
        return None
    try:
        return tuple(int(s) for s in (strides if isinstance(strides, (list, tuple)) else (strides,)))
    except (TypeError, ValueError):
        return None


def _is_strided(layer) -> bool:
    s = _strides(layer)
    return bool(s) and max(s) > 1


def same_offset(n: int, kernel: int, stride: int) -> int:
    """Where a `same`-padded stride-`stride` layer samples its stride-1 twin: output i = stride-1 output
    i * stride + offset (TensorFlow pads (total // 2) before; the stride-1 layer (kernel - 1) // 2)."""
    m = -(-n // stride)
    total = max((m - 1) * stride + kernel - n, 0)
    return (kernel - 1) // 2 - total // 2


def _blur_padding(sizes, blur_size: int, preferred: str) -> str:
    """`preferred` unless it is `reflect` and a static size is too small to reflect the blur's padding."""
    after = blur_size - 1 - (blur_size - 1) // 2
    if preferred == "reflect" and any(n is not None and n < after + 1 for n in sizes):
        return "zero"
    return preferred


def downsample(x, *, method: str, blur_size: int, strides: int = 2, padding: str = "reflect", name: str, dtype=None):
    """Zhang's (or Chaman's) downsampling step on a full-resolution map `x`: `BlurPool2D` or polyphase sampling.

    `padding` is the blur's (`reflect`, `zero` or `circular`); `reflect` falls back
    to `zero` on maps too small to reflect. Shared by `antialias` and the builders.
    """
    if method == "blur":
        return BlurPool2D(blur_size=blur_size, strides=strides, padding=_blur_padding(x.shape[1:3], blur_size, padding),
                          name=name, dtype=dtype)(x)
    if method == "aps":
        if strides != 2:
            raise ValueError(f"adaptive polyphase sampling downsamples by 2 only, got strides {strides!r} at {name!r}")
        h, w = x.shape[1:3]
        odd = (int(h is not None and h % 2), int(w is not None and w % 2))
        if any(odd):
            x = layers.ZeroPadding2D(((0, odd[0]), (0, odd[1])), name=f"{name}_even", dtype=dtype)(x)
        return AdaptivePolyphaseSampling2D(blur_size=blur_size, padding=padding, name=name, dtype=dtype)(x)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


class _Pending:
    """A full-resolution tensor whose downsampling step is still to come (after norm and activation)."""

    def __init__(self, tensor, make):
        self.tensor = tensor
        self.make = make  # full-resolution tensor -> downsampled tensor
        self.done = None


class _Rewriter:
    def __init__(self, method: str, blur_size: int, strict: bool):
        self.method = method
        self.blur_size = blur_size
        self.strict = strict
        self.clones: dict[int, keras.layers.Layer] = {}  # id(original layer) -> its copy
        self.pairs: list[tuple] = []  # (original, copy): weights to carry over
        self.names: set[str] = set()
        self.claimed: set[str] = set()  # original names taken over by a replacing layer

    # ------------------------------------------------------------------ errors and names

    def unsupported(self, layer, why: str):
        message = (
            f"antialias cannot rewrite {layer.name!r} ({type(layer).__name__}): {why}. "
            f"Pass strict=False to keep it as it is."
        )
        if self.strict:
            raise ValueError(message)
        warnings.warn(message.replace("Pass strict=False to keep it as it is.", "Kept as it is (strict=False)."),
                      stacklevel=3)

    def claim(self, name: str) -> str:
        """The name of a layer replacing the original `name`: that name once, then fresh ones (a shared layer)."""
        if name in self.claimed:
            return self.fresh_name(name)
        self.claimed.add(name)
        return name

    def fresh_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    # ------------------------------------------------------------------ copies of layers

    def copy(self, layer, **changes):
        """A copy of `layer` from its config (with `changes`), one per original layer; weights carried over later."""
        key = id(layer)
        if key not in self.clones:
            config = layer.get_config()
            config.update(changes)
            clone = type(layer).from_config(config)
            self.clones[key] = clone
            self.pairs.append((layer, clone))
        return self.clones[key]

    def keep(self, layer):
        """A plain copy of a layer the rewrite does not change; a layer that cannot be copied is shared."""
        key = id(layer)
        if key in self.clones:
            return self.clones[key]
        try:
            return self.copy(layer)
        except Exception as error:  # noqa: BLE001 -- a custom layer without a usable config
            warnings.warn(f"antialias: {layer.name!r} ({type(layer).__name__}) could not be copied from its "
                          f"config ({error}); the new model shares it with the original", stacklevel=3)
            self.clones[key] = layer
            return layer

    # ------------------------------------------------------------------ models

    def model(self, model, top: bool = False):
        if id(model) in self.clones:
            return self.clones[id(model)]
        if isinstance(model, keras.Sequential):
            graph = getattr(model, "_functional", None)
            if graph is None:
                raise ValueError(
                    f"antialias cannot rewrite the Sequential model {model.name!r}: it has no input shape yet "
                    f"(build it, or start it with keras.Input)"
                )
        elif hasattr(model, "_nodes_by_depth") and hasattr(model, "_inputs_struct"):
            graph = model
        else:
            why = "it is a subclassed model (its call() is Python code, not a graph of layers)"
            if top:
                raise ValueError(
                    f"antialias cannot rewrite {model.name!r} ({type(model).__name__}): {why}; "
                    f"rebuild it as a functional or Sequential model"
                )
            self.unsupported(model, why)
            return self.keep(model)
        new = self.graph(graph, model.name)
        self.clones[id(model)] = new
        return new

    def graph(self, fn, name: str):
        """Rewrite the functional graph `fn` node by node (the order of Function._run_through_graph)."""
        saved_names, self.names = (self.names, self.claimed), set()
        self.claimed = set()
        for op in fn.operations:
            self.names.add(op.name)
        consumers: dict[int, int] = {}
        nodes = [node for depth in sorted(fn._nodes_by_depth, reverse=True) for node in fn._nodes_by_depth[depth]]
        for node in nodes:
            if node.operation and not node.is_input:
                for t in node.input_tensors:
                    consumers[id(t)] = consumers.get(id(t), 0) + 1
        for t in fn.outputs:
            consumers[id(t)] = consumers.get(id(t), 0) + 2  # an output is always materialised

        new_inputs = []
        for t in fn.inputs:
            source = t._keras_history.operation
            new_inputs.append(keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=getattr(t, "sparse", False),
                                          name=source.name))
        values = {id(t): v for t, v in zip(fn.inputs, new_inputs)}

        for node in nodes:
            if not node.operation or node.is_input:
                continue
            if any(id(t) not in values for t in node.input_tensors):
                continue
            op = node.operation
            inputs = node.input_tensors
            pending = values[id(inputs[0])] if len(inputs) == 1 else None
            if (isinstance(pending, _Pending) and type(op) in _PASS_THROUGH and consumers.get(id(inputs[0])) == 1
                    and getattr(op, "axis", -1) in (-1, 3, [-1], [3])):
                args, kwargs = node.arguments.fill_in({id(inputs[0]): pending.tensor})
                out = self.keep(op)(*args, **kwargs)
                self.store(values, node, _Pending(out, pending.make))
                continue
            filled = {id(t): self.materialize(values[id(t)]) for t in inputs}
            args, kwargs = node.arguments.fill_in(filled)
            out = self.call(op, node, args, kwargs)
            self.store(values, node, out)

        outputs = [self.materialize(values[id(t)]) for t in fn.outputs]
        model = keras.Model(
            keras.tree.pack_sequence_as(fn._inputs_struct, new_inputs),
            keras.tree.pack_sequence_as(fn._outputs_struct, outputs),
            name=name,
        )
        self.names, self.claimed = saved_names
        return model

    @staticmethod
    def store(values, node, out):
        outs = [out] if isinstance(out, _Pending) else keras.tree.flatten(out)
        for t, v in zip(node.outputs, outs):
            values[id(t)] = v

    @staticmethod
    def materialize(value):
        if isinstance(value, _Pending):
            if value.done is None:
                value.done = value.make(value.tensor)
            return value.done
        return value

    # ------------------------------------------------------------------ one node

    def call(self, op, node, args, kwargs):
        if isinstance(op, keras.Model):
            return self.model(op)(*args, **kwargs)
        if not isinstance(op, keras.layers.Layer):
            return op(*args, **kwargs)  # a keras.ops operation: stateless
        if isinstance(op, _NOT_ALIASING) or not _is_strided(op):
            return self.keep(op)(*args, **kwargs)
        if isinstance(op, _CONVS + _POOLS) and type(op) in _CONVS + _POOLS:
            return self.strided(op, node, args, kwargs)
        config = op.get_config()
        own = next((k for k in ("blur_size", "blur") if k in config), None)
        if own is not None and self.method == "blur":
            return self.copy(op, **{own: self.blur_size})(*args, **kwargs)
        kind = "a Keras layer" if type(op).__module__.startswith("keras.") else "a custom layer"
        self.unsupported(op, f"{kind} with strides {_strides(op)} (only Keras' Conv2D, DepthwiseConv2D, "
                             f"SeparableConv2D, MaxPooling2D and AveragePooling2D"
                             + (", and layers with their own blur option under method 'blur'," if own else "")
                             + " are rewritten)")
        return self.keep(op)(*args, **kwargs)

    def strided(self, op, node, args, kwargs):
        strides = _pair(op.strides)
        if strides[0] != strides[1]:
            self.unsupported(op, f"non-square strides {strides}")
            return self.keep(op)(*args, **kwargs)
        if getattr(op, "data_format", "channels_last") != "channels_last":
            self.unsupported(op, f"data_format {op.data_format!r} (the blur layers are channels-last)")
            return self.keep(op)(*args, **kwargs)
        stride = strides[0]
        if self.method == "aps" and stride != 2:
            self.unsupported(op, f"strides {strides}: adaptive polyphase sampling downsamples by 2 only")
            return self.keep(op)(*args, **kwargs)
        source = node.input_tensors[0]
        target = tuple(node.outputs[0].shape[1:3])
        kernel = _pair(op.pool_size if isinstance(op, _POOLS) else op.kernel_size)
        padding = op.padding.lower()
        offsets = [0, 0]
        if padding == "same":
            for a in range(2):
                n = source.shape[1 + a]
                if n is None:
                    self.unsupported(op, "'same' padding at stride > 1 on an unknown spatial size (where the "
                                         "strided layer samples depends on the size; build the model for a fixed "
                                         "input size)")
                    return self.keep(op)(*args, **kwargs)
                offsets[a] = same_offset(n, kernel[a], stride)
        base = op.name
        # The blur wraps around where the layer's input was padded circularly (CircularPad2D: exact
        # circular-shift equivariance is kept); else Zhang's reflect for blur, Chaman's circular for aps.
        circular = type(source._keras_history.operation).__name__ == "CircularPad2D"
        pad_mode = "circular" if circular or self.method == "aps" else "reflect"
        dtype = op.dtype_policy

        def step(x):
            if any(offsets):
                x = layers.Cropping2D(((offsets[0], 0), (offsets[1], 0)), name=self.fresh_name(f"{base}_offset"),
                                      dtype=dtype)(x)
            y = downsample(x, method=self.method, blur_size=self.blur_size, strides=stride, padding=pad_mode,
                           name=self.fresh_name(f"{base}_{'blurpool' if self.method == 'blur' else 'aps'}"),
                           dtype=dtype)
            if self.method == "blur" and tuple(y.shape[1:3]) != target:  # a bug, not a user error
                raise AssertionError(f"antialias: {base!r} downsampled to {tuple(y.shape[1:3])}, expected {target}")
            return y

        x = args[0]
        if isinstance(op, layers.AveragePooling2D) and self.method == "blur" and kernel == (2, 2) and stride == 2 \
                and padding == "valid" and self.blur_size < 7 \
                and all(n is not None and n % 2 == 0 for n in source.shape[1:3]):
            # box(2) (x) binomial(b) = binomial(b + 1): one BlurPool2D, exactly the average pool for b = 1
            n = BlurPool2D(blur_size=self.blur_size + 1, strides=2,
                           padding=_blur_padding(source.shape[1:3], self.blur_size + 1, "reflect"),
                           name=self.claim(base), dtype=dtype)  # replaces the layer: its name
            return n(x)
        if isinstance(op, layers.MaxPooling2D) and self.method == "blur" and kernel == (2, 2) and stride == 2 \
                and padding == "valid":
            sizes = [None if s is None else s - 1 for s in source.shape[1:3]]  # after the 2x2 max at stride 1
            return MaxBlurPool2D(blur_size=self.blur_size, strides=2,
                                 padding=_blur_padding(sizes, self.blur_size, "reflect"),
                                 name=self.claim(base), dtype=dtype)(x)  # replaces the layer: its name
        full = self.copy(op, strides=(1, 1))(*args, **kwargs)
        if isinstance(op, _POOLS):
            return step(full)  # Zhang's MaxBlurPool / BlurPool: the step right after the dense pool
        return _Pending(full, step)  # ConvBlurPool: the step after the conv's normalisation and activation


def antialias(model, method: str = "blur", blur_size: int = 3, strict: bool = True) -> keras.Model:
    """Return a new functional model: `model` with every downsampling anti-aliased, weights carried over.

    Args:
        model: a functional or `Sequential` Keras model (nested models are
            rewritten recursively).
        method: `blur` (Zhang's BlurPool family, ICML 2019) or `aps`
            (adaptive polyphase sampling, Chaman & Dokmanic, CVPR 2021).
        blur_size: binomial filter size, 1 to 7 (1: no blur; with `blur` the
            new model then computes exactly what `model` does).
        strict: raise a `ValueError` naming what cannot be rewritten (a
            subclassed model, a custom strided layer); `False` keeps it as it
            is, with a warning.

    Returns:
        A new `keras.Model` with the same inputs, outputs, layer names and
        weights (copies), and the same parameter count.

    Example:
        >>> base = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
        >>> smooth = antialias(base, "blur", blur_size=3)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(blur_size, int) or isinstance(blur_size, bool) or not 1 <= blur_size <= 7:
        raise ValueError(f"blur_size must be an integer from 1 to 7, got {blur_size!r}")
    if not isinstance(model, keras.Model):
        raise ValueError(f"antialias takes a keras.Model, got {type(model).__name__}")
    rewriter = _Rewriter(method, blur_size, bool(strict))
    new = rewriter.model(model, top=True)
    for original, copy in rewriter.pairs:
        if copy is not original and original.weights:
            copy.set_weights(original.get_weights())
    return new
