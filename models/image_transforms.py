"""NumPy transforms of image batches and feature maps shared by the equivariance measurements.

`models/equivariance.py` (every family's equivariance error) and
`pipelines/invariance.py` (which re-exports these for the evaluation's curves)
use the same resampling and the same disks, so their figures compare;
`models/` may not import `pipelines/`, hence they live here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def disk_mask(h: int, w: int, radius: float) -> np.ndarray:
    """Boolean [h, w]: pixel centres within `radius` of the image centre."""
    r, c = np.meshgrid(np.arange(h) - (h - 1) / 2.0, np.arange(w) - (w - 1) / 2.0, indexing="ij")
    return r**2 + c**2 <= radius**2


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate `[N, H, W, ...]` (any trailing axes) about the centre by `degrees`, counter-clockwise as displayed.

    Multiples of 90 degrees on square images are `np.rot90` (exact, no
    interpolation); other angles are bilinear with zero fill outside the image
    (`scipy.ndimage.rotate(order=1, mode='grid-constant')`: pixels next to the
    frame fade into the fill; it agrees with `np.rot90` at 90 degrees).
    """
    images = np.asarray(images)
    k, rest = divmod(float(degrees), 90.0)
    square = images.shape[1] == images.shape[2]
    if rest == 0.0 and (square or int(k) % 2 == 0):
        return np.ascontiguousarray(np.rot90(images, int(k) % 4, axes=(1, 2)))
    out = ndimage.rotate(images, float(degrees), axes=(1, 2), reshape=False, order=1,
                         mode="grid-constant", cval=0.0, prefilter=False)
    return out.astype(images.dtype, copy=False)
