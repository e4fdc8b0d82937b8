"""`to_plain`: a model of this project's layers rewritten in stock Keras layers, for inference.

The converted model holds only classes of `keras.layers` (and keras.Model),
so its `.keras` file loads with `keras.saving.load_model` in a process that
never imports `layers/` or `models/`, and its SavedModel is an ordinary one.
It computes the same outputs in inference mode, up to float32 rounding
(within 1e-5 on outputs of order one: tests/models/test_plain.py), and runs
faster: bench/bench_plain.py, docs/results.md.
"""

from __future__ import annotations

import keras
import numpy as np

from layers.group._groups import parse_group
from layers.group.group_batch_norm import GroupBatchNormalization
from layers.group.group_conv import GroupConv2D
from layers.group.group_pooling import GroupPooling
from layers.group.group_restriction import GroupRestriction
from layers.group.lifting_conv import LiftingConv2D
from layers.scale.scale_conv import ScaleConv2D
from layers.scale.scale_lifting_conv import ScaleLiftingConv2D
from layers.scale.scale_pooling import ScalePooling
from layers.shift.blurpool import BlurPool2D
from layers.shift.circular_pad import CircularPad2D
from layers.shift.max_blurpool import MaxBlurPool2D
from layers.shift.spatial_separable_conv import SpatialSeparableConv2D

L = keras.layers
_GROUP_CONVS = (LiftingConv2D, GroupConv2D)
_ELEMENTWISE = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Dropout)
_MERGES = (L.Add, L.Subtract, L.Multiply, L.Maximum, L.Minimum, L.Average)
_NO_STOCK_FORM = {  # module prefix -> why it has no stock form
    "layers.harmonic": "the harmonic family's complex feature maps need magnitude nonlinearities "
                       "(|z|-gated ReLU, magnitude readout: a square root and a division per pixel) that no stock "
                       "Keras layer computes",
    "layers.scale.scale_harmonic": "the harmonic family's complex feature maps need magnitude nonlinearities "
                                   "that no stock Keras layer computes",
    "layers.shift.polyphase": "it picks the sampling phase per image from the data (an argmax of norms): no stock layer",
    "layers.invariance": "its orbit over transformed copies (or its canonicalising transform) has no stock form",
}


def to_plain(model: keras.Model, fold_batch_norm: bool = True) -> keras.Model:
    """The same network in stock Keras layers: a new functional model, for inference.

    - `LiftingConv2D`, `GroupConv2D` (C_N and D_N), `ScaleLiftingConv2D` and
      `ScaleConv2D` become one `Conv2D` each, with the dense kernel
      (`dense_kernel()`) and bias frozen
      (`trainable=False`). Their [B, H, W, |G|, C] maps travel as the
      [B, H, W, |G| * C] maps the convolutions read and write; a `Reshape`
      back to five axes is added only before a layer that needs them.
    - `GroupBatchNormalization` (inference: an affine map per channel) is
      folded into the convolution before it when that convolution feeds
      only it (its activation becomes the Conv2D's), else a stock
      `BatchNormalization` with the statistics tiled over |G| (also with
      `fold_batch_norm=False`). A stock `BatchNormalization`, activation,
      dropout or elementwise merge (`Add`, ...: a residual block's sum) on
      group or scale maps runs on the flat maps the same way.
    - `GroupRestriction` makes no layer: it reorders the flat channels,
      which the next group convolution's kernel takes in (any other layer
      gets the order from a frozen 1x1 `Conv2D` of a 0/1 kernel, exact).
    - `GroupPooling` and `ScalePooling`: `Reshape`, `MaxPooling2D` or
      `AveragePooling2D` over the group axis, `Reshape`.
    - `BlurPool2D` and `MaxBlurPool2D`: the fixed binomial filter as a frozen
      `DepthwiseConv2D`; reflect and circular padding (which Keras has no
      layer for) as `Cropping2D` slices and `Concatenate`; zero padding as
      `ZeroPadding2D`. `CircularPad2D` likewise, and
      `SpatialSeparableConv2D` as a `Conv2D` of its effective k x k kernel.
    - Stock layers are copied with their weights; nested functional and
      Sequential models are inlined. A model of stock layers only comes
      back as an equal copy.

    Not expressible in stock layers, so a `ValueError` naming the layer: the
    harmonic family (`HarmonicConv2D` and the rest: its magnitude
    nonlinearities need a square root and a division per pixel, which no
    stock layer computes), `AdaptivePolyphaseSampling2D` (a data-dependent
    choice of phase), the invariance wrapper's layers (`layers.invariance`)
    and any other custom layer. Subclassed models are refused too.

    Limits: the result is for inference: folded batch norms have no moving
    statistics left to train, and `training=True` is not the original's
    training behaviour. Reshapes need a static height or width, padding by
    slices a static height and width (a `ValueError` says which layer). Each
    layer keeps its dtype policy (under mixed precision the folded kernels
    round differently from the original's separate steps).

    Args:
        model: a functional or Sequential Keras model (built).
        fold_batch_norm: fold each `GroupBatchNormalization` into the
            convolution before it where possible (faster; see
            bench/bench_plain.py).

    Returns:
        A functional `keras.Model` named `<name>_plain` of stock layers.
    """
    return _Converter(model, fold_batch_norm).run()


