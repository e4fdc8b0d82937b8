"""Data-parallel training across processes (JAX, keras.distribution.DataParallel): images/s with 1 and 2
processes, the all-reduce time per step, and the scaling projected from the measured compute and all-reduce.

    PYTHONPATH=. .venv/bin/python bench/bench_distributed.py [--models baseline_cnn hnet] [--batch 64] [--steps 40]

Every configuration is real processes on 127.0.0.1 joined by `keras.distribution.initialize()`, each
feeding its own shard (batch / processes images per step) of random 28x28 digits, as `make train` does.
On a 2-core machine two processes share the cores, so expect little or no speed-up: the figures that
carry over to real hosts are the compute time per step and the all-reduce time, and the projection
step(k) = compute(batch / k) + allreduce(k), with a ring all-reduce's 2 (k - 1) / k of the measured
two-process all-reduce, speed-up(k) = step(1) / step(k).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
    import keras
    import numpy as np

    n = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1"))
    pid = int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0"))
    if n > 1:
        keras.distribution.initialize()
    import jax
    import tensorflow as tf

    if n > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False))
    sys.path.insert(0, ROOT)
    import models

    keras.utils.set_random_seed(0)
    model = models.build_model(args.model, (28, 28, 1), 10)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    per = args.batch // n
    rng = np.random.default_rng(pid)
    x = rng.uniform(size=(per * args.steps, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, per * args.steps)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(per).cache()
    model.fit(ds.take(3), epochs=1, verbose=0)  # compile
    t = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    step = (time.perf_counter() - t) / args.steps
    allreduce = 0.0
    if n > 1:  # one all-reduce of the model's parameters across the processes
        from jax.sharding import NamedSharding, PartitionSpec

        size = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("p",))
        local = np.ones((1, size), np.float32)
        g = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("p")), local, (n, size))
        total = jax.jit(lambda a: a.sum(axis=0), out_shardings=NamedSharding(mesh, PartitionSpec()))
        total(g).block_until_ready()
        t = time.perf_counter()
        for _ in range(20):
            total(g).block_until_ready()
        allreduce = (time.perf_counter() - t) / 20
    if pid == 0:
        print("RESULT", json.dumps({"step_s": step, "allreduce_s": allreduce,
                                    "params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}))
    if n > 1:
        jax.distributed.shutdown()


def launch(model: str, n: int, batch: int, steps: int) -> dict:
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    procs = []
    for i in range(n):
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
        if n > 1:
            env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=",".join(f"127.0.0.1:{p}" for p in ports),
                       KERAS_DISTRIBUTION_NUM_PROCESSES=str(n), KERAS_DISTRIBUTION_PROCESS_ID=str(i))
        cmd = [sys.executable, __file__, "--worker", "--model", model, "--batch", str(batch), "--steps", str(steps)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    line = next(line for line in outs[0].splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["baseline_cnn", "hnet"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--model", default="baseline_cnn")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    print(f"global batch {args.batch}, {args.steps} steps, {os.cpu_count()} CPU cores")
    print("| model | params | 1 process img/s | 2 processes img/s | ratio | compute/step at batch/2 (ms) "
          "| all-reduce/step (ms) | projected speed-up 2 / 4 / 8 hosts |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for model in args.models:
        one = launch(model, 1, args.batch, args.steps)
        half = launch(model, 1, args.batch // 2, args.steps)  # one process's compute in a 2-process step
        two = launch(model, 2, args.batch, args.steps)
        ar = two["allreduce_s"]
        compute = one["step_s"]
        proj = [compute / (compute / k + 2 * (k - 1) / k * ar) for k in (2, 4, 8)]
        print(f"| {model} | {one['params']:,} | {args.batch / one['step_s']:.0f} | {args.batch / two['step_s']:.0f} | "
              f"{one['step_s'] / two['step_s']:.2f} | {1000 * half['step_s']:.1f} | {1000 * ar:.2f} | "
              f"{' / '.join(f'{s:.2f}' for s in proj)} |")


if __name__ == "__main__":
    main()
