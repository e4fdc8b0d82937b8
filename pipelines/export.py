"""Export of versioned SavedModels in TensorFlow Serving's layout.

`<exports>/<name>/<version>/saved_model.pb`, versions 1, 2, ..., a number never
given twice (`next_version`: one deleted to roll back is not reused). The signature
`serving_default` takes raw images `image: uint8 [batch, H, W, C]` and returns
`probabilities: float32 [batch, classes]`, `class_id: int64 [batch]` and
`class_name: string [batch]`; `image_bytes` takes encoded image files and
`classify` (TF Serving's Classify) `tf.train.Example`s (pipelines/signatures.py).

The exported graph is the *inference model*: raw pixel values -> /255 ->
trained model -> softmax. The same inference model is what MLflow logs, so
both ways of serving give the same predictions. Augmentation never enters it:
it lives in the training pipeline only.

Writes are atomic: a version is written and verified under a hidden temporary
name in the same directory and renamed into place, so a server that scans for
numeric version directories never sees a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid

import keras
import numpy as np
import tensorflow as tf


from pipelines.errors import UserError
from pipelines.serving.model_config import version_number
from pipelines.serving.responses import _first_line
from pipelines.serving.savedmodel import load_savedmodel
from pipelines.signatures import write_savedmodel  # noqa: F401 - the export's signatures; tests patch it here

STALE_TMP_AGE_S = 3600.0  # a temporary without a live writer's pid is removed after this long


class ExportMismatchError(UserError, RuntimeError):
    """The reloaded SavedModel does not reproduce the in-memory model (one `error:` line, exit 2)."""


def compare_outputs(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> dict:
    """How far reloaded probabilities `got` are from `expected` ([N, classes]).

    They match when every |got - expected| <= atol + rtol * |expected| (the
    `np.allclose` rule) and the predicted classes agree wherever the model's
    top two probabilities are further apart than that tolerance (a near-tie
    may flip under float32 rounding: recomputing with another batch size
    moves float32 probabilities by ~1e-5 routinely).
    """
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    diff = np.abs(got - expected)
    bound = atol + rtol * np.abs(expected)
    top2 = np.sort(expected, axis=-1)[:, -2:] if expected.shape[-1] > 1 else np.zeros((len(expected), 2))
    decided = (top2[:, 1] - top2[:, 0]) > 2 * (atol + rtol * top2[:, 1])
    agree = np.argmax(got, -1) == np.argmax(expected, -1)
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_excess": float((diff - bound).max()) if diff.size else 0.0,
        "class_agreement": float(agree.mean()) if agree.size else 1.0,
        "ok": bool(np.all(diff <= bound) and np.all(agree | ~decided)),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


HIGHEST_FILE = ".highest_version"  # in <exports>/<name>/: the highest version number ever published there


@contextlib.contextmanager
def _publishing(base: str):
    """One publisher of `base` at a time on this host: an exclusive lock on `base/HIGHEST_FILE`, which records the
    highest number published there, so that the number chosen, the rename and the record go together. Yields
    `record(version)`. Where the file system has no locks (NFS mounted nolock, some FUSE mounts), it goes on
    unlocked: the rename still never takes a number twice, only the record may then lag another publisher's."""
    fd = os.open(os.path.join(base, HIGHEST_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+") as fh:  # not "a+": its writes would all go to the end
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError) as e:
            print(f"Warning: {base}: no file lock here ({e}); publishing unlocked")

        def record(version: int) -> None:  # in place (others wait on this file's lock); a number only grows
            fh.seek(0)
            fh.write(f"{version}\n")
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())

        yield record  # the lock goes with the file's closing


def next_version(base: str) -> int:
    """The number the next version of `base` gets: above every version folder there and above every number ever
    published there (`HIGHEST_FILE`): a version deleted to roll back does not give its number to the next model,
    which a client pinned to that number would then get without a word (TF Serving knows versions only by number)."""
    try:
        with open(os.path.join(base, HIGHEST_FILE)) as fh:
            recorded = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        recorded = 0
    version = max((version_dirs(base) or [0])[-1], recorded) + 1
    if version >= 2**63:  # TF Serving reads versions as int64, and this server too (model_config.version_number)
        raise UserError(f"{base}: no version number is left under it ({version - 1} is taken; TF Serving's "
                        "versions are int64): publish under another export.name")
    return version


