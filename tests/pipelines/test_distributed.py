"""Training beyond one process: `make train` on two local processes (JAX DataParallel), a killed
peer, and MirroredStrategy over two logical CPUs. Each process is a real `python -m pipelines.train`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest

from pipelines.export import HIGHEST_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _args(tmp_path, run_dir, *extra):
    return [
        "--config", os.path.join(ROOT, "pipelines", "configs", "default.yaml"),
        "name=dist", "data.synthetic.train_size=480", "data.synthetic.test_size=60", "data.batch_size=32",
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2", "train.verbose=0", f"train.run_dir={run_dir}",
        "train.lr_schedule=constant", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"export.dir={tmp_path / 'exports'}", "export.min_test_accuracy=0", "evaluate.enabled=false", *extra,
    ]  # the default config's model and augmentation (2 epochs may end near chance: the guard has its own tests) (its preview on the chief alone broke two processes once)


SMALL_MODEL = ("model.params.filters=[4]", "model.params.dense_units=8")


def _launch(tmp_path, run_dir, n=2, extra=(), backend="jax", per_process=None):
    """`n` processes of `make train`; `per_process[i]` adds overrides to process i only."""
    addresses = ",".join(f"127.0.0.1:{p}" for p in _ports(n))
    procs = []
    for i in range(n):
        own = tuple(extra) + tuple((per_process or {}).get(i, ()))
        env = dict(os.environ, KERAS_BACKEND=backend, KERAS_DISTRIBUTION_JOB_ADDRESSES=addresses,
                   KERAS_DISTRIBUTION_NUM_PROCESSES=str(n), KERAS_DISTRIBUTION_PROCESS_ID=str(i),
                   PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
        log = open(tmp_path / f"process{i}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "pipelines.train", *_args(tmp_path, run_dir, *own)],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, timeout):
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def _losses(client, experiment: str) -> list[float]:
    (run,) = client.search_runs(client.get_experiment_by_name(experiment).experiment_id)  # one MLflow run
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"),
                                                     key=lambda m: m.step)]


@pytest.mark.slow
def test_a_killed_peer_ends_the_other_within_the_timeout_and_both_resume_to_one_run_like_one_process(tmp_path):
    """Two processes of `make train`: the worker is killed mid-run, the chief ends within the heartbeat
    timeout, and the same command on both resumes the one MLflow run to its end: one export, identical
    weights in both processes, a loss curve close to one process's. (One scenario for all of it: each
    launch of two processes costs about a minute of this suite on two cores.)"""
    heartbeat = 20  # train.heartbeat_timeout_s (JAX's default is 100 s)
    run_dir = tmp_path / "runs" / "killed"
    # Three epochs: the worker is killed within a fraction of a second of the chief's first checkpoint, in the
    # second epoch (or, on a fast machine with a jitted step of a few ms, the third: 30 steps per epoch), and
    # the rerun trains what is left; either way each epoch's loss is logged once.
    same = ("data.synthetic.train_size=960", "data.batch_size=16", *SMALL_MODEL)  # as the one-process run's
    extra = ("train.epochs=3", f"train.heartbeat_timeout_s={heartbeat}", *same)
    procs = _launch(tmp_path, run_dir, extra=extra)
    backup = run_dir / "backup"
    deadline = time.monotonic() + 400
    while not backup.exists():  # the chief's checkpoint of its first finished epoch
        assert all(p.poll() is None for p in procs), [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
        assert time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(procs[1].pid)], capture_output=True, text=True).stdout.split()
    for pid in children:  # kill -9 the worker's training process mid-epoch (its supervisor sees it die)
        os.kill(int(pid), signal.SIGKILL)
    killed_at = time.monotonic()
    codes = _wait(procs, heartbeat + 120)
    assert time.monotonic() - killed_at < heartbeat + 60
    assert codes[0] != 0
    chief_log = (tmp_path / "process0.log").read_text()
    assert "error: training process 0 ended abnormally" in chief_log or "error:" in chief_log, chief_log
    assert f"declared dead after {heartbeat} s" in chief_log, chief_log
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs(client.get_experiment_by_name("dist").experiment_id)
    assert run.info.status == "FAILED"
    assert not (tmp_path / "exports").exists()

    procs = _launch(tmp_path, run_dir, extra=extra)  # the same command on both again
    codes = _wait(procs, 600)
    assert codes == [0, 0], [(tmp_path / f"process{i}.log").read_text()[-3000:] for i in range(2)]
    (again,) = client.search_runs(client.get_experiment_by_name("dist").experiment_id)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [0, 1, 2]
    assert sorted(set(os.listdir(tmp_path / "exports" / "dist")) - {HIGHEST_FILE}) == ["1"]  # one export
    assert sorted(os.listdir(run_dir / "scratch")) == ["process-1"]  # the worker wrote only there
    # The model each process built for its first step: bitwise the same initial weights.
    digests = [(d / "initial_weights.sha256").read_text().strip() for d in (run_dir, run_dir / "scratch" / "process-1")]
    assert len(digests[0]) == 64 and digests[0] == digests[1]

    import keras

    chief = keras.saving.load_model(run_dir / "model.keras", compile=False).get_weights()
    with np.load(run_dir / "scratch" / "process-1" / "final_weights.npz") as f:
        worker = [f[f"w{i}"] for i in range(len(f.files))]
    assert len(chief) == len(worker)
    for a, b in zip(chief, worker):
        np.testing.assert_array_equal(a, b)  # the processes ended with the same weights

    # One process, the same global batch, seed and (constant) learning rate, 2 epochs: a close loss curve.
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    single = subprocess.run([sys.executable, "-m", "pipelines.train",
                             *_args(tmp_path, tmp_path / "runs" / "one", *same, "name=single",
                                    "export.enabled=false")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    two, one = _losses(client, "dist"), _losses(client, "single")
    # Not the same draws: each process augments its own shard (seeded by train.seed), one process the
    # whole split, and the resumed epochs start a fresh pass over the data, so the curves agree closely in
    # the first epoch and more loosely after it.
    assert two[1] < two[0] and one[1] < one[0]
    np.testing.assert_allclose(two[0], one[0], rtol=0.05)  # measured 2.264 vs 2.257
    np.testing.assert_allclose(two[1], one[1], rtol=0.15)  # measured 2.026 vs 2.074


@pytest.mark.slow
def test_an_error_of_the_chief_alone_stops_the_other_process_at_once_with_its_reason(tmp_path):
    """A tracking store only the chief opens (unreachable here): the worker stops with the chief's reason,
    long before the heartbeat timeout (100 s), both with exit code 2 and nothing trained."""
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    started = time.monotonic()
    procs = _launch(tmp_path, tmp_path / "runs" / "chief-error", extra=SMALL_MODEL,
                    per_process={0: (f"tracking.uri=http://127.0.0.1:{dead}",)})
    codes = _wait(procs, 200)
    logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert codes == [2, 2], logs
    assert time.monotonic() - started < 90, logs
    assert "error: " in logs[0] and f"127.0.0.1:{dead}" in logs[0], logs[0]
    (line,) = [ln for ln in logs[1].splitlines() if ln.startswith("error: ")]
    assert "process 0 stopped before training" in line and f"127.0.0.1:{dead}" in line, logs[1]
    assert not (tmp_path / "runs" / "chief-error" / "backup").exists()


@pytest.mark.slow
def test_processes_that_draw_different_initial_weights_stop_with_one_line_saying_so(tmp_path):
    procs = _launch(tmp_path, tmp_path / "runs" / "disagree", extra=SMALL_MODEL, per_process={1: ("train.seed=7",)})
    codes = _wait(procs, 200)
    logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert codes == [2, 2], logs
    for log in logs:
        (line,) = [ln for ln in log.splitlines() if ln.startswith("error: ")]
        assert "the processes disagree on the model's initial weights (process 0: " in line, log
        assert "peer process died" not in log


def test_a_shard_that_lost_an_undecodable_image_still_runs_every_step(tmp_path):
    """`data.skip_bad_images`: a record that fails only while decoding leaves its shard one image short; the
    process must still run the same number of training, validation and test batches as the others. (A folder
    names and drops such files before sharding, decoding every file: the records, written by `make convert`
    from the folder as their files' bytes, are where one is still dropped while training.)"""
    from PIL import Image

    from pipelines import experiment
    from pipelines.cli import run_main
    from pipelines.config import load_config
    from pipelines.convert import main as convert_main

    rng = np.random.default_rng(0)
    for split in ("train", "validation", "test"):  # 16 each: 8 per shard, 4 whole batches of 2 in each
        for c in ("a", "b"):
            os.makedirs(tmp_path / "imgs" / split / c)
            for k in range(8):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / split / c / f"{k}.png")
    for split in ("train", "test"):  # header and trailer intact (the listing's header pass accepts it), data not
        path = tmp_path / "imgs" / split / "a" / "0.png"
        data = bytearray(path.read_bytes())
        data[45:60] = bytes(b ^ 0xFF for b in data[45:60])
        path.write_bytes(bytes(data))
    assert run_main(convert_main, ["--src", f"folder:{tmp_path / 'imgs'}", "--dest", str(tmp_path / "rec"),
                                   "--no-progress"]) == 0  # the header pass lets both through
    cfg = load_config(os.path.join(ROOT, "pipelines", "configs", "default.yaml"),
                      [f"data.source=tfrecord:{tmp_path / 'rec'}", "data.image_size=[8,8]", "data.batch_size=4",
                       "data.skip_bad_images=true", f"data.cache_dir={tmp_path / 'c'}"])
    batches = []  # the batch sizes of each split, per process
    for shard in ((2, 0), (2, 1)):
        splits = experiment.load_data(cfg, shard)
        train, val, test = experiment.make_datasets(cfg, splits, None, shard)
        batches.append([[int(b[0].shape[0]) for b in ds] for ds in (train, val, test)])
        # every split without tf.data's autotuning thread (data/pipeline.py without_autotuning)
        assert [ds.options().autotune.enabled for ds in (train, val, test)] == [False, False, False]
    assert batches[0] == batches[1] == [[2] * 4] * 3, batches
    assert experiment.steps_per_epoch(cfg, experiment.load_data(cfg, (2, 0)), 2) == 4


