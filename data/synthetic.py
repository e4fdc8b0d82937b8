"""The embedded default dataset: MNIST-like 28x28 digits rendered from matplotlib's fonts.

Each image is a digit 0-9 drawn with one of the TrueType fonts that ship inside
matplotlib (DejaVu, STIX, Computer Modern), with a random stroke width, size
and slant, centred by its centre of mass in a 28x28 frame as MNIST is (a 20x20
box, small position jitter), and warped by a mild elastic distortion. Digits
stay upright: pose variation is the augmentation's job.

Generation is deterministic for a given seed and size, takes seconds, and is
cached as an `.npz` under the cache directory. No network is needed.

The test split is drawn in fonts that training never sees (`TEST_FONTS`, one
of each family's styles), so the default experiment's test accuracy measures
generalisation to new writing styles, not memorised glyphs.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# Bump when the rendering changes, so stale caches are not reused.
VERSION = 3
CLASS_NAMES = [str(d) for d in range(10)]

# Text fonts shipped with matplotlib that have all ten digits (symbol and
# display-size fonts are left out).
FONT_FILES = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
]

# Held out for the test split: one style of each family (sans, mono, serif, STIX,
# Computer Modern); training and validation draw from the other fifteen.
TEST_FONTS = (
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif-Italic.ttf",
    "STIXGeneralBol.ttf",
    "cmss10.ttf",
)

_CANVAS = 96  # render size before the MNIST-style 20x20 box fit
_FONT_PX = 64


def _font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


_FONT_CACHE: dict[str, ImageFont.FreeTypeFont] = {}


def _font(name: str) -> ImageFont.FreeTypeFont:
    if name not in _FONT_CACHE:
        _FONT_CACHE[name] = ImageFont.truetype(os.path.join(_font_dir(), name), _FONT_PX)
    return _FONT_CACHE[name]


def available_fonts() -> list[str]:
    d = _font_dir()
    return [f for f in FONT_FILES if os.path.isfile(os.path.join(d, f))]


def _render(digit: int, font: str, rng: np.random.Generator) -> np.ndarray:
    """One float32 [28, 28] image in [0, 1]."""
    img = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(img)
    stroke = int(rng.integers(0, 4))  # stroke width in render pixels (~0 to 1.3 px at 28x28)
    draw.text((_CANVAS // 2, _CANVAS // 2), str(digit), fill=255, font=_font(font), anchor="mm",
              stroke_width=stroke, stroke_fill=255)
    # Slant (shear about the centre) and a random aspect ratio.
    shear = rng.uniform(-0.3, 0.3)
    aspect = rng.uniform(0.8, 1.15)
    c = _CANVAS / 2
    # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
    a, b, e = 1.0 / aspect, shear, 1.0
    img = img.transform(img.size, Image.Transform.AFFINE, (a, b, c - a * c - b * c, 0, e, 0),
                        resample=Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    ys, xs = np.nonzero(arr > 8)
    if len(ys) == 0:  # cannot happen for the fonts above; keep the frame empty if it does
        return np.zeros((28, 28), np.float32)
    crop = img.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    # MNIST: fit into a 20x20 box keeping the aspect ratio; here the box size varies a little.
    box = rng.uniform(16.0, 20.0)
    w, h = crop.size
    scale = box / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(crop.resize((nw, nh), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    small = np.clip(small, 0.0, 1.0)
    # Centre of mass at the frame centre, plus a little jitter.
    frame = np.zeros((28, 28), np.float32)
    cy, cx = ndimage.center_of_mass(small)
    jy, jx = rng.uniform(-1.5, 1.5, size=2)
    top = int(round(14 + jy - cy))
    left = int(round(14 + jx - cx))
    top = min(max(top, 0), 28 - nh)
    left = min(max(left, 0), 28 - nw)
    frame[top : top + nh, left : left + nw] = small
    return frame


def _elastic(images: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    """A mild Simard elastic distortion of each [28, 28] image (bilinear)."""
    n, h, w = images.shape
    out = np.empty_like(images)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    fields = rng.uniform(-1, 1, size=(n, 2, h, w)).astype(np.float32)
    fields = ndimage.gaussian_filter(fields, sigma=(0, 0, sigma, sigma), mode="constant") * alpha
    for i in range(n):
        out[i] = ndimage.map_coordinates(images[i], [yy + fields[i, 0], xx + fields[i, 1]], order=1, mode="constant")
    return out


def generate(n: int, seed: int, elastic_alpha: float = 8.0, elastic_sigma: float = 4.0, split: str = "all"):
    """Generate `n` digits: (uint8 [n, 28, 28, 1], int64 [n]); balanced classes, shuffled.

    `split`: `train` draws from the fonts not in `TEST_FONTS`, `test` from
    `TEST_FONTS` only, `all` from every font.
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    rng = np.random.default_rng(seed)
    fonts = [f for f in available_fonts() if split == "all" or (f in TEST_FONTS) == (split == "test")]
    if not fonts:
        raise RuntimeError(f"no digit fonts found in {_font_dir()}")
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    font_ids = rng.integers(0, len(fonts), size=n)
    images = np.stack([_render(int(d), fonts[f], rng) for d, f in zip(labels, font_ids)])
    images = _elastic(images, rng, elastic_alpha, elastic_sigma)
    images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)[..., None]
    return images, labels


def load(train_size: int = 12000, test_size: int = 2000, seed: int = 0, cache_dir: str | None = ".cache"):
    """Train and test splits, generated once per (version, sizes, seed) and cached.

    Returns ((x_train, y_train), (x_test, y_test)) with uint8 images [N, 28, 28, 1].
    """
    key = hashlib.sha1(f"v{VERSION}-{train_size}-{test_size}-{seed}".encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"synthetic-{key}.npz") if cache_dir else None
    if path and os.path.isfile(path):
        try:
            with np.load(path) as f:
                return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is regenerated
    train_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
    x_train, y_train = generate(train_size, train_seed.generate_state(1)[0], split="train")
    x_test, y_test = generate(test_size, test_seed.generate_state(1)[0], split="test")
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez_compressed(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        os.replace(tmp, path)
    return (x_train, y_train), (x_test, y_test)