class _Virtual:
    """A [B, H, W, G, C] map held as the flat [B, H, W, G * C] tensor `flat` (element-major), its channels
    read through `perm` when a restriction reordered them: channel i of the map is flat channel perm[i]."""

    def __init__(self, flat, g: int, c: int, name: str, perm=None):
        self.flat, self.g, self.c, self.name, self.perm = flat, int(g), int(c), name, perm
        self.real = self.ordered = None

    def like(self, flat, name):
        """Another map of the same layout (what an elementwise layer makes of this one)."""
        return _Virtual(flat, self.g, self.c, name, self.perm)

    def tiled(self, w):
        """A per-channel vector [C] as a vector over the flat channels."""
        t = np.tile(np.asarray(w), self.g)
        if self.perm is None:
            return t
        out = np.empty_like(t)
        out[self.perm] = t
        return out

    @property
    def shape(self):
        return tuple(self.flat.shape[:3]) + (self.g, self.c)


def _is_stock(op) -> bool:
    return type(op).__module__.startswith("keras.")


def _np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")


class _Converter:
    def __init__(self, model, fold_batch_norm: bool):
        if not isinstance(model, keras.Model):
            raise ValueError(f"to_plain takes a Keras model, got {type(model).__name__}")
        self.model, self.fold = model, fold_batch_norm
        self.copies: dict[int, keras.layers.Layer] = {}
        self.folded: dict[int, GroupBatchNormalization] = {}  # id(conv) -> the batch norm folded into it
        self.skip: set[int] = set()  # ids of batch norms folded away
        self.reserved: set[str] = set()  # the original's layer names
        self.taken: set[str] = set()  # the new model's
        self._scan(model)

    # ------------------------------------------------------------------ graph walking

    def _scan(self, model):
        """Names in use and, in functional graphs, the conv -> batch norm pairs that can be folded."""
        for layer in model.layers:
            self.reserved.add(layer.name)
            if isinstance(layer, keras.Model):
                self._scan(layer)
        if not self.fold or not hasattr(model, "_nodes_by_depth"):
            return
        nodes = [n for ns in model._nodes_by_depth.values() for n in ns if n.operation is not None]
        uses, consumers = {}, {}
        for n in nodes:
            uses[id(n.operation)] = uses.get(id(n.operation), 0) + 1
            for t in n.input_tensors:
                consumers.setdefault(id(t), []).append(n.operation)
        outputs = {id(t) for t in model.outputs}
        for n in nodes:
            op = n.operation
            if not isinstance(op, _GROUP_CONVS) or uses[id(op)] != 1 or len(n.outputs) != 1:
                continue
            t = n.outputs[0]
            after = consumers.get(id(t), [])
            if (len(after) == 1 and id(t) not in outputs and isinstance(after[0], GroupBatchNormalization)
                    and uses[id(after[0])] == 1):
                self.folded[id(op)] = after[0]
                self.skip.add(id(after[0]))

    def run(self) -> keras.Model:
        model = self.model
        if not model.built or not model.inputs:
            raise ValueError(f"to_plain needs a built model with known inputs; {model.name!r} has none")
        inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=self._name(t.name, own=True))
                  for t in model.inputs]
        outputs = self._call_model(model, inputs if len(inputs) > 1 else inputs[0])
        outputs = keras.tree.map_structure(self._real, outputs)
        return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=f"{model.name}_plain")

    def _call_model(self, model, x):
        if isinstance(model, keras.Sequential):
            for layer in model.layers:
                x = self._call(layer, x)
            return x
        if not hasattr(model, "_run_through_graph") or not hasattr(model, "_nodes_by_depth"):
            raise ValueError(f"to_plain: {model.name!r} is a subclassed model ({type(model).__name__}); only "
                             "functional and Sequential models can be converted")
        return model._run_through_graph(x, operation_fn=lambda op: op, call_fn=self._call)

    def _call(self, op, *args, **kwargs):
        if isinstance(op, keras.Model):
            return self._call_model(op, args[0])
        convert = _CONVERSIONS.get(type(op))
        if convert is not None:
            return convert(self, op, args[0])
        if _is_stock(op):
            return self._stock(op, args, kwargs)
        module = type(op).__module__
        why = next((w for prefix, w in _NO_STOCK_FORM.items() if module.startswith(prefix)),
                   "to_plain knows no stock form of it")
        raise ValueError(f"to_plain: layer {op.name!r} ({type(op).__name__}, {module}) cannot be converted to "
                         f"stock Keras layers: {why}")

    # ------------------------------------------------------------------ helpers

    def _name(self, base: str, own: bool = False) -> str:
        """A name not yet taken in the new model: a layer's own (`own`), else `base`, `base_1`, ... that no
        layer of the original uses either (so that the copies keep their names)."""
        name, i = base, 1
        if not (own and base not in self.taken):
            while name in self.taken or name in self.reserved:
                name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def _apply(self, layer, x, weights=None, frozen=False):
        y = layer(x)
        if weights is not None:
            layer.set_weights([np.asarray(w, dtype=v.dtype) for w, v in zip(weights, layer.weights)])
        if frozen:
            layer.trainable = False
        return y

    def _real(self, x):
        """The tensor itself, or a `_Virtual`'s five-axis map (one Reshape, shared by its consumers)."""
        if not isinstance(x, _Virtual):
            return x
        if x.real is None:
            h, w = x.flat.shape[1:3]
            target = self._target((h, w, x.g, x.c), x.name)
            x.real = L.Reshape(target, name=self._name(f"{x.name}_groups"))(self._ordered(x))
        return x.real

    def _ordered(self, x: _Virtual):
        """The flat map in element-major order: `flat` itself, or its channels permuted by a frozen 1x1
        Conv2D of a 0/1 kernel (exact: each output is one input times 1 plus zeros)."""
        if x.perm is None:
            return x.flat
        if x.ordered is None:
            n = x.g * x.c
            kernel = np.zeros((1, 1, n, n))
            kernel[0, 0, x.perm, np.arange(n)] = 1.0
            order = L.Conv2D(n, 1, use_bias=False, name=self._name(f"{x.name}_order"))
            x.ordered = self._apply(order, x.flat, [kernel], frozen=True)
        return x.ordered

    def _flat(self, x, layer):
        """(flat [B, H, W, G * C] tensor, G, C) of a five-axis input."""
        if isinstance(x, _Virtual):
            return self._ordered(x), x.g, x.c
        if len(x.shape) != 5:
            raise ValueError(f"to_plain: layer {layer.name!r} takes five-axis maps, got shape {x.shape}")
        h, w, g, c = x.shape[1:]
        flat = L.Reshape(self._target((h, w, g * c), layer.name), name=self._name(f"{layer.name}_flat"))(x)
        return flat, g, c

    @staticmethod
    def _target(shape, where):
        if sum(d is None for d in shape) > 1:
            raise ValueError(f"to_plain: a stock Reshape at {where!r} needs a static height or width, got {shape}")
        return tuple(-1 if d is None else int(d) for d in shape)

    def _stock(self, op, args, kwargs):
        """A stock layer or operation: copied with its weights (on flat maps where that is the same)."""
        x = args[0] if args else None
        if isinstance(x, _Virtual) and len(args) == 1:
            if isinstance(op, L.Reshape):
                out = op.compute_output_shape(x.shape)
                if tuple(out[1:]) == tuple(x.flat.shape[1:]) and None not in out[1:]:
                    return self._ordered(x)  # the flat maps already are that reshape
            elif isinstance(op, _ELEMENTWISE) and getattr(op, "noise_shape", None) is None and not (
                    isinstance(op, L.Activation) and "softmax" in str(keras.activations.serialize(op.activation))):
                return x.like(self._copy(op, [x.flat]), op.name)
            elif isinstance(op, L.BatchNormalization) and op.axis in (-1, 4):
                ws = [x.tiled(_np(w)) for w in op.get_weights()]
                return x.like(self._copy(op, [x.flat], weights=ws, config={"axis": -1}), op.name)
        elif isinstance(op, _MERGES) and len(args) == 1 and isinstance(x, (list, tuple)) and _same_layout(x):
            return x[0].like(self._copy(op, [[v.flat for v in x]]), op.name)
        elif isinstance(op, L.Reshape) and len(args) == 1 and len(x.shape) == 4 and None not in x.shape[1:]:
            out = op.compute_output_shape(x.shape)
            if len(out) == 5 and tuple(out[1:3]) == tuple(x.shape[1:3]) and None not in out[1:]:
                return _Virtual(x, out[3], out[4], op.name)  # flat until a layer needs five axes
        args, kwargs = keras.tree.map_structure(self._real, (args, kwargs))
        if not isinstance(op, L.Layer):  # a keras.ops operation in the graph: no state
            return op(*args, **kwargs)
        kwargs.pop("training", None)
        return self._copy(op, args, kwargs)

    def _copy(self, layer, args, kwargs=None, weights=None, config=None):
        """Call a copy of stock `layer` (its config updated by `config`; its weights or `weights`) on `args`."""
        if id(layer) in self.copies:  # a shared layer stays shared
            return self.copies[id(layer)](*args, **(kwargs or {}))
        config = {**layer.get_config(), **(config or {})}
        config["name"] = self._name(layer.name, own=True)
        new = type(layer).from_config(config)
        self.copies[id(layer)] = new
        y = new(*args, **(kwargs or {}))
        new.set_weights(layer.get_weights() if weights is None else weights)
        new.trainable = layer.trainable
        return y

    def _conv(self, layer, x, kernel, bias, g, f, strides=1, padding="same", activation=None):
        """A frozen stock Conv2D of `kernel` [k, k, Cin, g * f] (+ bias [g * f]) -> a `_Virtual` of (g, f)."""
        conv = L.Conv2D(kernel.shape[-1], kernel.shape[:2], strides=strides, padding=padding,
                        activation=activation, use_bias=bias is not None, dtype=layer.dtype_policy,
                        name=self._name(layer.name, own=True))
        weights = [kernel] + ([bias] if bias is not None else [])
        return _Virtual(self._apply(conv, x, weights, frozen=True), g, f, layer.name)  # element-major

    # ------------------------------------------------------------------ circular and reflect padding

    def _pad(self, x, rows, cols, mode, name):
        """Pad [B, H, W, C] by ((top, bottom), (left, right)) in `mode` with stock layers."""
        if mode == "zero":
            if rows == (0, 0) and cols == (0, 0):
                return x
            return L.ZeroPadding2D((rows, cols), name=self._name(f"{name}_pad"))(x)
        for axis, (before, after) in ((1, rows), (2, cols)):
            if before == 0 and after == 0:
                continue
            n = x.shape[axis]
            if n is None:
                raise ValueError(f"to_plain: {mode} padding at {name!r} needs a static height and width, "
                                 f"got shape {x.shape}")
            if mode == "circular":
                spans = [(n - before, n)] if before else []
                spans += [None] + ([(0, after)] if after else [])
            else:  # reflect: rows before..1, the map, rows n-2..n-1-after
                spans = [(i, i + 1) for i in range(before, 0, -1)] + [None]
                spans += [(n - 1 - j, n - j) for j in range(1, after + 1)]
            parts = []
            for span in spans:
                if span is None:
                    parts.append(x)
                    continue
                crop = (span[0], n - span[1])
                cropping = (crop, (0, 0)) if axis == 1 else ((0, 0), crop)
                parts.append(L.Cropping2D(cropping, name=self._name(f"{name}_edge"))(x))
            x = L.Concatenate(axis=axis, name=self._name(f"{name}_{mode}"))(parts)
        return x

    # ------------------------------------------------------------------ the conversions

    def _group_conv(self, layer, x):
        g, f = getattr(layer, "group_size", layer.group_order), layer.filters
        kernel = _np(layer.dense_kernel())
        if isinstance(layer, GroupConv2D) and isinstance(x, _Virtual) and x.perm is not None:
            rows = np.empty_like(kernel)
            rows[:, :, x.perm, :] = kernel  # the kernel reads the flat channels where the map's are
            x, kernel = x.flat, rows
        elif isinstance(layer, GroupConv2D):
            x, _, _ = self._flat(x, layer)
        else:
            x = self._real(x)
        bias = np.tile(_np(layer.bias), g) if layer.use_bias else None
        bn = self.folded.get(id(layer))
        if bn is None:
            return self._conv(layer, x, kernel, bias, g, f, padding=layer.padding)
        scale, shift = _affine(bn)
        scale, shift = np.tile(scale, g), np.tile(shift, g)
        bias = shift + (scale * bias if bias is not None else 0.0)
        return self._conv(layer, x, kernel * scale, bias, g, f, padding=layer.padding, activation=bn.activation)

    def _group_bn(self, layer, x):
        if id(layer) in self.skip:
            return x  # folded into the convolution before it
        if not isinstance(x, _Virtual):
            flat, g, c = self._flat(x, layer)
            x = _Virtual(flat, g, c, layer.name)
        new = L.BatchNormalization(axis=-1, momentum=layer.momentum, epsilon=layer.epsilon, center=layer.center,
                                   scale=layer.scale, dtype="float32", name=self._name(layer.name, own=True))
        y = self._apply(new, x.flat, [x.tiled(_np(w)) for w in layer.bn.get_weights()], frozen=True)
        if layer.activation is not None:
            y = L.Activation(layer.activation, dtype="float32", name=self._name(f"{layer.name}_act"))(y)
        return x.like(y, layer.name)

    def _restriction(self, layer, x):
        """No layer: the flat channels are only read in another order (the next group convolution's kernel
        takes it in; a layer that needs the order itself gets a 1x1 permutation, `_ordered`)."""
        if not isinstance(x, _Virtual):
            flat, g, c = self._flat(x, layer)
            x = _Virtual(flat, g, c, layer.name)
        index = parse_group(layer.group).restriction(parse_group(layer.subgroup)).reshape(-1)  # [|H| * cosets]
        c = x.c
        q = (index[:, None] * c + np.arange(c)[None, :]).reshape(-1)  # restricted channel -> input channel
        perm = q if x.perm is None else x.perm[q]
        h = parse_group(layer.subgroup).order
        if np.array_equal(perm, np.arange(len(perm))):
            perm = None
        return _Virtual(x.flat, h, x.g * c // h, layer.name, perm)

    def _pool_group_axis(self, layer, x):
        flat, g, c = self._flat(x, layer)
        h, w = flat.shape[1:3]
        target = self._target((h, w, c), layer.name)  # checked before any layer is made
        y = L.Reshape((-1, g, c), name=self._name(f"{layer.name}_rows"))(flat)
        pool = L.MaxPooling2D if layer.mode == "max" else L.AveragePooling2D
        y = pool((1, g), name=self._name(layer.name, own=True))(y)
        return L.Reshape(target, name=self._name(f"{layer.name}_maps"))(y)

    def _blurpool(self, layer, x):
        x = self._real(x)
        k, s, mode = layer.blur_size, layer.strides, layer.padding
        if isinstance(layer, MaxBlurPool2D):
            if mode == "circular":
                x = self._pad(x, (0, 1), (0, 1), "circular", f"{layer.name}_max")
            x = L.MaxPooling2D(2, strides=1, padding="valid", name=self._name(f"{layer.name}_max"))(x)
        if k == 1:
            return L.MaxPooling2D(1, strides=s, name=self._name(layer.name, own=True))(x)  # x[:, ::s, ::s]
        before = (k - 1) // 2
        x = self._pad(x, (before, k - 1 - before), (before, k - 1 - before), mode, layer.name)
        c = x.shape[-1]
        kernel = np.tile(np.asarray(layer.kernel)[:, :, None, None], (1, 1, c, 1))
        blur = L.DepthwiseConv2D(k, strides=s, padding="valid", use_bias=False, dtype=layer.dtype_policy,
                                 name=self._name(layer.name, own=True))
        return self._apply(blur, x, [kernel], frozen=True)

    def _circular_pad(self, layer, x):
        p = layer.padding
        if isinstance(p, int):
            p = ((p, p), (p, p))
        elif isinstance(p[0], int):
            p = ((p[0], p[0]), (p[1], p[1]))
        return self._pad(self._real(x), tuple(p[0]), tuple(p[1]), "circular", layer.name)

    def _separable(self, layer, x):
        x = self._real(x)
        k, r, m = layer.kernel_size, layer.rank, layer.filters
        v = _np(layer.vertical_kernel).reshape(k, -1, m, r)  # [k, Cin, M, r]: channel m * r + j
        h = _np(layer.horizontal_kernel).reshape(k, m, r)
        kernel = np.einsum("acmj,bmj->abcm", v, h)
        padding = layer.padding
        if padding == "circular":
            before = (k - 1) // 2
            x = self._pad(x, (before, k - 1 - before), (before, k - 1 - before), "circular", layer.name)
            padding = "valid"
        bias = _np(layer.bias) if layer.use_bias else None
        conv = L.Conv2D(m, k, strides=layer.strides, padding=padding, use_bias=bias is not None,
                        dtype=layer.dtype_policy, name=self._name(layer.name, own=True))
        return self._apply(conv, x, [kernel] + ([bias] if bias is not None else []), frozen=True)

    def _scale_lifting(self, layer, x):
        s, f = layer.num_scales, layer.filters
        bias = np.tile(_np(layer.bias), s) if layer.use_bias else None
        return self._conv(layer, self._real(x), _np(layer.dense_kernel()), bias, s, f, layer.strides, layer.padding)

    def _scale_conv(self, layer, x):
        flat, s, c = self._flat(x, layer)
        f, inter = layer.filters, layer.interscale
        kernels = _np(layer.dense_kernel())  # per output scale: [S, k, k, inter * C, F]
        kh, kw = kernels[0].shape[:2]
        kernel = np.zeros((kh, kw, s * c, s * f))
        for out in range(s):
            for t in range(out, min(out + inter, s)):  # input scales past the last are the zero padding
                j = t - out  # the input scale's place in the output scale's slab
                kernel[:, :, t * c:(t + 1) * c, out * f:(out + 1) * f] = kernels[out][:, :, j * c:(j + 1) * c]
        bias = np.tile(_np(layer.bias), s) if layer.use_bias else None
        return self._conv(layer, flat, kernel, bias, s, f, layer.strides, layer.padding)


def _same_layout(xs) -> bool:
    """Maps of one layout (shape, group axis, channel order): an elementwise merge may run on their flat forms."""
    a = xs[0]
    return all(isinstance(v, _Virtual) for v in xs) and all(
        tuple(v.flat.shape[1:]) == tuple(a.flat.shape[1:]) and (v.g, v.c) == (a.g, a.c)
        and (v.perm is None) == (a.perm is None) and (v.perm is None or np.array_equal(v.perm, a.perm))
        for v in xs)


def _affine(layer: GroupBatchNormalization):
    """(scale, shift) per channel of a GroupBatchNormalization in inference: y = scale * x + shift."""
    bn = layer.bn
    mean, var = _np(bn.moving_mean), _np(bn.moving_variance)
    gamma = _np(bn.gamma) if layer.scale else np.ones_like(mean)
    beta = _np(bn.beta) if layer.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + layer.epsilon)
    return scale, beta - mean * scale


_CONVERSIONS = {
    LiftingConv2D: _Converter._group_conv,
    GroupConv2D: _Converter._group_conv,
    GroupBatchNormalization: _Converter._group_bn,
    GroupPooling: _Converter._pool_group_axis,
    GroupRestriction: _Converter._restriction,
    ScalePooling: _Converter._pool_group_axis,
    BlurPool2D: _Converter._blurpool,
    MaxBlurPool2D: _Converter._blurpool,
    CircularPad2D: _Converter._circular_pad,
    SpatialSeparableConv2D: _Converter._separable,
    ScaleLiftingConv2D: _Converter._scale_lifting,
    ScaleConv2D: _Converter._scale_conv,
}