def clean_stale_temporaries(base: str) -> list[str]:
    """Remove `.tmp-*` folders left by an export that died (its pid is gone, or, without a pid, an hour old)."""
    removed = []
    if not os.path.isdir(base):
        return removed
    for d in os.listdir(base):
        if not d.startswith(".tmp-"):
            continue
        path = os.path.join(base, d)
        parts = d.split("-")
        if len(parts) >= 3 and parts[1].isdigit():
            stale = not _pid_alive(int(parts[1]))
        else:
            try:
                stale = time.time() - os.path.getmtime(path) > STALE_TMP_AGE_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def published_versions(base: str) -> list[tuple[int, str]]:
    """The versions under `base` that hold a SavedModel (`saved_model.pb`), newest first, with their folders. A
    folder without one (an empty `3/` from a failed copy) is no version a server serves, so the guards below read
    the newest version that has one, not that folder."""
    out = []
    for v, folder in reversed(_version_folders(base)):
        path = os.path.join(base, folder)
        if any(os.path.isfile(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
            out.append((v, path))
    return out


def served_accuracy(exports_dir: str, name: str, batches, image_shape, class_names) -> tuple[int, float] | None:
    """(version, accuracy) of the newest published version of `name` that loads (the one a server serves),
    measured now on `batches` (uint8 images [N, H, W, C], int64 labels): the new model's own test split, so that
    the two figures are of the same images whatever changed in the data since that version was published. None
    where there is no such version, or it takes another input shape or answers other classes (nothing to compare;
    `export.allow_new_signature` publishes such a model)."""
    from pipelines.errors import UserError

    for version, path in published_versions(os.path.join(exports_dir, name)):
        old = version_signature(path)
        try:
            predict = savedmodel_predictor(path)
        except UserError:
            old = None
        if old is None:
            continue  # not loadable: no server serves it
        new = signature_of(image_shape, class_names)
        if old.get("input_shape") != new["input_shape"] or \
                old.get("class_names", new["class_names"]) != new["class_names"]:
            return None
        correct = total = 0
        for x, y in batches:
            correct += int(np.sum(np.argmax(predict(x)["probabilities"], axis=-1) == y))
            total += len(y)
        return (version, correct / total) if total else None
    return None


SIGNATURE_FILE = "signature.json"  # in a version's assets.extra/: its input shape and class names


def signature_of(image_shape, class_names) -> dict:
    """What clients of a model depend on: the image shape it takes and the classes it answers."""
    return {"input_shape": [int(d) for d in image_shape], "class_names": [str(c) for c in class_names]}


def published_signature(exports_dir: str, name: str) -> tuple[int, dict] | None:
    """(version, `signature_of` it) of the newest published version of `name` that can be read, or None. A
    version written before signature.json existed is read from its SavedModel (input shape only; its classes
    unknown); one that does not load (a damaged `saved_model.pb`) is passed over for the one before it."""
    for version, path in published_versions(os.path.join(exports_dir, name)):
        found = version_signature(path)
        if found is not None:
            return version, found
    return None


def version_signature(path: str) -> dict | None:
    """The `signature_of` the version at `path`: its signature.json, else (a version from before it) its SavedModel's
    input shape; None where neither reads (not a readable SavedModel: no server serves it)."""
    try:
        with open(os.path.join(path, "assets.extra", SIGNATURE_FILE)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        pass
    try:
        spec = load_savedmodel(path).signatures["serving_default"].structured_input_signature[1]["image"]
        return {"input_shape": [int(d) for d in spec.shape[1:]]}
    except (OSError, KeyError, ValueError, TypeError, tf.errors.OpError):
        return None


def signature_conflict(exports_dir: str, name: str, image_shape, class_names) -> str | None:
    """Why a model of `image_shape` and `class_names` must not become the next version of `name`
    (the newest version takes another input shape or answers other classes), or None."""
    found = published_signature(exports_dir, name)
    if found is None:
        return None
    version, old = found
    new = signature_of(image_shape, class_names)
    what = []
    if old.get("input_shape") != new["input_shape"]:
        what.append(f"input shape {tuple(new['input_shape'])} vs version {version}'s {tuple(old['input_shape'])}")
    if "class_names" in old and old["class_names"] != new["class_names"]:
        what.append(f"classes {_short(new['class_names'])} vs version {version}'s {_short(old['class_names'])}")
    if not what:
        return None
    return (f"{exports_dir}/{name}: this model would not be a compatible new version of {name!r}: "
            f"{'; '.join(what)}. Give the run its own name (name=...), or set export.allow_new_signature=true "
            "to publish it anyway (clients of the old version then break)")


def _short(names: list) -> str:
    return "[" + ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "") + "]"


def chance_floor(num_classes: int) -> float:
    """The default publishing floor: twice chance (2 / K), capped halfway between chance and perfect
    ((1 + 1 / K) / 2) so that two- and three-class models can reach it (0.75 and 0.67)."""
    return min(2.0 / num_classes, (1.0 + 1.0 / num_classes) / 2.0)


def publish_refusal(export_cfg, test_accuracy: float, num_classes: int,
                    served: tuple[int, float] | None = None) -> str | None:
    """Why the export guard refuses to publish a model of `test_accuracy`, or None to publish.

    `export.min_test_accuracy`: an absolute floor; unset, the floor is
    `chance_floor(num_classes)` (a model no better than chance is never
    published by default; `export.min_test_accuracy: 0` publishes anything).
    `export.max_accuracy_drop`: `served` = (version, its accuracy on the same
    test images, `served_accuracy`) minus this margin is a floor too.
    """
    floor = export_cfg.min_test_accuracy
    if floor is None:
        chance = chance_floor(num_classes)
        if test_accuracy < chance:
            return (f"test accuracy {test_accuracy:.4f} is not clearly above chance for {num_classes} classes "
                    f"(at least {chance:.4f} by default): train longer (train.epochs=...) or on more images per "
                    "class; export.min_test_accuracy=... lowers the floor")
    elif test_accuracy < floor:
        return f"test accuracy {test_accuracy:.4f} < export.min_test_accuracy {floor:g}"
    if export_cfg.max_accuracy_drop is not None and served is not None:
        version, accuracy = served
        if test_accuracy < accuracy - export_cfg.max_accuracy_drop:
            return (f"test accuracy {test_accuracy:.4f} is more than export.max_accuracy_drop "
                    f"{export_cfg.max_accuracy_drop:g} below version {version}'s {accuracy:.4f} on the same test "
                    "images")
    return None


def inference_model(model: keras.Model) -> keras.Model:
    """Wrap a model (float [0, 1] images -> logits) as raw pixels [0, 255] -> probabilities."""
    inputs = keras.Input(shape=model.input_shape[1:], dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = model(x, training=False)
    outputs = keras.layers.Softmax(dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{model.name}_inference")


def _version_folders(base: str) -> list[tuple[int, str]]:
    """(number, folder name) of the numeric version folders under `base`, ascending; `08` is version 8, as the
    server reads it (pipelines/serving/servables.py)."""
    if not os.path.isdir(base):
        return []
    named = ((version_number(d), d) for d in os.listdir(base))  # a name over int64 is no version (TF Serving)
    return sorted((v, d) for v, d in named if v is not None and os.path.isdir(os.path.join(base, d)))


def version_dirs(base: str) -> list[int]:
    """The numeric version directories under `base`, ascending."""
    return [v for v, _ in _version_folders(base)]


def savedmodel_predictor(path: str, batch_size: int = 256):
    """`predict(uint8 images [N, H, W, C]) -> {output name: array}` of the SavedModel's `serving_default`.

    The one SavedModel predictor of the project: export verification, `make
    evaluate` on an export and the tests use it. A folder that is not a
    loadable SavedModel with that signature, or whose signature fails to run here (a JAX export lowered for
    another device: `pipelines.signatures.JAX_PLATFORMS`), is a `UserError`.
    """
    try:
        fn = load_savedmodel(path).signatures["serving_default"]
    except (OSError, KeyError, ValueError, TypeError, tf.errors.OpError) as e:  # OpError: its variables are missing
        raise UserError(f"{path}: not a loadable SavedModel with a serving_default signature "
                        f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list] = {}
        for i in range(0, len(images), batch_size):
            try:
                out = fn(image=tf.constant(images[i : i + batch_size], tf.uint8))
            except tf.errors.OpError as e:
                raise UserError(f"{path}: its serving_default fails on this machine: {_first_line(e)}") from None
            for k, v in out.items():
                parts.setdefault(k, []).append(v.numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    return predict


def predict_savedmodel(path: str, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run `serving_default` of the SavedModel at `path` on uint8 `images`."""
    return savedmodel_predictor(path, batch_size)(images)


def export_model(
    model: keras.Model,
    exports_dir: str,
    name: str,
    check_images: np.ndarray | None = None,
    tolerance: float = 1e-4,
    extra_assets: dict[str, str] | None = None,
    rtol: float = 1e-3,
    report: dict | None = None,
    class_names: list | None = None,
    resize: str = "stretch",
    plain: bool = False,
) -> str:
    """Export `model` as the next version of `exports_dir/name`; return the version's path.

    If `check_images` (uint8 [N, H, W, C]) is given, the written SavedModel is
    reloaded and its probabilities compared with the in-memory inference model
    (`compare_outputs`: absolute `tolerance` plus relative `rtol`, and class
    agreement); a mismatch raises `ExportMismatchError` and nothing is
    published. `report`, a dict, receives the comparison's figures.
    `class_names` (class id -> name) are what `class_name` and `classify` answer;
    `resize` (the run's `data.resize`) is how the encoded-image signatures bring
    an image to the model's size. `plain` (`export.plain`) exports the model
    converted to stock Keras layers (`models.to_plain`: faster at inference),
    checked against the unconverted model; a layer without a stock form is a
    `UserError`.
    Temporaries of exports that died (`kill -9`) are removed first. `extra_assets` (file name -> text) are written to the version's
    `assets.extra/`, which TF Serving ignores; training stores the resolved
    experiment config there as `experiment.yaml`.
    """
    if any(d is None for d in model.input_shape[1:]):  # the signatures resize encoded images to that size
        raise UserError(f"export: the model takes images of any size ({tuple(model.input_shape)}); its SavedModel "
                        f"serves one size: build it for a fixed size (data.image_size) to export it")
    base = os.path.join(exports_dir, name)
    os.makedirs(base, exist_ok=True)
    clean_stale_temporaries(base)
    infer = reference = inference_model(model)
    if plain:
        from models.plain import to_plain

        try:
            infer = inference_model(to_plain(model))
        except ValueError as e:
            raise UserError(f"export.plain: {e}") from None
    tmp = os.path.join(base, f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        write_savedmodel(infer, tmp, class_names, resize)
        for fname, text in (extra_assets or {}).items():
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            with open(os.path.join(tmp, "assets.extra", fname), "w") as fh:
                fh.write(text)
        if check_images is not None and len(check_images):
            expected = reference.predict(check_images.astype("float32"), batch_size=256, verbose=0)
            got = predict_savedmodel(tmp, check_images)["probabilities"]
            figures = compare_outputs(got, expected, tolerance, rtol)
            if report is not None:
                report.update(figures)
            if not figures["ok"]:
                raise ExportMismatchError(
                    f"reloaded SavedModel differs from the model: max |dp| {figures['max_abs_diff']:.3g} "
                    f"(allowed {tolerance:g} + {rtol:g} x p, export.tolerance/export.rtol), classes agree on "
                    f"{100 * figures['class_agreement']:.2f}%; not published"
                )
        with _publishing(base) as record:
            while True:  # a writer on another host may take a version number at the same time
                version = next_version(base)
                final = os.path.join(base, str(version))
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not os.path.exists(final):
                        raise
                    continue
                record(version)
                return final
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
