"""The README is a front door that works on a fresh clone, and the docs/ pages hold together.

- README.md names nothing outside the repository (no `../shared`, no absolute path other
  than the `/path/to/...` placeholders a user fills in);
- every repository path named in its code and links exists;
- every `make <target>` it (or a docs page) names is a target of the Makefile;
- every relative link in README.md and docs/ resolves, anchors included;
- the example images it sends to `make serve` decode, through the server's own request
  parser, to the default model's input shape, and the command in docs/examples/README.md
  makes them again.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PLACEHOLDER = "/path/to/"  # absolute paths a user replaces with their own (their images, their exports)

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# where served or remote addresses start: what follows them is a URL path, not a file path
_URL = re.compile(r"(?:https?://\S+|(?:localhost|\d+\.\d+\.\d+\.\d+)(?::\d+)?/\S*)")
# a path-like token: segments joined by '/', starting the code or after a space, quote, '=', ':' or '('
_SEG = r"[\w.<>*{}-]"
_PATH = re.compile(rf"(?<![^\s\"'=:(\[,])((?:~|\.\.?)?/{_SEG}+(?:/{_SEG}*)*|{_SEG}+(?:/{_SEG}*)+)")
_MAKE = re.compile(r"(?<![\w./-])make\s+([a-z][a-z0-9_-]*)(?![\w=-])")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _fenced(text: str) -> list[str]:
    return _FENCE.findall(text)


def _prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return _FENCE.sub("", text)


def _code(text: str) -> list[str]:
    """Every fenced block and inline code span."""
    return _fenced(text) + re.findall(r"`([^`\n]+)`", _prose(text))


def _links(text: str) -> list[str]:
    return _LINK.findall(_prose(text))


def _paths(code: str) -> list[str]:
    return [p.rstrip(".,;") for p in _PATH.findall(_URL.sub(" ", code))]


def _inside(path: Path) -> bool:
    """Whether `path` lies in the repository, read lexically (a symlink such as .venv/bin/python is not followed)."""
    return Path(os.path.normpath(path)).is_relative_to(ROOT)


def _generated() -> set[str]:
    """Top-level names the tool writes (ignored by git: .venv, runs, exports, ...), absent from a clone."""
    names = set()
    for line in _read(ROOT / ".gitignore").splitlines():
        line = line.strip().strip("/")
        if line and not line.startswith("#") and not any(c in line for c in "*?[!/"):
            names.add(line)
    return names


def _readme_paths() -> list[str]:
    text = _read(README)
    return [p for code in _code(text) for p in _paths(code)] + _links(text)


def test_readme_names_nothing_outside_the_repository():
    text = _read(README)
    assert "../shared" not in text and "shared/data" not in text, \
        "README.md names ../shared (the benchmark data), which a clone does not have"
    outside = []
    for p in _readme_paths():
        if p.startswith(("http://", "https://", "mailto:", "#")):
            continue
        target = p.split("#", 1)[0]
        if target.startswith("~"):
            outside.append(p)
        elif target.startswith("/"):
            if not target.startswith(PLACEHOLDER):
                outside.append(p)
        elif not _inside(ROOT / target):
            outside.append(p)
    assert not outside, f"README.md names paths outside the repository: {outside}"


def test_readme_paths_exist():
    """Repository paths in README.md's code and links exist (a path into a folder the tool generates,
    or with a <placeholder>, is not checked; a path whose first folder is in the repository, or that
    names a file, is)."""
    top = {p.name for p in ROOT.iterdir()}
    generated = _generated()
    checked, missing = [], []
    for p in _readme_paths():
        target = p.split("#", 1)[0]
        if not target or target.startswith(("/", "~", "http://", "https://", "mailto:")) or "<" in target:
            continue
        first = target.split("/", 1)[0]
        if first in generated:
            continue
        if first not in top and not re.search(r"\.\w+$", target):
            continue  # e.g. a class folder `cat/` of the user's images
        checked.append(target)
        found = list(ROOT.glob(target)) if any(c in target for c in "*?[") else [ROOT / target]
        if not found or not all(f.exists() for f in found):
            missing.append(target)
    assert not missing, f"README.md names files that are not in the repository: {missing}"
    for needed in ("pipelines/configs/default.yaml", "pipelines/configs/images.yaml", "docs/results.md"):
        assert needed in checked, f"README.md no longer names {needed} (or this test no longer finds it)"
    assert any(c.startswith("docs/examples/") and c.endswith(".png") for c in checked)


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", _read(ROOT / "Makefile"), re.M))


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_make_targets_named_exist(page):
    targets = _make_targets()
    assert {"train", "test", "serve"} <= targets, f"the Makefile parse found only {sorted(targets)}"
    named = {t for code in _code(_read(page)) for t in _MAKE.findall(code)}
    if page == README:
        assert {"train", "test", "serve"} <= named, f"README.md names only {sorted(named)}"
    unknown = sorted(named - targets)
    assert not unknown, f"{page.relative_to(ROOT)} names make targets the Makefile lacks: {unknown}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(_read(path)).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = _slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    bad = []
    for link in _links(_read(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = Path(os.path.normpath(page.parent / target)) if target else page
        if not _inside(path) or not path.exists():
            bad.append(f"{link} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            bad.append(f"{link} (no heading #{anchor} in {path.relative_to(ROOT)})")
    assert not bad, f"{page.relative_to(ROOT)}: broken links: {bad}"


def test_docs_index_links_every_page():
    index = _read(ROOT / "docs" / "README.md")
    linked = {Path(os.path.normpath(ROOT / "docs" / link.partition("#")[0])) for link in _links(index)}
    unlinked = [str(p.relative_to(ROOT)) for p in DOCS if p.parent == ROOT / "docs" and p.name != "README.md"
                and p not in linked]
    assert not unlinked, f"docs/README.md does not link {unlinked}"


def test_readme_stays_a_front_door():
    n = len(_read(README).splitlines())
    assert n <= 180, f"README.md has {n} lines: the manual belongs in docs/ (issue 27: about 100-150 lines)"


def _default_input_shape() -> tuple[int, int, int]:
    """[H, W, C] of the default experiment's images, from its config and its data source."""
    data = yaml.safe_load(_read(ROOT / "pipelines" / "configs" / "default.yaml")).get("data", {})
    source = data.get("source", "synthetic")
    assert source == "synthetic", f"the default config's source is {source!r}: update the example images"
    from data.synthetic import generate

    x, _ = generate(1, seed=0)
    h, w, c = x.shape[1:]
    assert x.dtype == np.uint8
    if data.get("image_size"):
        h, w = data["image_size"]
    if str(data.get("channels", "auto")) != "auto":
        c = int(data["channels"])
    return int(h), int(w), int(c)


