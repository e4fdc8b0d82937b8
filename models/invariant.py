"""Any model made rotation- and mirror-invariant by orbit averaging, weights kept.

`invariant(model, group="C4")` runs the backbone on every transformed copy of
the input, all copies in ONE backbone call (stacked along the batch), and
averages the logits over the copies (frame / group averaging, Puny et al.,
"Frame Averaging for Invariant and Equivariant Network Design", ICLR 2022).
Transforming the input by a group element permutes the copies, so the mean
is unchanged:

- `C4` (rotations by 90 degrees) and `D4` (those and their mirror images):
  the copies are exact pixel permutations (`rot90`, left-right flip) of
  square images, so the wrapped model is exactly invariant (up to float
  rounding in the backbone's batched call).
- `C8` and `D8` add the rotations by odd multiples of 45 degrees, resampled
  bilinearly about the image centre (corners filled with zeros). The copies
  of a square image are then exactly permuted by 90-degree rotations (and, for
  D8, mirrors): the model is exactly C4 (D4) invariant; under a 45-degree
  rotation it is only as invariant as the resampling allows (two
  interpolations, the input's and the copy's, against one).

Logits, not probabilities, are averaged: the wrapped model stays a logits
model (training's `from_logits` loss and the export's softmax are unchanged),
and the mean of logits is the log of the normalised geometric mean of the
copies' probabilities, which keeps a copy that is confidently right from
being averaged away by uncertain ones. Either is exactly invariant.

The cost is |G| backbone passes in one batched call: 4 (C4), 8 (C8, D4) or 16 (D8).

`method="canonicalize"` (Kaba, Mondal, Zhang, Bengio & Ravanbakhsh, "Equivariance
with Learned Canonicalization Functions", ICML 2023; Mondal et al., NeurIPS 2023)
costs one backbone pass plus a small network: `Canonicalize`, a C_N or D_N
group CNN of this project's layers (lifting and group convolutions, exactly
equivariant at multiples of 90 degrees and at mirrors) on the input
average-pooled by `downscale` (2: a quarter of the pixels), scores the
group's elements (N rotations, and their mirror images for D_N) for the
input; the input is transformed back by the inverse of the best-scoring one,
and the unchanged backbone sees that canonical pose. Transforming the input
by g moves the best score from h to g h (layers/group/_groups.py), so the
canonical pose, and the answer, do not change: exactly for C4 and D4 (and for
the quarter turns and mirrors of C8 and D8; at 45 degrees as far as
resampling and the group convolutions' band limit allow). Three ways to train
it (`relaxation`), the first two with the same inference (the best element, one
backbone pass):

- `straight_through` (the default): the forward pass uses the best
  orientation and the gradient reaches the scoring network through its
  softmax p (a straight-through estimator). One backbone pass per image.
- `marginal`: the backbone sees all |G| transformed-back copies of each
  training image (one batched call, as `orbit`), and the loss is the
  cross-entropy of the exact marginal sum_g p(g | x) q(y | copy g)
  (`CanonicalMarginal`): the scoring network gets the exact gradient of
  the likelihood, and learns to put its mass on the poses the backbone
  classifies best. |G| backbone passes per training image (training costs
  about as much as `orbit`'s). On rotated MNIST (C8, 30 epochs, two seeds)
  it made 3.15% test errors against 3.90-4.03% straight-through, at about 4x
  the training time (docs/results.md).

- `continuous` (C4 and C8): no discrete choice. The pose is the angle of the
  scores' first Fourier coefficient along the rotations (`Canonicalize.pose`,
  which turns with the image), and the input is turned back by that angle,
  in training and at inference alike, with a differentiable bilinear
  resampling (`_turn_by`): the backbone sees digits brought upright to any
  angle, not only to the nearest of the N turns, and the scoring network
  gets the exact gradient of the loss through the angle. One backbone pass
  per image. Exactly invariant to quarter turns (to the float rounding of
  the angle); mirrors are not angles, so D4 and D8 train one of the other two.

`pose_weight` (with `continuous`) adds a self-supervised pose-consistency
loss, `pose_weight * mean(1 - cos(pose(x turned by a) - pose(x) - a))` for
an angle a drawn per image: the scoring network is exactly equivariant only
at quarter turns, and this trains it to turn its angle with the image at
every angle, so that every turned copy of an image reaches the same
canonical pose (one more pass of the small network per training image).
Trained on upright digits and tested turned by every 15 degrees (C8, two
seeds), it made the accuracy curve flat to 0.34-0.38 points, against 6.5
without it; on rotated MNIST, 2.51-3.05% test errors with 5x5 filters
(1.61x the small CNN's inference), and 2.15-2.19% with `downscale: 4`, 6
channels and 5x5 filters (about 1.44x; docs/results.md).

`pose_jitter: J` (degrees, with `continuous`) turns each training image back
by its angle minus d, d uniform in [-J, J] and drawn per image: the backbone
trains on canonical poses spread as a class's test digits spread around its
pose (the writers' slant, the pose's own error), where it otherwise errs 2.5-3x
more. Training only: inference and its invariance are unchanged, and so is
the cost. On rotated MNIST (the quarter-size 6-channel 5x5 canonicalizer
with the pose loss) J = 30 made 1.99% / 1.86% / 2.10% test errors against
2.19% / 2.15% / 2.07% without it (seeds 0 / 1 / 2): 0.15 points fewer on
the mean, on two seeds of three, so not established; 15 and 45 did not
help on seed 0 (docs/results.md). Off by default.

`network: polar` (with `continuous`) replaces the group CNN by a scoring
network on a polar resampling of the (pooled) input about its centre:
POLAR_ANGLES = 32 angles by the radii 1 pixel apart (bilinear reads, the radii
as channels), 1D convolutions over the angle (dilated 1, 2, 4, ... until
they see the whole circle: 4 of them with 5 taps, 5 with 3; `filters`
channels, `kernel_size` taps, circularly padded, ReLU) and a 1x1 one to a
logit per angle. Turning the input about its centre rolls the grid
along the angle, so the convolutions are equivariant to every turn by 11.25
degrees up to the bilinear reads (exactly at quarter turns), where the group
CNN is exact only at quarter turns and band-limited at 45 degrees; and they
see the whole digit at full resolution. On rotated MNIST (32 or 64
channels, 5 taps, `downscale: 1`, the pose loss and `pose_jitter: 30`) its
pose followed a turned digit to 0.6-0.76 degrees (median; the group CNN's
2.7) and agreed more within a class. Test errors: 1.92% / 1.89% with 32
channels (seeds 0 / 1, 1.35x the CNN's inference), 1.88% / 1.81% / 1.72%
with 64 (seeds 0 / 1 / 2, 1.51x), against the group CNN's 1.99% / 1.86% /
2.10% (1.41x): 0.18 points fewer on the mean (docs/results.md).

`prior_weight` adds the prior of Mondal et al., `prior_weight * -log
p(identity)`, which keeps upright training images upright (for a backbone
trained on upright images). `canonicalize` takes C4, C8, D4 and D8.

Any registered builder takes both through `model.params.invariant: {group:
C4, method: orbit | canonicalize, filters, kernel_size, prior_weight, downscale,
relaxation, pose_weight, pose_jitter, network}` (models/registry.py `build_model`), `keras_app:<Name>` backbones
included.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import ops

# The layers live in layers/invariance/ (registered by `import layers`), and check their options there.
from layers.invariance import CanonicalMarginal, Canonicalize, GroupOrbit, OrbitMean
from layers.invariance._options import check_invariant
from layers.invariance._transforms import _apply


def invariant(model: keras.Model, group: str = "C4", method: str = "orbit", name: str | None = None,
              input_shape: tuple | None = None, **options) -> keras.Model:
    """`model` (images -> logits [B, K]) made invariant to `group`; its weights are kept.

    `input_shape` (height, width, channels): the images' shape, needed where `model` does not define one (a
    subclassed model, a Sequential without an `Input`).

    `method`: `orbit` (the backbone called once per batch on the |G| stacked
    copies, logits averaged) or `canonicalize` (one pass on the canonical pose
    that a `Canonicalize` network picks; `options`: filters, kernel_size,
    prior_weight, downscale, relaxation, pose_weight, pose_jitter, network). Returns a functional model with the
    backbone's input and output shapes (float32 logits).
    """
    opts = check_invariant({"group": group, "method": method, **options})
    inputs = keras.Input(shape=_input_shape(model, input_shape), name="image")
    if method == "canonicalize":
        canon = Canonicalize(group, opts["filters"], opts["kernel_size"], opts["prior_weight"], opts["downscale"],
                             opts["relaxation"], opts["pose_weight"], pose_jitter=opts["pose_jitter"],
                             network=opts["network"], name=f"canonicalize_{group.lower()}")
        if opts["relaxation"] == "marginal":
            images, scores = canon(inputs)
            y = CanonicalMarginal(canon.order, dtype="float32", name="canonical_marginal")([model(images), scores])
        else:
            y = keras.layers.Activation("linear", dtype="float32", name="canonical_f32")(model(canon(inputs)))
    else:
        orbit = GroupOrbit(group, name=f"orbit_{group.lower()}")
        y = OrbitMean(orbit.size, dtype="float32", name="orbit_mean")(model(orbit(inputs)))
    return keras.Model(inputs, y, name=name or f"{model.name}_{group.lower()}_{method}")


def _input_shape(model, given) -> tuple:
    """The shape of one image that `model` takes: `given`, or the model's own (one error where it has none, or
    where `given` is no image shape or differs from the model's)."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):  # subclassed: no attribute; a Sequential not built: ValueError
        shape = None
    if given is not None:
        try:  # a tuple, a list, a NumPy array or a TensorShape of three sizes (None: any)
            dims = list(given)
        except TypeError:
            dims = []
        size = lambda d: isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_)) and d > 0  # noqa: E731
        if len(dims) != 3 or not all(d is None or size(d) for d in dims):
            raise ValueError(f"invariant: input_shape must be (height, width, channels) of positive integers "
                             f"(got {given!r})")
        given = tuple(None if d is None else int(d) for d in dims)
        if isinstance(shape, tuple) and len(shape) == 4 and any(
                a is not None and b is not None and a != b for a, b in zip(shape[1:], given)):
            raise ValueError(f"invariant: input_shape {given} differs from the {shape[1:]} that {model.name!r} takes")
        return given
    if shape is None:
        raise ValueError(f"invariant: {getattr(model, 'name', model)!r} ({type(model).__name__}) defines no input "
                         f"shape (a subclassed model, or a Sequential without an Input): pass input_shape=(height, "
                         f"width, channels)")
    if isinstance(shape, list) or not isinstance(shape, tuple) or len(shape) != 4:
        raise ValueError(f"invariant: {model.name!r} takes {shape}, where it needs one batch of images "
                         f"[B, H, W, C]")
    return shape[1:]


