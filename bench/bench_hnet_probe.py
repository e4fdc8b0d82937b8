"""Why hnet trails gcnn at equal size: short probes of the cheap changes issue 18 names.

Each variant is hnet on the rotated-MNIST protocol of ../shared/data/README.md,
trained as bench_rotated_gcnn.py trains (Adam, cosine decay to 0, batch 32), over
several seeds, and compared with the paper's network (`paper`) trained in the
same run: mean test error, its spread over seeds, and the ratio to `paper`.

Variants (hnet builder params, and the peak learning rate where it changes):

* `paper`: the defaults (orders {0, 1}, 8-16-32 channels, a final harmonic
  convolution to the classes, he_normal radial profiles), lr 0.005.
* `order2`: orders {0, 1, 2} at 6-12-24 channels (about the same size).
* `readout_dense`: the last stage's magnitudes averaged, then a dense layer.
* `init_lecun`, `init_glorot`: other radial-profile initialisations.
* `lr_0.0025`, `lr_0.01`: the cosine schedule's peak halved and doubled.
* `order2_dense`, `dense_glorot`, `order2_dense_glorot`: those that helped, together.

Short runs measure how fast a variant learns, not where it ends: the best
combination (orders {0, 1, 2}, dense readout, glorot_uniform radii) more than
halves the paper network's error here, yet both made 1.88% after the full
30-epoch protocol (bench_rotated_gcnn.py, `hnet_o2_dense` against `hnet`).

The default is the short protocol (2 epochs of 3k rotated digits, 2k rotated
test digits, three seeds; about 15 minutes on 2 cores):

    PYTHONPATH=. .venv/bin/python bench/bench_hnet_probe.py
"""

from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_rotated_gcnn import run  # noqa: E402
from common import mnist_or_skip, rotated_mnist, table  # noqa: E402

import numpy as np  # noqa: E402

# name -> (hnet params, peak learning rate or None for --lr)
VARIANTS = {
    "paper": ({}, None),
    "order2": ({"max_order": 2, "filters": [6, 12, 24]}, None),
    "readout_dense": ({"readout": "dense"}, None),
    "init_lecun": ({"radial_initializer": "lecun_normal"}, None),
    "init_glorot": ({"radial_initializer": "glorot_uniform"}, None),
    "lr_0.0025": ({}, 0.0025),
    "lr_0.01": ({}, 0.01),
    # the helpful ones together
    "order2_dense": ({"max_order": 2, "filters": [6, 12, 24], "readout": "dense"}, None),
    "dense_glorot": ({"readout": "dense", "radial_initializer": "glorot_uniform"}, None),
    "order2_dense_glorot": ({"max_order": 2, "filters": [6, 12, 24], "readout": "dense",
                             "radial_initializer": "glorot_uniform"}, None),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=3000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--verbose", type=int, default=0)
    args = p.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    if not names or any(n not in VARIANTS for n in names):
        p.error(f"--variants: choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    mnist = mnist_or_skip()
    (xr, yr), (xt, yt) = rotated_mnist(mnist, n_train=args.train_size)
    train = (xr.astype("float32") / 255.0, yr)
    test = (xt[: args.test_size].astype("float32") / 255.0, yt[: args.test_size])
    print(f"epochs={args.epochs} train={len(train[0])} test={len(test[0])} seeds={seeds}", flush=True)

    rows = []
    for name in names:
        params, lr = VARIANTS[name]
        errors, speeds = [], []
        for seed in seeds:
            a = copy.copy(args)
            a.seed, a.lr = seed, lr or args.lr
            r = run(name, "hnet", params, False, train, test, a)
            errors.append(r["test error %"])
            speeds.append(r["train img/s"])
            print(f"{name} seed {seed}: {r['test error %']:.2f}%", flush=True)
        rows.append({"variant": name, "params": r["params"], "test error % (mean)": float(np.mean(errors)),
                     "min": float(np.min(errors)), "max": float(np.max(errors)),
                     "train img/s": float(np.median(speeds))})
    ref = next((r for r in rows if r["variant"] == "paper"), None)
    if ref:
        for r in rows:
            r["error / paper"] = r["test error % (mean)"] / ref["test error % (mean)"]
    print(table(rows, f"hnet probes: {args.epochs} epochs of {len(train[0])} rotated digits, "
                      f"{len(test[0])} rotated test digits, seeds {args.seeds}"))


if __name__ == "__main__":
    main()
