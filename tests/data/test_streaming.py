"""Streaming sources (data/streaming.py): folder decode, channels, resize modes, splits, bad files, sharding."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.sources import DataSourceError, stratified_split
from data.streaming import BadImagesError, DataOptions, open_source, preprocess_image


def _save(path, arr, fmt):
    Image.fromarray(arr).save(path, format=fmt, **{"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {}))


def gif_of_frames(frames: int, width: int, height: int) -> bytes:
    """A GIF of `frames` image descriptors of width x height, each with a token of data (never to be decoded:
    giflib would unpack every frame, frames x width x height bytes)."""
    size = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    frame = b"\x2c" + bytes(4) + size + b"\x00" + b"\x02" + b"\x02\x4c\x01" + b"\x00"  # code size, data, end
    return b"GIF89a" + (1).to_bytes(2, "little") * 2 + b"\x00\x00\x00" + frame * frames + b"\x3b"


def animated_webp(size=(6, 5), frames=3, seed=0) -> bytes:
    """An animated WebP: TensorFlow's decoder corrupts the process's memory on one (see data/images.py)."""
    import io

    rng = np.random.default_rng(seed)
    ims = [Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)) for _ in range(frames)]
    out = io.BytesIO()
    ims[0].save(out, format="WEBP", save_all=True, append_images=ims[1:], lossless=True)
    return out.getvalue()


def make_folder(root, classes=("ant", "bee", "cat"), n=6, seed=0):
    """Mixed PNG/JPEG/BMP/GIF, gray and RGB, several sizes; smooth pictures so JPEG stays close."""
    rng = np.random.default_rng(seed)
    sizes = [(12, 16), (20, 14), (16, 16)]
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            h, w = sizes[i % 3]
            yy, xx = np.mgrid[0:h, 0:w]
            base = (yy * 255 / h * rng.uniform(0.3, 1) + xx * 255 / w * rng.uniform(0, 0.7)).clip(0, 255)
            if i % 2:  # RGB
                arr = np.stack([base, 255 - base, np.full_like(base, 40 * (i % 5))], -1).astype(np.uint8)
            else:
                arr = base.astype(np.uint8)
            fmt = ["PNG", "JPEG", "BMP", "GIF", "PNG", "JPEG"][i % 6]
            _save(root / c / f"{i}.{fmt.lower()}", arr, fmt)
    return root


def make_uniform_folder(root, classes=("a", "b"), n=8, size=(10, 10), mode="L", seed=1):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
            _save(root / c / f"{i}.png", arr, "PNG")
    return root


def _all(split, **kw):
    xs, ys = split.arrays(**kw)
    return xs, ys


def test_folder_of_mixed_files_shapes_channels_and_labels(tmp_path):
    root = make_folder(tmp_path / "imgs")
    with pytest.raises(DataSourceError, match="images differ in size.*data.image_size"):
        open_source(f"folder:{root}")
    s = open_source(f"folder:{root}", image_size=(8, 8), validation_fraction=0.2)
    assert s.class_names == ["ant", "bee", "cat"]
    assert s.image_shape == (8, 8, 3)  # some files are RGB: auto -> 3
    assert not s.train._stream.webp  # no WebP among the files: TensorFlow's decode alone
    assert sum(s.info.counts.values()) == 18 and s.info.counts == s.info.total_counts
    for split in (s.train, s.validation, s.test):
        ds = split.elements()
        assert ds.element_spec[0].shape == (8, 8, 3) and ds.element_spec[0].dtype == tf.uint8
        assert ds.element_spec[1].dtype == tf.int64
        x, y = _all(split)
        assert x.shape == (split.count, 8, 8, 3)
        np.testing.assert_array_equal(y, split.labels())
    assert set(s.test.labels()) == {0, 1, 2}  # stratified carve: every class in every split
    gray = open_source(f"folder:{root}", image_size=(8, 8), channels=1)
    x, _ = _all(gray.train)
    assert gray.image_shape == (8, 8, 1) and x.shape[-1] == 1


def test_gray_only_folder_auto_channels_is_one_and_3_tiles(tmp_path):
    root = make_uniform_folder(tmp_path / "g")
    s = open_source(f"folder:{root}")
    assert s.image_shape == (10, 10, 1)
    rgb = open_source(f"folder:{root}", channels=3)
    x1, _ = _all(s.test)
    x3, _ = _all(rgb.test)
    np.testing.assert_array_equal(x3, np.repeat(x1, 3, axis=-1))


def test_images_already_at_the_target_size_are_read_as_stored(tmp_path):
    """The fast path (no per-image preprocessing when every header says the target size) gives
    exactly the decoded files, in evaluation and in training, and stops at a size that differs."""
    root = make_uniform_folder(tmp_path / "u", mode="RGB", n=10)
    s = open_source(f"folder:{root}", image_size=(10, 10), seed=0)
    assert s.train._stream.native_size == (10, 10)
    x, y = s.test.arrays()
    ref = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in s.test.paths])
    np.testing.assert_array_equal(x, ref)
    train = [(xb, yb) for xb, yb in s.train.elements(training=True, seed=3).as_numpy_iterator()]
    stored = {p: np.asarray(Image.open(p).convert("RGB")) for p in s.train.paths}
    assert sorted(a.tobytes() for a, _ in train) == sorted(a.tobytes() for a in stored.values())
    smaller = open_source(f"folder:{root}", image_size=(6, 6), seed=0)
    assert smaller.test.arrays()[0].shape == (len(ref), 6, 6, 3)


def test_rgb_to_gray_matches_pil_luma_within_one(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ours = preprocess_image(tf.constant(arr), None, channels=1).numpy()[..., 0]
    pil = np.asarray(Image.fromarray(arr).convert("L"))
    assert np.abs(ours.astype(int) - pil).max() <= 1


def test_resize_modes_on_a_known_picture():
    img = np.zeros((20, 40, 1), np.uint8)
    img[:, :10] = 255  # white left quarter
    img[:, 30:] = 128  # gray right quarter
    t = tf.constant(img)
    stretch = preprocess_image(t, (10, 10), "stretch", 1).numpy()
    assert stretch.shape == (10, 10, 1) and stretch[:, 0].min() == 255 and stretch[:, -1].max() == 128
    crop = preprocess_image(t, (10, 10), "crop", 1).numpy()  # 20x40 -> 10x20, center 10x10: no edge band
    assert crop.shape == (10, 10, 1) and crop[:, 1:-1].max() == 0 and crop.max() < 64  # antialias: edge bleed
    pad = preprocess_image(t, (10, 10), "pad", 1).numpy()  # 20x40 -> 5x10, padded rows above and below
    assert pad.shape == (10, 10, 1)
    assert pad[:2].max() == 0 and pad[-3:].max() == 0 and pad[2:7, 0].min() >= 250 and abs(int(pad[2:7, -1].max()) - 128) <= 2
    same = preprocess_image(t, (20, 40), "stretch", 1).numpy()
    np.testing.assert_array_equal(same, img)  # already at size: untouched


def test_random_crop_in_training_center_crop_in_evaluation(tmp_path):
    root = tmp_path / "wide"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            arr = np.tile(np.arange(32, dtype=np.uint8)[None, :] * 8, (8, 1))  # a horizontal ramp
            _save(root / c / f"{i}.png", arr, "PNG")
    opts = DataOptions(image_size=(8, 8), resize="crop", random_crop=True, seed=3, validation_fraction=0.25)
    s = open_source(f"folder:{root}", opts)
    evald = np.stack([x for x, _ in s.train.elements().as_numpy_iterator()])
    np.testing.assert_array_equal(evald[0, 0, :, 0], np.arange(12, 20) * 8)  # the center
    trained = np.stack([x for x, _ in s.train.elements(training=True).as_numpy_iterator()])
    assert trained.shape == evald.shape
    starts = {int(x[0, 0, 0]) // 8 for x in trained}
    assert len(starts) > 1  # different places


def _carved_reference(root, seed, fraction):
    """The documented carve of a folder without train/ and test/, by sorted file list: test held out with
    `seed + 1`, then validation with `seed`, each stratified; the images as PIL decodes them."""
    import os

    classes = sorted(d for d in os.listdir(root) if (root / d).is_dir())
    files = [(str(root / c / f), i) for i, c in enumerate(classes) for f in sorted(os.listdir(root / c))]
    paths, labels = np.array([p for p, _ in files], dtype=object), np.array([y for _, y in files])
    rest, test = stratified_split(paths, labels, fraction, seed + 1)
    train, validation = stratified_split(*rest, fraction, seed)
    return {name: (np.stack([np.asarray(Image.open(p).convert("RGB")) for p in ps]), ys)
            for name, (ps, ys) in (("train", train), ("validation", validation), ("test", test))}


def test_carved_splits_are_the_seeded_stratified_carve_of_the_file_list(tmp_path):
    """Same files in the same splits as the carve the docs promise (and data.sources' in-memory loader,
    before it was removed, made), same pixels (PNG: exact)."""
    root = make_uniform_folder(tmp_path / "u", classes=("a", "b", "c"), n=10, mode="RGB")
    for seed in (0, 5):
        ref = _carved_reference(root, seed, 0.2)
        s = open_source(f"folder:{root}", seed=seed, validation_fraction=0.2)
        for name in ("train", "validation", "test"):
            x, y = _all(s.split(name))
            rx, ry = ref[name]
            np.testing.assert_array_equal(y, ry)
            np.testing.assert_array_equal(x, rx)


def test_folder_with_train_and_test_of_different_sizes_needs_an_image_size(tmp_path):
    make_uniform_folder(tmp_path / "d" / "train", classes=("cat", "dog"), n=6, mode="RGB")
    make_uniform_folder(tmp_path / "d" / "test", classes=("cat", "dog"), n=2, size=(14, 14), mode="RGB")
    with pytest.raises(DataSourceError, match="images differ in size.*set data.image_size"):
        open_source(f"folder:{tmp_path / 'd'}")
    s = open_source(f"folder:{tmp_path / 'd'}", image_size=[8, 9])
    assert s.image_shape == (8, 9, 3) and s.test.count == 4 and s.class_names == ["cat", "dog"]
    assert _all(s.test)[0].shape == (4, 8, 9, 3)


def test_folder_errors(tmp_path):
    with pytest.raises(DataSourceError, match=r"no such directory \(give your folder: "
                                              r"ARGS=\"data.source=folder:/path/to/images\"\)"):
        open_source(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(DataSourceError, match="expected one subfolder per class"):
        open_source(f"folder:{tmp_path / 'flat'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="no image files in its class subfolders"):
        open_source(f"folder:{tmp_path / 'empty'}")
    make_uniform_folder(tmp_path / "bad", n=4)
    (tmp_path / "bad" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BadImagesError, match="broken.png"):
        open_source(f"folder:{tmp_path / 'bad'}")


def test_training_pipeline_is_seeded_and_a_permutation(tmp_path):
    from data.pipeline import make_stream_dataset

    root = make_uniform_folder(tmp_path / "u", n=12)
    for cache in ("none", "memory"):
        s = open_source(f"folder:{root}", cache=cache)
        ref_x, ref_y = _all(s.train)

        def epoch(seed):
            batches = list(make_stream_dataset(s.train, 5, training=True, seed=seed).as_numpy_iterator())
            return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

        a, b, c = epoch(1), epoch(1), epoch(2)
        np.testing.assert_array_equal(a[0], b[0])
        assert not np.array_equal(a[1], c[1]) or not np.array_equal(a[0], c[0])
        # the same multiset of (image, label) as the ordered split, as float in [0, 1]
        key = lambda x, y: sorted(zip(y.tolist(), [im.tobytes() for im in x]))  # noqa: E731
        assert key(np.rint(a[0] * 255).astype(np.uint8), a[1]) == key(ref_x, ref_y)


def test_cache_choice(tmp_path):
    root = make_uniform_folder(tmp_path / "u")
    assert open_source(f"folder:{root}").info.cache == "memory"  # 16 tiny images: under the budget
    assert open_source(f"folder:{root}", cache_budget_mb=0).info.cache == "none"
    s = open_source(f"folder:{root}", cache="disk", cache_dir=str(tmp_path / "c"))
    x1, _ = _all(s.test)
    assert list((tmp_path / "c" / "stream").glob("*/test.index"))
    x2, _ = _all(s.test)  # from the cache file
    np.testing.assert_array_equal(x1, x2)
    with pytest.raises(DataSourceError, match=r"data.cache: must be one of"):
        DataOptions(cache="ram")
    with pytest.raises(DataSourceError, match=r"data.resize"):
        DataOptions(resize="squash")


def test_a_dangling_symlink_is_named_as_unreadable_and_not_skipped_without_a_word(tmp_path):
    root = make_uniform_folder(tmp_path / "u")  # 2 classes of 8
    os.symlink(tmp_path / "gone.png", root / "a" / "broken.png")
    os.symlink(root / "b" / "0.png", root / "a" / "linked.png")  # a link that resolves is an image like any other
    with pytest.raises(BadImagesError, match=r"1 unreadable image file\(s\): \S*broken.png .*No such file"):
        open_source(f"folder:{root}")
    s = open_source(f"folder:{root}", skip_bad_images=True)
    assert sum(s.split(n).count for n in ("train", "validation", "test")) == 17


def test_an_empty_validation_folder_is_one_error_saying_how_validation_is_made_without_it(tmp_path):
    """It trained without a validation metric, with a warning about missing classes only."""
    from data.options import DataSourceError as Refused
    from pipelines.experiment import check_splits

    root = tmp_path / "u"
    make_uniform_folder(root / "train")
    make_uniform_folder(root / "test", seed=2)
    (root / "valid" / "a").mkdir(parents=True)
    splits = open_source(f"folder:{root}")
    assert splits.validation.total_count == 0
    with pytest.raises(Refused, match=r"the validation split has no images \(an empty validation folder\? without "
                                      r"one, validation is carved from the training images"):
        check_splits(splits)
    (root / "valid" / "a").rmdir()
    (root / "valid").rmdir()
    carved = open_source(f"folder:{root}")
    check_splits(carved)
    assert carved.validation.total_count > 0


def test_a_disk_cache_feeds_training_mixed_classes_and_every_image_once_per_epoch(tmp_path):
    """A disk cache written in the file list's (class-sorted) order and shuffled only within a small
    `shuffle_buffer` gave batches of one class; training writes it in a seeded permutation."""
    root = make_uniform_folder(tmp_path / "u", classes=("a", "b", "c"), n=40)
    s = open_source(f"folder:{root}", cache="disk", cache_dir=str(tmp_path / "c"), shuffle_buffer=4)
    train = s.train
    ref_x, ref_y = _all(train)
    assert list(ref_y) == sorted(ref_y)  # the file list: one class after the other
    epochs = []
    for _ in range(2):  # the second epoch reads the cache file
        xs, ys = zip(*((x.numpy(), int(y)) for x, y in train.elements(training=True)))
        epochs.append((np.stack(xs), np.array(ys)))
    for xs, ys in epochs:
        assert sorted(im.tobytes() for im in xs) == sorted(im.tobytes() for im in ref_x)  # each image once
        assert len(set(ys[:12].tolist())) == 3  # the first batch's worth holds every class
        assert abs(np.corrcoef(np.arange(len(ys)), ys)[0, 1]) < 0.5
    x_eval, y_eval = _all(train)  # evaluation still reads the split's order
    np.testing.assert_array_equal(y_eval, ref_y)
    np.testing.assert_array_equal(x_eval, ref_x)


@pytest.mark.parametrize("n_proc", [2, 3])
def test_shards_are_disjoint_and_complete(tmp_path, n_proc):
    root = make_uniform_folder(tmp_path / "u", classes=("a", "b", "c"), n=7)
    whole = open_source(f"folder:{root}")
    for name in ("train", "validation", "test"):
        ref = [im.tobytes() for im in _all(whole.split(name))[0]]
        parts = []
        for pid in range(n_proc):
            s = open_source(f"folder:{root}", num_processes=n_proc, process_id=pid)
            assert s.info.total_counts[name] == len(ref)
            xs = [im.tobytes() for im in _all(s.split(name))[0]]
            assert len(xs) == s.split(name).count
            parts.append(xs)
        flat = [x for p in parts for x in p]
        assert sorted(flat) == sorted(ref)  # complete, and disjoint (no duplicates: the images are random)
        assert len(set(flat)) == len(flat)
    with pytest.raises(DataSourceError, match="process_id"):
        DataOptions(num_processes=2, process_id=2)


def test_bad_files_are_named_before_training_or_skipped(tmp_path):
    root = make_uniform_folder(tmp_path / "bad", n=6)
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "fake.jpg").write_bytes(b"GIF? no" * 10)
    jpeg = tmp_path / "x.jpg"
    _save(jpeg, np.zeros((8, 8), np.uint8), "JPEG")
    (root / "b" / "cut.jpg").write_bytes(jpeg.read_bytes()[:-40])
    (root / "b" / "stub.jpg").write_bytes(jpeg.read_bytes()[:100])  # cut inside its header
    (root / "a" / "moving.webp").write_bytes(animated_webp())
    _save(tmp_path / "x.webp", np.zeros((8, 8, 3), np.uint8), "WEBP")
    (root / "b" / "cut.webp").write_bytes((tmp_path / "x.webp").read_bytes()[:-10])
    with pytest.raises(BadImagesError) as e:
        open_source(f"folder:{root}")
    msg = str(e.value)
    for name in ("truncated.png", "notes.txt", "fake.jpg", "cut.jpg", "cut.webp"):
        assert name in msg
    assert "moving.webp (animated WebP (not read" in msg and "truncated WebP" in msg
    assert "stub.jpg (header not readable (OSError: Truncated File Read))" in msg, msg  # not "(unreadable (..."
    assert "7 unreadable" in msg and "skip_bad_images" in msg
    assert isinstance(e.value, ValueError) and len(e.value.bad) == 7
    s = open_source(f"folder:{root}", skip_bad_images=True)
    assert len(s.info.bad_files) == 7 and "skipped 7 unreadable" in s.info.summary()
    assert s.info.params()["data.bad_images"] == 7
    assert sum(s.info.counts.values()) == 12
    for split in (s.train, s.validation, s.test):
        assert len(_all(split)[1]) == split.count  # every listed file decodes


def test_the_header_pass_sees_the_size_the_decoder_makes_and_refuses_sizes_no_decoder_reads(tmp_path):
    """A GIF whose frame is smaller than the screen its header declares decodes to the frame's size in TensorFlow
    (its canvas is the largest frame): the header pass says so, so training reads it as stored, where it ended in
    a shape error naming no file. A BMP of negative width and a PNG whose header claims 16 x 4e9 pixels are
    named as unreadable before training."""
    root = make_uniform_folder(tmp_path / "u", n=4, size=(8, 8), mode="RGB")
    _save(tmp_path / "x.gif", np.full((8, 8, 3), 200, np.uint8), "GIF")
    gif = bytearray((tmp_path / "x.gif").read_bytes())
    gif[6:10] = (16).to_bytes(2, "little") * 2  # a 16x16 logical screen
    at = gif.index(b"\x2c", 13 + (3 * 2 ** ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0))
    gif[at + 1:at + 5] = (4).to_bytes(2, "little") * 2  # the 8x8 frame at (4, 4)
    (root / "a" / "framed.gif").write_bytes(bytes(gif))
    for check in ("header", "full"):
        s = open_source(f"folder:{root}", check_images=check)
        assert s.image_shape == (8, 8, 3) and sum(s.info.counts.values()) == 9
        for split in (s.train, s.validation, s.test):
            assert len(_all(split)[1]) == split.count
    _save(tmp_path / "x.bmp", np.zeros((4, 4, 3), np.uint8), "BMP")
    bmp = bytearray((tmp_path / "x.bmp").read_bytes())
    bmp[18:22] = (-4).to_bytes(4, "little", signed=True)
    (root / "b" / "mirror.bmp").write_bytes(bytes(bmp))
    png = bytearray((root / "a" / "0.png").read_bytes())
    png[16:24] = (4110417936).to_bytes(4, "big") + (16).to_bytes(4, "big")  # the CRC is not read by the header pass
    (root / "b" / "huge.png").write_bytes(bytes(png))
    (root / "b" / "frames.gif").write_bytes(gif_of_frames(10, 13000, 13000))  # each frame under the limit
    for check in ("header", "full"):
        with pytest.raises(BadImagesError) as e:
            open_source(f"folder:{root}", check_images=check)
        assert "mirror.bmp (a BMP tf.io.decode_bmp cannot read (width -4))" in str(e.value), e.value
        assert "huge.png (too large (4110417936x16 pixels" in str(e.value), e.value
        assert "frames.gif (too large (13000x13000 pixels, 1690000000 in all its frames" in str(e.value), e.value


def _crossed_gif(side: int) -> bytes:
    """A GIF of a side x 1 frame and a 1 x side one: a few hundred bytes."""
    import io

    def one(w, h):
        out = io.BytesIO()
        Image.fromarray(np.zeros((h, w), np.uint8), "L").convert("P").save(out, "GIF")
        return out.getvalue()

    wide, tall = one(side, 1), one(1, side)
    pos = 13 + 3 * 2 ** ((tall[10] & 7) + 1)
    while tall[pos] == 0x21:  # extensions before the image descriptor
        pos += 2
        while tall[pos]:
            pos += tall[pos] + 1
        pos += 1
    return wide[:-1] + tall[pos:-1] + b"\x3b"


def test_a_gifs_canvas_is_its_widest_frame_by_its_tallest_and_counts_so(tmp_path):
    """TensorFlow decodes a GIF onto a canvas of its widest frame's width by its tallest frame's height: a 230-byte
    GIF of a 3000x1 and a 1x3000 frame is 3000x3000 (9e6 pixels, where its frames' areas add up to 6,000), and one
    of 20000 is 4e8 pixels, over the limit, in 500 bytes. A BMP of negative width holds no pixels to count."""
    from data.images import header_check, max_pixels, refusal

    gif = _crossed_gif(3000)
    assert header_check(gif) == (None, 9_000_000)
    assert tuple(tf.io.decode_image(gif, expand_animations=False).shape) == (3000, 3000, 3)
    assert refusal(_crossed_gif(20000)) == f"too large (20000x20000 pixels; at most {max_pixels()} pixels are read)"
    _save(tmp_path / "x.bmp", np.zeros((4, 4, 3), np.uint8), "BMP")
    bmp = bytearray((tmp_path / "x.bmp").read_bytes())
    bmp[18:22] = (-2**31).to_bytes(4, "little", signed=True)
    assert header_check(bytes(bmp)) == ("a BMP tf.io.decode_bmp cannot read (width -2147483648)", 0)
    _save(tmp_path / "x.png", np.zeros((4, 4), np.uint8), "PNG")
    png = bytearray((tmp_path / "x.png").read_bytes())
    png[16:20] = bytes(4)  # IHDR width 0
    assert header_check(bytes(png)) == ("empty image (0x4)", 0)


def test_arrays_sources_through_the_same_api(tmp_path):
    from data import synthetic
    from data.options import SyntheticSettings

    s = open_source("synthetic", synthetic=SyntheticSettings(100, 20), cache_dir=str(tmp_path))
    (xtr, ytr), _ = synthetic.load(100, 20, seed=0, cache_dir=str(tmp_path))
    _, (rx, ry) = stratified_split(xtr, ytr, 0.1, seed=0)  # validation carved from train with data.seed
    assert s.image_shape == (28, 28, 1) and s.class_names == synthetic.CLASS_NAMES
    x, y = _all(s.validation)
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)
    big = open_source("synthetic", synthetic=SyntheticSettings(100, 20), cache_dir=str(tmp_path),
                      image_size=(32, 32), channels=3)
    assert big.test.elements().element_spec[0].shape == (32, 32, 3)


def test_eval_subset_reads_the_seeded_subset(tmp_path):
    root = make_uniform_folder(tmp_path / "u", n=10)
    s = open_source(f"folder:{root}", validation_fraction=0.3)
    x, y = _all(s.test)
    assert len(y) == 6
    sx, sy = s.test.arrays(max_images=3, seed=4)
    idx = np.sort(np.random.default_rng(4).choice(len(y), 3, replace=False))
    np.testing.assert_array_equal(sx, x[idx])
    np.testing.assert_array_equal(sy, y[idx])


@pytest.mark.parametrize("channels", [1, 3])
def test_every_format_decodes_like_pil(tmp_path, channels):
    """PNG (gray, RGB, RGBA), BMP, GIF, JPEG (gray, RGB), WebP (RGB, RGBA; lossless) against PIL's decode.

    JPEG within 6 levels: TensorFlow's decoder uses the fast integer IDCT, PIL the accurate one."""
    rng = np.random.default_rng(0)
    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8), 2, 0), 2, 1)[:6, :5]
    files = {"a/gray.png": (rgb[..., 0], "PNG"), "a/rgb.png": (rgb, "PNG"),
             "a/rgba.png": (np.concatenate([rgb, rgb[..., :1]], -1), "PNG"), "a/rgb.bmp": (rgb, "BMP"),
             "b/rgb.gif": (smooth, "GIF"), "b/gray.jpg": (smooth[..., 1], "JPEG"), "b/rgb.jpg": (smooth, "JPEG"),
             "a/rgb.webp": (rgb, "WEBP"), "b/rgba.webp": (np.concatenate([rgb, rgb[..., 1:2]], -1), "WEBP")}
    for name, (arr, fmt) in files.items():
        _save(root / name, arr, fmt)
    s = open_source(f"folder:{root}", channels=channels, validation_fraction=0.2)
    assert s.train._stream.webp  # so each decode checks for an animated WebP and converts a WebP's channels
    for split in (s.train, s.validation, s.test):
        x, _ = _all(split)
        for got, path in zip(x, split.paths):
            with Image.open(path) as im:
                ref = np.asarray(im.convert("RGB"))
            if channels == 1:
                ref = np.rint(ref.astype(float) @ [0.2989, 0.587, 0.114])[..., None]
            tol = 6 if path.endswith(".jpg") else (1 if channels == 1 else 0)
            assert np.abs(got.astype(int) - ref).max() <= tol, path