def test_several_processes_on_the_tensorflow_backend_are_one_clear_error(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", KERAS_DISTRIBUTION_JOB_ADDRESSES="127.0.0.1:1,127.0.0.1:2",
               KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID="0", PYTHONPATH=ROOT,
               TF_CPP_MIN_LOG_LEVEL="2", INVARIANT_NETS_SUPERVISED="1")
    out = subprocess.run([sys.executable, "-m", "pipelines.train", *_args(tmp_path, tmp_path / "runs" / "tf")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "KERAS_BACKEND=jax" in errors[0] and "20585" in errors[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_an_address_list_that_does_not_match_the_process_count_is_one_clear_error(monkeypatch):
    from pipelines import distribute
    from pipelines.errors import UserError

    monkeypatch.setenv(distribute.ENV_ADDRESSES, "127.0.0.1:1,127.0.0.1:2")
    with pytest.raises(UserError, match="lists 2 addresses for KERAS_DISTRIBUTION_NUM_PROCESSES=3"):
        distribute.join(3, 0)


SUPERVISE = """
import sys, types
sys.path.insert(0, {root!r})
from pipelines import distribute
distribute.STOP_GRACE_S = 1
cfg = types.SimpleNamespace(train=types.SimpleNamespace(run_dir={run_dir!r}, heartbeat_timeout_s=20))
sys.exit(distribute.supervise([], cfg, 0, command=[sys.executable, "-c", {child!r}]))
"""


def _supervised(tmp_path, child: str, stop: bool = False):
    """The supervisor of `make train` across processes over a stand-in child process (Python code)."""
    script = tmp_path / "supervise.py"
    script.write_text(SUPERVISE.format(root=ROOT, run_dir=str(tmp_path / "run"), child=child))
    (tmp_path / "run").mkdir(exist_ok=True)
    p = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    if stop:  # once the child runs (and ignores the signal, as one waiting in JAX's C++ does)
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    return p.returncode, err


def test_the_supervisor_kills_a_process_that_does_not_stop_on_a_signal_and_names_how_each_ended(tmp_path):
    """A process waiting in JAX's C++ (for its peers to join) runs no Python signal handler: Ctrl-C and SIGTERM
    did nothing for minutes. It is killed STOP_GRACE_S after the signal, and the end is named as an interrupt. A
    process that ends before every process joined, or after, says which."""
    ignore = ("import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"pathlib.Path({str(tmp_path / 'ready')!r}).touch(); time.sleep(120)")
    t0 = time.monotonic()
    code, err = _supervised(tmp_path, ignore, stop=True)
    assert code == 130 and time.monotonic() - t0 < 30, err
    assert "interrupted (training process 0 did not stop within 1 s of the signal and was killed)" in err, err
    code, err = _supervised(tmp_path, "import os; os.abort()")
    assert code == 1 and "error: training process 0 ended (signal 6) before all processes joined" in err, err
    code, err = _supervised(tmp_path, "import os; open(os.environ['INVARIANT_NETS_JOINED'], 'w'); os.abort()")
    assert code == 1 and "ended abnormally (signal 6): it was killed, or a peer process died" in err, err


COUNTS = """
import sys
sys.path.insert(0, {root!r})
from pipelines import distribute
from pipelines.errors import UserError
try:
    placement = distribute.setup("auto", 6)
    with distribute.preflight(placement, distribute.FIRST_STEP):
        pass
    print("RESULT ok")
except UserError as e:
    print("RESULT", e)
"""


def test_processes_told_different_process_counts_stop_at_once_with_one_line(tmp_path):
    """Process 1 told there are 3 processes where process 0 (the coordinator) was told 2: both stop within
    seconds, each with the reason, where process 0 waited 5 minutes and ended in a traceback."""
    ports = _ports(3)
    script = tmp_path / "counts.py"
    script.write_text(COUNTS.format(root=ROOT))
    procs = []
    for pid, n in ((0, 2), (1, 3)):
        env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, KERAS_DISTRIBUTION_PROCESS_ID=str(pid),
                   KERAS_DISTRIBUTION_NUM_PROCESSES=str(n),
                   KERAS_DISTRIBUTION_JOB_ADDRESSES=",".join(f"127.0.0.1:{p}" for p in ports[:n]))
        procs.append(subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    results = [[line for line in out.splitlines() if line.startswith("RESULT")] for out in outs]
    why = ("process 1 was started with KERAS_DISTRIBUTION_NUM_PROCESSES=3, but the coordinator at "
           f"127.0.0.1:{ports[0]} counts 2 processes")
    assert results[1] and results[1][0].startswith(f"RESULT {why}"), outs[1]
    assert results[0] and results[0][0].startswith(f"RESULT process 1 stopped before training ({why}"), outs[0]


MIRRORED = """
import sys, json, pathlib
sys.path.insert(0, {root!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pipelines.config import load_config
from pipelines.train import run
import mlflow
out = {{}}
for kind in ("none", "mirrored"):
    args = {args!r} + [f"train.distribution={{kind}}", f"train.run_dir={tmp}/runs/{{kind}}", f"name=m{{kind}}"]
    cfg = load_config(args[1], args[2:])
    r = run(cfg)
    c = mlflow.MlflowClient(r.tracking_uri)
    out[kind] = [m.value for m in sorted(c.get_metric_history(r.run_id, "loss"), key=lambda m: m.step)]
    out[kind + "_acc"] = r.test_accuracy
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_matches_one_device(tmp_path):
    args = _args(tmp_path, "unused", "export.enabled=false", *SMALL_MODEL)
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED.format(root=ROOT, args=args, tmp=str(tmp_path)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.split("RESULT", 1)[1])
    assert "mirrored over 2 device(s)" in out.stdout
    # Each replica normalises its half batch with its own batch-norm statistics (Keras does not sync them)
    # and draws its own dropout masks, so the curves agree closely but not to float rounding: measured
    # epoch 1 2.281 vs 2.323 (1.8%), epoch 2 2.033 vs 2.163 (6%, the steep part of the curve; 0.8% with
    # other draws before the model was re-seeded right before its build).
    assert result["mirrored"][1] < result["mirrored"][0]
    np.testing.assert_allclose(result["mirrored"][0], result["none"][0], rtol=0.03)
    np.testing.assert_allclose(result["mirrored"][1], result["none"][1], rtol=0.1)