def _readme_requests() -> list[tuple[str, str]]:
    """(model name, request body) of each README request that sends a shipped image."""
    out = []
    for block in _fenced(_read(README)):
        for cmd in block.replace("\\\n", " ").splitlines():
            if "curl" not in cmd or not re.search(r":(predict|classify)\b", cmd) or "docs/examples/" not in cmd:
                continue
            args = shlex.split(cmd)
            name = re.search(r"/v1/models/([^/:]+)", cmd).group(1)
            out.append((name, args[args.index("-d") + 1]))
    return out


def test_readme_request_image_decodes_to_the_default_model_input():
    from pipelines.serving.request import parse_predict
    from pipelines.serving.savedmodel import TensorInfo

    h, w, c = _default_input_shape()
    assert (h, w, c) == (28, 28, 1)
    requests = _readme_requests()
    assert requests, "README.md has no request that sends an image from docs/examples/"
    spec = TensorInfo("image", np.dtype(np.uint8), (None, h, w, c))
    servable = types.SimpleNamespace(inputs={"image": spec})
    for name, body in requests:
        assert name == "default", f"README.md sends the shipped digit to model {name!r}, not the default model"

        def encoded(m):
            path = ROOT / m.group(1)
            assert path.is_file(), f"README.md sends {m.group(1)}, which is not in the repository"
            return base64.b64encode(path.read_bytes()).decode()

        body = re.sub(r"\$\(base64 -w0 ([^)\s]+)\)", encoded, body)
        if '"examples"' in body:  # :classify: tf.Examples whose image/encoded is the shipped file
            import tensorflow as tf

            from pipelines.serving.classify import parse_classify

            (ex,) = parse_classify(body.encode())
            parsed = tf.io.parse_single_example(ex, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            image = tf.io.decode_image(parsed["image/encoded"]).numpy()
            assert image.shape == (h, w, c) and image.dtype == np.uint8
            continue
        inputs, row = parse_predict(body.encode(), servable, max_rows=4096)
        images = inputs["image"][0:1]
        assert row and images.shape == (1, h, w, c) and images.dtype == np.uint8


def test_every_classify_request_of_the_docs_names_its_signature_as_tf_serving_needs():
    """TensorFlow Serving sends a Classify request without `signature_name` to `serving_default`, a predict signature
    in these exports, and refuses it; this server would answer it, so a doc example without it would work here only."""
    found = 0
    for doc in (README, ROOT / "docs" / "serving.md"):
        for block in _fenced(_read(doc)):
            for cmd in block.replace("\\\n", " ").splitlines():
                if "curl" in cmd and ":classify" in cmd:
                    found += 1
                    assert '\\"signature_name\\": \\"classify\\"' in cmd, f"{doc.name}: {cmd}"
    assert found >= 3


def test_example_images_are_28x28_gray():
    from PIL import Image

    pngs = sorted((ROOT / "docs" / "examples").glob("*.png"))
    assert pngs
    for p in pngs:
        assert p.stat().st_size < 4096, f"{p.name}: keep the example images tiny"
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (28, 28), (p.name, im.format, im.mode, im.size)


def test_example_images_come_from_the_documented_command(tmp_path):
    """docs/examples/README.md's command, run again into a temporary folder, writes the same images."""
    from PIL import Image

    blocks = [b for b in _fenced(_read(ROOT / "docs" / "examples" / "README.md")) if " -c " in b]
    assert len(blocks) == 1, "docs/examples/README.md should hold one command with `python -c`"
    args = shlex.split(blocks[0])
    code = args[args.index("-c") + 1]
    (tmp_path / "docs" / "examples").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=120)
    made = sorted(p.name for p in (tmp_path / "docs" / "examples").glob("*.png"))
    shipped = sorted(p.name for p in (ROOT / "docs" / "examples").glob("*.png"))
    assert made == shipped
    for name in made:
        with Image.open(tmp_path / "docs" / "examples" / name) as a, Image.open(ROOT / "docs" / "examples" / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"{name}: the documented command draws another image"
