"""Every PNG figure the jobs write, and `save` for each of them.

Training curves and the confusion matrix (train), the rotation, elastic and
equivariance curves and the learned filters (evaluate, compare), and the
augmentation preview grid (train, preview). matplotlib runs on its Agg
backend; nothing here needs a display.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from models.equivariance import family_of  # noqa: E402


MAX_CONFUSION_CLASSES = 100  # more classes: the confusion matrix is returned but not drawn


def save(fig, path: str) -> str:
    """Lay out `fig`, write it as a PNG at `path`, close it; return `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_curves(history: dict[str, list[float]], path: str) -> str:
    """Loss and accuracy per epoch (train and validation) as a two-panel PNG."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            values = history.get(key) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=key, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, path)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], path: str) -> np.ndarray:
    """Write the confusion matrix (rows: true class) as a PNG and return it.

    The figure is at most 16 inches square; above `MAX_CONFUSION_CLASSES`
    classes no file is written."""
    k = len(class_names)
    cm = np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)
    if k > MAX_CONFUSION_CLASSES:  # unreadable, and its memory grows with k^2: no figure
        return cm
    confusion_matrix_figure(cm, class_names, path)
    return cm


def confusion_matrix_figure(cm: np.ndarray, class_names: list[str], path: str,
                            title: str = "confusion matrix (test split)") -> str:
    """The PNG of confusion counts `cm` [K, K] (rows: true class), axes named by `class_names`."""
    k = len(class_names)
    side = min(0.5 * k + 2.5, 16.0)  # inches: at most 1600 px at 100 dpi, whatever k
    fig, ax = plt.subplots(figsize=(side, side - 0.5))
    ax.imshow(cm, cmap="Blues")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(k), class_names, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save(fig, path)


# ----------------------------------------------------------------------------- evaluation


def _accuracy_axes(fig, ax, path: str, xlabel: str, title: str) -> str:
    """Finish a test-accuracy-against-a-transform figure (y in [0, 1], grid, legend) and save it."""
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_rotation_curve(curves: dict[str, dict], path: str, title: str = "accuracy under input rotation") -> str:
    """One or more rotation curves (label -> {angle: accuracy}) as a PNG."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, curve in curves.items():
        angles = sorted(curve)
        ax.plot(angles + [360], [curve[a] for a in angles] + [curve[angles[0]]], "-o", markersize=3, label=label)
    ax.set_xticks(range(0, 361, 45))
    for a in (90, 180, 270):
        ax.axvline(a, color="grey", lw=0.5, alpha=0.5)
    ax.set_xlim(0, 360)
    return _accuracy_axes(fig, ax, path, "input rotation (degrees, counter-clockwise)", title)


def plot_scale_curve(curves: dict[str, dict], path: str, title: str = "accuracy under input rescaling") -> str:
    """One or more scale curves (label -> {factor: accuracy}) as a PNG, factors on a log axis."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, curve in curves.items():
        factors = sorted(curve)
        ax.plot(factors, [curve[f] for f in factors], "-o", markersize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(sorted({f for c in curves.values() for f in c}), [f"{f:g}x" for f in sorted({f for c in curves.values() for f in c})])
    ax.minorticks_off()
    return _accuracy_axes(fig, ax, path, "input scale factor (same canvas)", title)


def plot_elastic_curve(ev, path: str) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    alphas = list(ev.elastic)
    ax.plot(alphas, [ev.elastic[a] for a in alphas], "-o")
    ax.set_xlabel(f"elastic warp alpha (pixels; sigma {ev.elastic_sigma:g})")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy under elastic deformation")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_equivariance(errors, path: str, title: str = "equivariance error per layer") -> str:
    """Bars of relative equivariance errors per layer and group element (log axis).

    `errors`: layer name -> {element label ("rot90", "flip", "s0_s1"): error},
    one family's part of an `Evaluation.equivariance`. Layers may promise
    different elements (a C_N layer is measured at multiples of 360/N only);
    a missing one leaves a gap.
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(errors)
    labels = list(dict.fromkeys(k for errs in errors.values() for k in errs))
    width = 0.8 / max(1, len(labels))
    for j, k in enumerate(labels):
        vals = [max(errors[n][k], 1e-9) if k in errors[n] else np.nan for n in names]
        ax.bar(np.arange(len(names)) + j * width, vals, width, label=k)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(names)) + width * (len(labels) - 1) / 2, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("relative L2 error (central disk)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, path)


def _walk_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def first_filters(model):
    """(title, rows of (row label, [k, k, n] array)) of the model's first learned filters, or None.

    Harmonic convolution: its complex filters for the first input stream and
    channel, one row per output rotation order and part (real, imaginary).
    C_N group convolution: its dense kernel (mean over input channels),
    one row per orientation (at most 8), the first 8 filters.
    Other convolutions: the first 4-D kernel, averaged over input channels.
    """
    for layer in _walk_layers(model):
        family = getattr(family_of(layer), "name", None)
        if family == "harmonic":
            k = np.asarray(keras.ops.convert_to_numpy(layer.dense_kernel()), np.float32)
            in_orders, parts = layer.in_orders, layer.in_parts
            c_in = k.shape[2] // (len(in_orders) * parts)
            k = k.reshape(k.shape[:2] + (len(in_orders), parts, c_in, len(layer.orders), 2, -1))[:, :, 0, 0, 0]
            rows = []
            for qi, q in enumerate(layer.orders):
                m = q - in_orders[0]
                rows.append((f"m={m} re", k[:, :, qi, 0]))
                rows.append((f"m={m} im", k[:, :, qi, 1]))
            return f"{layer.name} ({type(layer).__name__}): filters per rotation order m", rows
        if family == "group" and layer.built:
            k = np.asarray(keras.ops.convert_to_numpy(layer.dense_kernel()), np.float32).mean(axis=2)  # [k, k, |G| F]
            n, group = int(layer.group_size), layer._group
            k = k.reshape(k.shape[:2] + (n, layer.filters))
            rows = [(("flip, " if group.mirrored(r) else "") + f"{group.degrees(r):g} deg", k[:, :, r, :8])
                    for r in range(min(n, 8))]
            return f"{layer.name} ({type(layer).__name__}): filters per orientation, mean over input channels", rows
        for w in getattr(layer, "weights", []):
            if len(w.shape) == 4 and "kernel" in w.path.split("/")[-1]:
                k = np.asarray(keras.ops.convert_to_numpy(w), np.float32).mean(axis=2)  # [k, k, out]
                n = min(k.shape[-1], 32)
                rows = [(f"{i}-{min(i + 8, n) - 1}", k[:, :, i : min(i + 8, n)]) for i in range(0, n, 8)]
                return f"{layer.name} ({type(layer).__name__}) {w.path.split('/')[-1]}, mean over input channels", rows
    return None


def plot_filters(model, path: str, max_cols: int = 8) -> str | None:
    found = first_filters(model)
    if found is None:
        return None
    title, rows = found
    cols = min(max_cols, max(r[1].shape[-1] for r in rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=(max(1.1 * cols + 0.8, 4.5), 1.1 * len(rows) + 0.6), squeeze=False)
    lim = max(float(np.abs(r[1]).max()) for r in rows) or 1.0
    for i, (label, kernels) in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < kernels.shape[-1]:
                ax.imshow(kernels[:, :, j], cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    return save(fig, path)


# ----------------------------------------------------------------------------- augmentation preview


def preview_grid(images, translation=None, rotation=None, elastic=None, seed: int = 0, n: int = 8,
                 title: str | None = None, scale=None, flip=None) -> np.ndarray:
    """A labelled grid of augmented samples (the rows of `preview_rows`) as a uint8 RGB
    array [height, width, 3], ready for `save_png` or `mlflow.log_image`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from data.augment import preview_rows

    rows = preview_rows(images, translation, rotation, elastic, seed=seed, n=n, scale=scale, flip=flip)
    x = rows[0][1]
    cols = len(x)
    # The row labels' column, in inches: about 0.07 inch per character at 8 points, at least the 1.2 it always had.
    label_in = max(1.2, 0.07 * max(len(line) for label, _ in rows for line in label.splitlines()) + 0.2)
    fig = Figure(figsize=(1.0 * cols + label_in + 0.1, 1.0 * len(rows) + (0.4 if title else 0.1)), dpi=100)
    FigureCanvasAgg(fig)
    for r, (label, batch) in enumerate(rows):
        for c in range(cols):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            img = batch[c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=label_in / (cols + label_in + 0.1), right=0.99, top=0.92 if title else 0.98, bottom=0.02,
                        wspace=0.05, hspace=0.05)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()




def save_png(rgb: np.ndarray, path: str) -> str:
    """Write a uint8 RGB array as a PNG (creating the folder); return the path."""
    import os

    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)
    return path
