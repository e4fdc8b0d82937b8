"""PNG figures that the jobs log: training curves and the confusion matrix, and `save` for every figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    """Write the confusion matrix (rows: true class) as a PNG and return it."""
    k = len(class_names)
    cm = np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)
    fig, ax = plt.subplots(figsize=(0.5 * k + 2.5, 0.5 * k + 2))
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
    ax.set_title("confusion matrix (test split)")
    save(fig, path)
    return cm
