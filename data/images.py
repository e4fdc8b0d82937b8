"""Image files and image tensors of the streaming sources (data/streaming.py).

Header pass (`scan_images`, before anything is decoded, in parallel threads):
each file's size and channels from its header bytes (PNG IHDR, JPEG frame
header, a GIF's image descriptors, BMP info header; PIL for anything else) and a
look at its last bytes, which finds empty, truncated and non-image files (and
BMPs that `tf.io.decode_bmp` cannot read, animated WebPs, and sizes over PIL's
decompression-bomb limit) without decoding them (`full`: decode every file once
too, and take its size from TensorFlow's decode).

Graph ops (run inside `tf.data` maps and the exported signatures): `decode_image`
(`tf.io.decode_image`: PNG, JPEG, BMP, GIF first frame, still WebP; an animated
WebP is refused before the decoder sees it), `convert_channels` and
`preprocess_image`.

Preprocessing (the same for every source): channels (`auto`: 1 when every
image is grayscale, else 3; or 1, 3), then `image_size` with `resize`:
`stretch` (bilinear, antialiased), `crop` (scale to cover, keeping the aspect
ratio, then a center crop; a random crop on the training split when
`random_crop=True`), `pad` (scale to fit, then zero padding around the
center). Images already at `image_size` pass unchanged.
"""

from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf

from data.options import RESIZE_MODES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# TensorFlow 2.21's `tf.io.decode_image(..., expand_animations=False)` writes past its buffer on an animated WebP
# (measured: glibc aborts the process with "corrupted double-linked list" or "free(): invalid next size" a few
# allocations later, a still WebP decodes correctly). So every decode of bytes that may be a WebP checks the header
# first: one such image sent to `:classify` would otherwise take the server down, and one in a dataset the training
# process.
ANIMATED_WEBP = "animated WebP (not read: the TensorFlow decoder corrupts memory on animations; save one frame as PNG)"

__all__ = ["scan_images", "decode_image", "convert_channels", "preprocess_image"]


# ----------------------------------------------------------------------------- header pass

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"GIF8":  # GIF87a, GIF89a: TensorFlow's decoder checks these four bytes
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _animated_webp(head: bytes) -> bool:
    """Whether the first 21 bytes are a WebP's extended header (VP8X) with its animation flag set."""
    return head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) > 20 and bool(head[20] & 0x02)


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _gif_canvas(data: bytes):
    """(height, width, pixels) of the image `tf.io.decode_image` makes of a GIF, or None if its blocks do not
    parse; `pixels` is the larger of the canvas's area (what TensorFlow allocates) and the sum of the frames'
    areas (what giflib unpacks: every frame, even for the first alone). A 500-byte GIF of a 20000x1 frame and a
    1x20000 one decodes to a canvas of 20000x20000.

    TensorFlow's canvas is the largest frame's width by the largest frame's height, whatever the logical screen
    in the GIF's header says (a first frame smaller than the screen, or a screen that lies, decodes to the
    frame's size): so every image descriptor is read, skipping the color tables and the data sub-blocks."""

    def table(packed: int) -> int:
        return 3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0

    def sub_blocks(pos: int) -> int:
        while pos < len(data) and data[pos]:
            pos += data[pos] + 1
        return pos + 1

    pos, height, width, pixels = 13 + table(data[10]) if len(data) > 10 else len(data), 0, 0, 0
    while pos < len(data) and data[pos] != 0x3B:  # the trailer
        if data[pos] == 0x21:  # an extension: its label, then sub-blocks
            pos = sub_blocks(pos + 2)
        elif data[pos] == 0x2C and pos + 10 <= len(data):  # an image descriptor
            w, h = int.from_bytes(data[pos + 5:pos + 7], "little"), int.from_bytes(data[pos + 7:pos + 9], "little")
            width, height, pixels = max(width, w), max(height, h), pixels + w * h
            pos = sub_blocks(pos + 10 + table(data[pos + 9]) + 1)  # + the LZW minimum code size
        else:
            return None
    return (height, width, max(pixels, height * width)) if height and width else None


def _header_shape(f, kind: str, head: bytes):
    """(height, width, is_gray, pixels decoded) from the header bytes, without PIL (about 10x faster); None if
    unsure. The pixels are height x width but for a GIF (`_gif_canvas`)."""
    if kind == "gif":
        f.seek(0)
        canvas = _gif_canvas(f.read())
        return None if canvas is None else (canvas[0], canvas[1], False, canvas[2])
    shape = _still_shape(f, kind, head)
    return None if shape is None else (*shape, shape[0] * shape[1])