def canonicalizer(model: keras.Model) -> Canonicalize | None:
    """The `Canonicalize` layer of `model` (searched through nested models), or None."""
    for layer in model.layers:
        if isinstance(layer, Canonicalize):
            return layer
        if isinstance(layer, keras.Model):
            found = canonicalizer(layer)
            if found is not None:
                return found
    return None


def orientation_accuracy(model: keras.Model, images, batch_size: int = 256) -> float | None:
    """How often the canonicalizer of `model` names the turn (and mirror) of a transformed test image.

    Every image of `images` (float [N, H, W, C], upright as the data comes) is
    transformed by each of the group's elements g (k steps of 360/N degrees,
    after a mirror for D_N's second half); the figure is the fraction of
    transformed images whose predicted element is g, i.e. that are turned
    back to the data's own upright pose. None when the model has no
    canonicalizer.
    """
    canon = canonicalizer(model)
    if canon is None:
        return None
    hits, total = 0, 0
    x = ops.convert_to_tensor(images, dtype="float32")
    for k in range(canon.order):
        turned = _apply(x, canon._group, k)
        for i in range(0, int(x.shape[0]), batch_size):
            pred = ops.convert_to_numpy(canon.orientation(turned[i : i + batch_size]))
            hits += int((pred == k).sum())
            total += len(pred)
    return hits / max(total, 1)