def test_data_after_the_end_marker_is_fine_and_full_check_finds_corruption_inside(tmp_path):
    root = make_uniform_folder(tmp_path / "u", n=4, mode="RGB")
    jpeg = tmp_path / "x.jpg"
    _save(jpeg, np.zeros((10, 10, 3), np.uint8), "JPEG")
    (root / "a" / "trailing.jpg").write_bytes(jpeg.read_bytes() + b"appended metadata" * 8)
    png = bytearray((root / "b" / "0.png").read_bytes())
    png[len(png) // 2] ^= 0xFF  # a flipped byte inside the pixel data: the header and the end are intact
    (root / "b" / "flipped.png").write_bytes(bytes(png))
    s = open_source(f"folder:{root}")  # the header pass accepts both (and TensorFlow decodes the first)
    assert sum(s.info.counts.values()) == 10
    with pytest.raises(BadImagesError, match=r"1 unreadable .*flipped\.png \(corrupt PNG"):
        open_source(f"folder:{root}", check_images="full")


def test_skip_bad_images_names_a_file_whose_pixels_are_corrupt_and_trains_without_it(tmp_path):
    """A flipped byte in a PNG's pixel data passes the header pass; `skip_bad_images` decodes every file, so the
    file is named among the skipped ones and left out of the splits (not dropped silently in training)."""
    root = make_uniform_folder(tmp_path / "u", n=6, mode="RGB")
    png = bytearray((root / "b" / "0.png").read_bytes())
    png[len(png) // 2] ^= 0xFF
    (root / "b" / "flipped.png").write_bytes(bytes(png))
    s = open_source(f"folder:{root}", skip_bad_images=True)
    assert [os.path.basename(p) for p, _ in s.info.bad_files] == ["flipped.png"]
    assert "skipped 1 unreadable file(s)" in s.info.summary() and sum(s.info.counts.values()) == 12
    paths = [p for split in (s.train, s.validation, s.test) for p in split.paths]
    assert len(paths) == 12 and not any(p.endswith("flipped.png") for p in paths)


def test_train_and_val_folders_without_test_carve_the_test_split_from_train(tmp_path):
    make_uniform_folder(tmp_path / "train", n=10)
    make_uniform_folder(tmp_path / "val", n=3)
    s = open_source(f"folder:{tmp_path}")
    assert s.class_names == ["a", "b"]  # not the classes "train" and "val"
    assert (s.train.count, s.validation.count, s.test.count) == (18, 6, 2)
    assert all("/val/" in p for p in s.validation.paths) and all("/train/" in p for p in s.test.paths)


def test_a_class_only_in_test_is_refused_and_a_class_missing_from_test_is_named(tmp_path, capsys):
    make_uniform_folder(tmp_path / "d" / "train", classes=("a", "b", "c"), n=6)
    make_uniform_folder(tmp_path / "d" / "test", classes=("a", "b", "river"), n=2)
    with pytest.raises(DataSourceError, match=r"d/test: class folder\(s\) river are not in train/"):
        open_source(f"folder:{tmp_path / 'd'}")
    make_uniform_folder(tmp_path / "e" / "train", classes=("a", "b", "c"), n=6)
    make_uniform_folder(tmp_path / "e" / "test", classes=("a", "b"), n=2)
    s = open_source(f"folder:{tmp_path / 'e'}")
    assert s.class_names == ["a", "b", "c"] and s.test.count == 4
    assert "the test split has no image of class(es) c" in capsys.readouterr().out


def test_a_class_folder_without_images_is_refused_and_a_tiny_class_is_named(tmp_path, capsys):
    root = make_uniform_folder(tmp_path / "u", classes=("a", "b", "c"), n=6)
    (root / "empty").mkdir()
    with pytest.raises(DataSourceError, match=r"class folder\(s\) 'empty' hold no readable image file; add images"):
        open_source(f"folder:{root}")
    (root / "empty" / "2024").mkdir()
    make_uniform_folder(root / "empty" / "2024", classes=("x",), n=2)
    with pytest.raises(DataSourceError, match="files in nested subfolders are not read"):
        open_source(f"folder:{root}")
    for p in (root / "empty" / "2024" / "x").iterdir():
        p.rename(root / "empty" / p.name)  # two images: one carved into test, none left for validation
    s = open_source(f"folder:{root}")
    assert s.class_names == ["a", "b", "c", "empty"]
    assert "the validation split has no image of class(es) empty" in capsys.readouterr().out


def test_an_empty_class_folder_is_named_even_when_the_others_are_too_few_to_carve_splits_from(tmp_path, capsys):
    """Two images of one class and an empty one: the empty folder is what is wrong, not the split sizes."""
    root = make_uniform_folder(tmp_path / "tiny", classes=("a",), n=2)
    (root / "b c").mkdir()
    with pytest.raises(DataSourceError, match=r"class folder\(s\) 'b c' hold no readable image file"):
        open_source(f"folder:{root}")
    for split in ("train", "test"):  # and in train/ with test/, where nothing is carved from train/ but validation
        make_uniform_folder(tmp_path / "split" / split, classes=("a", "b"), n=2)
    (tmp_path / "split" / "train" / "c").mkdir()
    with pytest.raises(DataSourceError, match=r"split/train: class folder\(s\) 'c' hold no readable image file"):
        open_source(f"folder:{tmp_path / 'split'}")


@pytest.mark.parametrize("vname", ["validation", "valid", "val"])
def test_a_validation_folder_of_any_usual_name_is_read_and_other_top_level_folders_are_named(tmp_path, vname, capsys):
    for split, n in (("train", 8), (vname, 4), ("test", 6), ("extras", 3)):
        make_uniform_folder(tmp_path / split, n=n)
    splits = open_source(f"folder:{tmp_path}", DataOptions())
    assert (splits.train.count, splits.validation.count, splits.test.count) == (16, 8, 12)  # nothing carved
    out = capsys.readouterr().out
    assert "ignored top-level folder(s) extras" in out and f"the splits read are train, test, {vname}" in out
    assert "ignored file" not in out


def test_a_class_whose_images_all_go_to_carved_splits_is_refused(tmp_path):
    root = make_uniform_folder(tmp_path / "f", classes=("a",), n=6)
    make_uniform_folder(root, classes=("b",), n=1)
    with pytest.raises(DataSourceError, match=r"class\(es\) 'b' have no image left for training once the test and "
                                              r"validation split\(s\) are carved \(data.validation_fraction=0.6\)"):
        open_source(f"folder:{root}", validation_fraction=0.6)


def test_files_beside_the_class_folders_are_named_not_read(tmp_path, capsys):
    make_uniform_folder(tmp_path, n=6)
    (tmp_path / "README.txt").write_text("my photos")
    (tmp_path / "cover.png").write_bytes((tmp_path / "a" / "0.png").read_bytes())
    (tmp_path / ".DS_Store").write_bytes(b"")
    (tmp_path / "Thumbs.db").write_bytes(b"")
    splits = open_source(f"folder:{tmp_path}", DataOptions())
    assert splits.class_names == ["a", "b"]
    assert splits.train.count + splits.validation.count + splits.test.count == 12  # the class folders' images only
    out = capsys.readouterr().out
    assert "ignored file(s) README.txt, cover.png: images are read from the class subfolders" in out, out


def test_files_beside_the_class_folders_of_a_split_are_named_not_read(tmp_path, capsys):
    for split in ("train", "test"):
        make_uniform_folder(tmp_path / split, n=4)
    (tmp_path / "train" / "notes.txt").write_text("shot in May")
    (tmp_path / "test" / "extra.png").write_bytes((tmp_path / "test" / "a" / "0.png").read_bytes())
    splits = open_source(f"folder:{tmp_path}", DataOptions())
    assert splits.train.count + splits.validation.count + splits.test.count == 16
    out = capsys.readouterr().out
    assert f"folder:{tmp_path / 'train'}: ignored file(s) notes.txt: images are read from its class subfolders" in out
    assert f"folder:{tmp_path / 'test'}: ignored file(s) extra.png" in out, out


def test_the_carving_hint_is_given_only_for_a_carved_split(tmp_path, capsys):
    make_uniform_folder(tmp_path / "train", classes=("a", "b", "c"), n=6)
    make_uniform_folder(tmp_path / "test", classes=("a", "b"), n=2)
    open_source(f"folder:{tmp_path}", DataOptions())
    out = capsys.readouterr().out
    assert "the test split has no image of class(es) c: their test accuracy is not measured\n" in out, out


def test_every_split_runs_without_autotuning(tmp_path):
    from data.pipeline import make_stream_datasets

    s = open_source(f"folder:{make_folder(tmp_path / 'd')}", image_size=(8, 8), validation_fraction=0.2)
    train, val, test = make_stream_datasets(s, 4)
    assert [ds.options().autotune.enabled for ds in (train, val, test)] == [False, False, False]
    assert sum(int(b[0].shape[0]) for b in val) == s.validation.count  # every validation image, once


def test_what_operating_systems_leave_beside_the_images_is_skipped_and_any_other_file_is_an_error(tmp_path):
    root = make_uniform_folder(tmp_path / "u", n=6)
    (root / "a" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 a Windows thumbnail cache")
    (root / "b" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "b" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "__MACOSX" / "a").mkdir(parents=True)  # as unzipping an archive made on a Mac leaves it
    (root / "__MACOSX" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    s = open_source(f"folder:{root}")
    assert s.class_names == ["a", "b"] and sum(s.info.counts.values()) == 12 and not s.info.bad_files
    (root / "a" / "notes.txt").write_text("taken on 2024-05-01")
    with pytest.raises(BadImagesError, match="notes.txt"):
        open_source(f"folder:{root}")