def _still_shape(f, kind: str, head: bytes):
    """(height, width, is_gray) of a PNG, BMP or JPEG from its header bytes; None if unsure."""
    if kind == "png" and len(head) >= 26 and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big"), head[25] in (0, 4)
    if kind == "bmp" and len(head) >= 30:
        w = int.from_bytes(head[18:22], "little", signed=True)
        h = int.from_bytes(head[22:26], "little", signed=True)
        return abs(h), w, int.from_bytes(head[28:30], "little") == 8  # a negative height: rows stored top-down
    if kind == "jpeg":
        f.seek(2)
        for _ in range(256):  # segments before the frame header (APPn, DQT, ...)
            marker = f.read(4)
            if len(marker) < 4 or marker[0] != 0xFF:
                return None
            code, length = marker[1], int.from_bytes(marker[2:4], "big")
            if code in _JPEG_SOF:
                sof = f.read(6)
                if len(sof) < 6:
                    return None
                return int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big"), sof[5] == 1
            if code == 0xFF or length < 2:
                return None
            f.seek(length - 2, 1)
    return None


def op_error_reason(e) -> str:
    """A TensorFlow op error's reason on one line, without its function-node and `[Op:...]` markers."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:.*", "", e.message).strip()
    return text.splitlines()[0] if text else type(e).__name__


def max_pixels() -> int:
    """The most pixels an image may have to be read here: PIL's decompression-bomb limit (2 x
    `PIL.Image.MAX_IMAGE_PIXELS`, 178,956,970), where PIL refuses to open an image."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS


NOT_AN_IMAGE = "not a PNG, JPEG, BMP, GIF or WebP file"


def _too_large(w: int, h: int, pixels: int) -> str | None:
    if pixels <= max_pixels():
        return None
    frames = f", {pixels} in all its frames" if pixels != w * h else ""
    return f"too large ({w}x{h} pixels{frames}; at most {max_pixels()} pixels are read)"


def refusal(blob: bytes) -> str | None:
    """Why an encoded image is not to be decoded, by its header alone, as the header pass would refuse its file:
    not a format training reads (`NOT_AN_IMAGE`: TensorFlow also decodes JPEG XL), an animated WebP
    (`ANIMATED_WEBP`), or more pixels than `max_pixels`; None to hand it to the decoder (which names what else
    is wrong with it). The server's check in front of the signatures that decode images."""
    return header_check(blob)[0]


def header_check(blob: bytes) -> tuple[str | None, int]:
    """`(refusal(blob), pixels)`: the pixels its header says the decoder unpacks (for a GIF, its frames together
    or its canvas, whichever is more: `_gif_canvas`), 0 where the header does not say (the decoder then names
    what is wrong) or the image is refused."""
    from PIL import Image

    kind = _sniff(blob[:32])
    if kind is None:
        return NOT_AN_IMAGE, 0
    if _animated_webp(blob[:21]):
        return ANIMATED_WEBP, 0
    try:
        shape = _header_shape(io.BytesIO(blob), kind, blob[:32])
        if shape is None:
            with Image.open(io.BytesIO(blob)) as im:  # reads the header only
                w, h = im.size
                shape = (h, w, False, h * w)
    except Image.DecompressionBombError as e:
        return f"too large ({str(e).split(' exceeds')[0].lower()}; at most {max_pixels()} pixels are read)", 0
    except Exception:  # noqa: BLE001 - PIL raises many types for broken headers: the decoder's reason then
        return None, 0
    h, w, _, pixels = shape
    why = _bad_size(kind, w, h) or _too_large(w, h, pixels)
    return why, 0 if why else pixels


def _bad_size(kind: str, w: int, h: int) -> str | None:
    """Why no decoder makes an image of `w` x `h` from the header's size (a BMP's width is signed)."""
    if kind == "bmp" and w < 1:
        return f"a BMP tf.io.decode_bmp cannot read (width {w})"
    return f"empty image ({w}x{h})" if w < 1 or h < 1 else None


def tf_decode(encoded):
    """`((height, width), None)` of the image `decode_image` (the pipeline's decoder) makes of the encoded image
    (bytes, or a string tensor), or `(None, why)` when it refuses it."""
    if _animated_webp(encoded[:21] if isinstance(encoded, bytes) else tf.strings.substr(encoded, 0, 21).numpy()):
        return None, ANIMATED_WEBP
    try:
        shape = tf.io.decode_image(encoded, expand_animations=False).shape
    except tf.errors.OpError as e:
        return None, op_error_reason(e)
    return (int(shape[0]), int(shape[1])), None


