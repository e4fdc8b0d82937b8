"""From a folder to an answer: a clean clone, a folder of images, the README's three commands, timed.

    python bench/bench_folder_to_answer.py [--eurosat DIR] [--per-class 400] [--classes 5] [--out FILE]

1. `git clone` of this repository into a temporary directory, its `.venv`
   linked from here (the install is not timed);
2. a folder of `--classes` x `--per-class` RGB images: with `--eurosat DIR`
   (the folders of ../shared/data/extract_eurosat.py), the first classes of
   EuroSAT, files taken in name order from its `train/`, `valid/` and
   `test/` (70/15/15); without it, generated 64x64 PNGs of five shapes in
   random colours, places and sizes on noise;
3. the README's own-images command, `make train
   CONFIG=pipelines/configs/images.yaml ARGS="data.source=folder:<folder>"`;
4. `make serve`, until the new model's status is AVAILABLE;
5. the README's curl request with an image of the folder's test split,
   whose answer must name a class of the folder.

Prints the wall time of each step and from the first command to the first
answer (goal: under 5 minutes after the install on 2 CPU cores), the test
accuracy, and the answer. The commands run exactly as a user types them, in
the clone; nothing is written into this working tree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = (("train", 0.70), ("valid", 0.15), ("test", 0.15))


def eurosat_folder(src: str, dst: str, classes: int, per_class: int) -> list[str]:
    """Link `per_class` files of each of the first `classes` EuroSAT classes into train/valid/test of `dst`."""
    names = sorted(os.listdir(os.path.join(src, "train")))[:classes]
    for name in names:
        for split, frac in SPLITS:
            files = sorted(os.listdir(os.path.join(src, split, name)))[: round(per_class * frac)]
            os.makedirs(os.path.join(dst, split, name))
            for f in files:
                os.symlink(os.path.join(src, split, name, f), os.path.join(dst, split, name, f))
    return names


def shapes_folder(dst: str, classes: int, per_class: int, seed: int = 0) -> list[str]:
    """Generated 64x64 RGB PNGs of shapes, one class per shape, in train/valid/test of `dst`."""
    from PIL import Image, ImageDraw

    shapes = ["circle", "square", "triangle", "cross", "ring"][:classes]
    rng = np.random.default_rng(seed)
    for name in shapes:
        for split, frac in SPLITS:
            os.makedirs(os.path.join(dst, split, name))
            for i in range(round(per_class * frac)):
                noise = rng.integers(0, 90, (64, 64, 3), dtype=np.uint8)
                img = Image.fromarray(noise)
                d = ImageDraw.Draw(img)
                r = int(rng.integers(10, 22))
                cx, cy = (int(v) for v in rng.integers(r + 2, 62 - r, 2))
                colour = tuple(int(v) for v in rng.integers(120, 256, 3))
                box = (cx - r, cy - r, cx + r, cy + r)
                if name == "circle":
                    d.ellipse(box, fill=colour)
                elif name == "square":
                    d.rectangle(box, fill=colour)
                elif name == "triangle":
                    d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
                elif name == "cross":
                    d.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=colour)
                    d.rectangle((cx - r // 3, cy - r, cx + r // 3, cy + r), fill=colour)
                else:
                    d.ellipse(box, outline=colour, width=max(3, r // 3))
                img.save(os.path.join(dst, split, name, f"{i:04d}.png"))
    return shapes


def run(cmd: str, cwd: str, log: str) -> tuple[float, str]:
    t0 = time.monotonic()
    p = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True)
    with open(log, "a") as fh:
        fh.write(f"$ {cmd}\n{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        sys.exit(f"`{cmd}` failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    return time.monotonic() - t0, p.stdout


def wait_available(name: str, port: int, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"make serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{name}", timeout=2) as r:
                states = [s["state"] for s in json.load(r)["model_version_status"]]
                if "AVAILABLE" in states:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"model {name} not AVAILABLE within {timeout_s:g} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eurosat", default=os.environ.get("EUROSAT_DIR"), help="EuroSAT class folders (else generated shapes)")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--per-class", type=int, default=400)
    p.add_argument("--port", type=int, default=8611)
    p.add_argument("--keep", action="store_true", help="keep the temporary clone")
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = p.parse_args()
    if a.eurosat and not all(os.path.isdir(os.path.join(a.eurosat, s)) for s in ("train", "valid", "test")):
        p.error(f"--eurosat {a.eurosat!r} is not a EuroSAT folder (train/, valid/ and test/ class folders; "
                "../shared/data/README.md says how to write it)")  # exit 2

    tmp = tempfile.mkdtemp(prefix="folder-to-answer-")
    clone, data, log = os.path.join(tmp, "clone"), os.path.join(tmp, "my_images"), os.path.join(tmp, "commands.log")
    subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
    os.symlink(os.path.join(ROOT, ".venv"), os.path.join(clone, ".venv"))
    if a.eurosat:
        classes, what = eurosat_folder(a.eurosat, data, a.classes, a.per_class), "EuroSAT RGB"
    else:
        classes, what = shapes_folder(data, a.classes, a.per_class), "generated shapes"
    n = sum(len(fs) for _, _, fs in os.walk(data))
    print(f"{n} images of {what} in {len(classes)} classes: {', '.join(classes)}; clone {clone}", flush=True)

    serve = None
    try:
        t_start = time.monotonic()
        cmd1 = f'make train CONFIG=pipelines/configs/images.yaml ARGS="data.source=folder:{data}"'
        t_train, out = run(cmd1, clone, log)
        acc = float(re.search(r"Test accuracy:\s+([0-9.]+)", out).group(1))
        published = re.search(r"SavedModel:\s+(\S+)", out).group(1)
        name = os.path.basename(os.path.dirname(published))
        print(f"1. {cmd1}\n   {t_train:.0f} s, test accuracy {acc:.4f}, {published}", flush=True)

        cmd2 = f"make serve PORT={a.port}"
        t0 = time.monotonic()
        serve = subprocess.Popen(["bash", "-c", cmd2], cwd=clone, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
        wait_available(name, a.port, serve)
        t_serve = time.monotonic() - t0
        print(f"2. {cmd2}\n   {t_serve:.0f} s until {name} is AVAILABLE", flush=True)

        image = os.path.join(data, "test", classes[0], sorted(os.listdir(os.path.join(data, "test", classes[0])))[0])
        cmd3 = (f'curl -s -X POST localhost:{a.port}/v1/models/{name}:predict '
                f'-d "{{\\"instances\\": [{{\\"b64\\": \\"$(base64 -w0 {image})\\"}}]}}"')
        t_curl, answer = run(cmd3, clone, log)
        t_total = time.monotonic() - t_start
        pred = json.loads(answer)["predictions"][0]
        ok = pred.get("class_name") in classes
        print(f"3. {cmd3}\n   {t_curl:.2f} s: class_name {pred.get('class_name')!r} (true: {classes[0]!r})", flush=True)
        print(f"\nFrom the first command to the first answer: {t_total:.0f} s ({t_total / 60:.1f} min; goal < 5 min) "
              f"{'PASS' if ok and t_total < 300 else 'FAIL'}")
        if a.out:
            with open(a.out, "w") as fh:
                json.dump({"data": what, "images": n, "classes": classes, "train_s": t_train, "serve_s": t_serve,
                           "request_s": t_curl, "total_s": t_total, "test_accuracy": acc, "answer": pred.get("class_name"),
                           "commands": [cmd1, cmd2, cmd3]}, fh, indent=2)
        return 0 if ok else 1
    finally:
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a server that does not stop is killed, and the clone still removed
                print("make serve did not stop within 30 s of SIGTERM: killed", file=sys.stderr)
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