def tf_decode_error(encoded) -> str | None:
    """Why `decode_image` refuses the encoded image (bytes, or a string tensor), or None when it decodes it."""
    return tf_decode(encoded)[1]


def _inspect(path: str, full: bool = False):
    """(height, width, is_gray, format) of an image file (format: "png", "jpeg", "gif", "bmp" or "webp"), or the
    reason it is unreadable.

    Reads the header (size and channels from the PNG IHDR, JPEG frame header,
    GIF image descriptors (`_gif_canvas`) or BMP info header; PIL for anything else) and the last bytes:
    a PNG must end with its IEND chunk, a JPEG with its EOI marker, a GIF with
    its trailer, and a BMP must be as long as its header says and be of a kind
    `tf.io.decode_bmp` reads. That finds truncated files without decoding them.
    A file whose end looks wrong (data appended after the end marker is legal)
    is decoded in full before it is called truncated; `full` decodes every file
    (finds corruption in the middle too, by PIL and by TensorFlow's decoder, at the cost of two decodes per file).
    """
    from PIL import Image

    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(32)
            kind = _sniff(head)
            if kind is None:
                return NOT_AN_IMAGE
            if _animated_webp(head):
                return ANIMATED_WEBP
            f.seek(max(0, size - 32))
            tail = f.read()
            shape = _header_shape(f, kind, head)
        suspect = None
        if kind == "png" and b"IEND" not in tail:
            suspect = "truncated PNG (no IEND chunk at the end)"
        elif kind == "jpeg" and b"\xff\xd9" not in tail:
            suspect = "truncated JPEG (no end-of-image marker)"
        elif kind == "gif" and b";" not in tail[-4:]:
            suspect = "truncated GIF (no trailer)"
        elif kind == "webp" and int.from_bytes(head[4:8], "little") + 8 > size:
            return "truncated WebP (shorter than its header says)"
        elif kind == "bmp":
            if len(head) >= 6 and int.from_bytes(head[2:6], "little") > size:
                return "truncated BMP (shorter than its header says)"
            if len(head) >= 34:
                bpp = int.from_bytes(head[28:30], "little")
                compression = int.from_bytes(head[30:34], "little")
                if bpp not in (8, 24, 32) or compression not in (0, 3):
                    return f"a BMP tf.io.decode_bmp cannot read ({bpp} bits per pixel, compression {compression})"
            if len(head) >= 26:
                why = _bad_size(kind, int.from_bytes(head[18:22], "little", signed=True), 1)
                if why:
                    return why
        why = shape and _too_large(shape[1], shape[0], shape[3])
        if why:  # before anything decodes it
            return why
        if shape is not None and not suspect and not full:
            h, w, gray, _ = shape
        else:
            with Image.open(path) as im:  # over PIL's own limit: DecompressionBombError, named below
                w, h = im.size
                gray = im.mode in _GRAY_MODES
                if suspect or full:
                    try:
                        im.load()
                    except Exception as e:
                        why = str(e).splitlines()[0] if str(e) else type(e).__name__
                        return suspect or f"corrupt {kind.upper()} ({why})"
            if kind == "gif" and shape is not None:
                h, w = shape[:2]  # TensorFlow's canvas, not the screen PIL reports
            if full:  # and by the decoder training uses: PIL reads some JPEGs that TensorFlow refuses
                decoded, why = tf_decode(tf.io.read_file(path))
                if why:
                    return f"corrupt {kind.upper()} (TensorFlow: {why})"
                h, w = decoded  # what training will see, where a header (or PIL) says otherwise
        return _bad_size(kind, w, h) or _too_large(w, h, h * w) or (int(h), int(w), bool(gray), kind)
    except Exception as e:  # PIL raises many types for broken headers
        return f"header not readable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def scan_images(paths, workers: int = 16, full: bool = False):
    """The header pass over `paths`, in parallel threads: a list of `(h, w, is_gray, format)` or reason strings.

    `full`: decode every file too (see `_inspect`)."""
    paths = list(paths)
    if not paths:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        return list(pool.map(lambda p: _inspect(p, full), paths))


# ----------------------------------------------------------------------------- graph ops


def _webp_header(encoded):
    """Graph op: (is a WebP, is an animated WebP) of an encoded image (a string scalar), from its first 21 bytes."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, 21), b"\0" * 21]), 0, 21)
    webp = tf.equal(tf.strings.substr(head, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(head, 8, 4), b"WEBP")
    flags = tf.io.decode_raw(head, tf.uint8)[20]
    animated = webp & tf.equal(tf.strings.substr(head, 12, 4), b"VP8X") & tf.not_equal(
        tf.bitwise.bitwise_and(flags, 2), 0)
    return webp, animated


def decode_image(encoded, channels: int = 0, webp: bool = True):
    """Encoded PNG/JPEG/BMP/GIF/WebP bytes (a string scalar) -> uint8 [H, W, C] (`channels` 0: as stored; 3: gray
    replicated, alpha dropped; GIF: its first frame). An animated WebP fails with InvalidArgumentError
    (`ANIMATED_WEBP`) before the decoder reads it.

    `webp=False` where no encoded image can be a WebP (the header pass saw every file of a folder source): the
    decode is then TensorFlow's alone. The checks that a WebP needs cost about as much as decoding a 64x64
    JPEG (measured in a tf.data map, in turns: 10,400 images/s without them, 6,300 with the animation check,
    4,600 with the channels' branch too), so training from files it has seen does not pay them; what the
    exported signatures decode (any request's bytes) always does."""

    def decode(c):
        return tf.io.decode_image(encoded, channels=c, dtype=tf.uint8, expand_animations=False)

    if not webp:
        image = decode(channels)
    else:
        is_webp, animated = _webp_header(encoded)
        with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(animated), [ANIMATED_WEBP])]):
            if channels in (1, 3):  # TensorFlow's WebP decoder gives only the stored channels: convert them after
                image = tf.cond(is_webp, lambda: convert_channels(decode(0), channels), lambda: decode(channels))
            else:
                image = decode(channels)
    image.set_shape([None, None, channels or None])
    return image


def _to_uint8(x):
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def convert_channels(image, channels: int):
    """uint8 [H, W, C] with C in 1-4 -> [H, W, channels] (gray = ITU-R 601 luma, alpha dropped)."""
    static = image.shape[-1]
    if static is not None:  # known when traced (arrays): choose in Python
        if static == channels:
            return image
        if channels == 1:
            return image[..., :1] if static < 3 else _to_uint8(tf.image.rgb_to_grayscale(
                tf.cast(image[..., :3], tf.float32)))
        return image[..., :3] if static >= 3 else tf.tile(image[..., :1], [1, 1, 3])
    c = tf.shape(image)[-1]
    if channels == 1:
        def gray():
            return _to_uint8(tf.image.rgb_to_grayscale(tf.cast(image[..., :3], tf.float32)))

        out = tf.cond(c >= 3, gray, lambda: image[..., :1])
    else:
        out = tf.cond(c >= 3, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
    out.set_shape([None, None, channels])
    return out


def _cover_size(h, w, th, tw):
    """The smallest size with the aspect ratio of (h, w) that covers (th, tw)."""
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    scale = tf.maximum(th / hf, tw / wf)
    nh = tf.maximum(tf.cast(tf.math.round(hf * scale), tf.int32), th)
    nw = tf.maximum(tf.cast(tf.math.round(wf * scale), tf.int32), tw)
    return nh, nw


def _resize_to(image, nh, nw):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    return tf.cond(tf.logical_and(tf.equal(h, nh), tf.equal(w, nw)), lambda: image,
                   lambda: _to_uint8(tf.image.resize(image, tf.stack([nh, nw]), antialias=True)))


def preprocess_image(image, image_size, resize: str = "stretch", channels: int = 3, *, cover_only: bool = False):
    """Channels, then `image_size` by `resize` (deterministic: center crop and pad).

    `cover_only` (resize `crop`): only scale to cover `image_size`; the crop is
    left to `random_crop` (training).
    """
    image = convert_channels(image, channels)
    if image_size is None:
        return image
    th, tw = int(image_size[0]), int(image_size[1])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    if resize == "stretch":
        out = _resize_to(image, th, tw)
    elif resize == "crop":
        nh, nw = _cover_size(h, w, th, tw)
        out = _resize_to(image, nh, nw)
        if cover_only:
            out.set_shape([None, None, channels])
            return out
        out = tf.image.crop_to_bounding_box(out, (nh - th) // 2, (nw - tw) // 2, th, tw)
    elif resize == "pad":
        hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
        scale = tf.minimum(th / hf, tw / wf)
        nh = tf.clip_by_value(tf.cast(tf.math.round(hf * scale), tf.int32), 1, th)
        nw = tf.clip_by_value(tf.cast(tf.math.round(wf * scale), tf.int32), 1, tw)
        out = tf.image.pad_to_bounding_box(_resize_to(image, nh, nw), (th - nh) // 2, (tw - nw) // 2, th, tw)
    else:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    out.set_shape([th, tw, channels])
    return out
