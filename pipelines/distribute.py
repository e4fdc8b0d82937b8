"""Where training runs: one device, the local devices, or several processes and hosts.

`train.distribution`:

- `none`: the default device.
- `mirrored`: `tf.distribute.MirroredStrategy` over the local GPUs (or, with
  none, the local logical CPUs); TensorFlow backend.
- `data_parallel`: `keras.distribution.DataParallel` over every device of
  every process; JAX backend.
- `auto` (default): `none` on one device; `mirrored` (TensorFlow) or
  `data_parallel` (JAX) over several local GPUs; `data_parallel` when the
  process is told it is one of several.

Across processes and hosts this uses Keras' own interface, not a home-made
one: every host runs the same `make train` with
`KERAS_DISTRIBUTION_JOB_ADDRESSES` (host:port of every process, the first is
the coordinator), `KERAS_DISTRIBUTION_NUM_PROCESSES` and its own
`KERAS_DISTRIBUTION_PROCESS_ID`, the variables `keras.distribution.initialize()`
reads; `join` hands them to JAX's distributed runtime as Keras would, with the
heartbeat timeout Keras does not pass.
Only the JAX backend can: Keras 3.15's `fit` under TensorFlow's
`MultiWorkerMirroredStrategy` fails (keras-team/keras#20585: the first batch's
concat across workers raises `PerReplica ... to a Tensor`, then the scalar
loss reduction `Invalid reduction dimension 0`), and Ray Train's
TensorflowTrainer uses that strategy.

The global batch is `data.batch_size`; each process reads its shard of the
data (`data.batch_size / processes` images per step). Process 0, the chief,
is the only one that talks to MLflow, writes the run state, the export and the
evaluation; the others write only under `<run_dir>/scratch/process-<id>/`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from pipelines.errors import UserError

ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
ENV_SUPERVISED = "INVARIANT_NETS_SUPERVISED"
ENV_JOINED = "INVARIANT_NETS_JOINED"  # a file the supervised process writes once every process has joined
# The processes must all join within INIT_TIMEOUT_S (JAX's default); a process whose heartbeat stops
# for `train.heartbeat_timeout_s` (default HEARTBEAT_TIMEOUT_S, JAX's) is declared dead and the others
# are stopped (a peer killed mid-step usually fails their collective at once instead).
INIT_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 100
STOP_GRACE_S = 10  # after Ctrl-C or SIGTERM, the supervised process is killed if it has not ended by then


@dataclass
class Placement:
    """What `setup` decided: the kind, this process's place, and how to enter it."""

    kind: str  # none | mirrored | data_parallel
    num_processes: int = 1
    process_id: int = 0
    devices: list = field(default_factory=list)
    strategy: object = None  # the tf.distribute strategy of `mirrored`

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1

    def scope(self):
        """Where models are built and compiled (the strategy's scope for `mirrored`)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        if self.kind == "none":
            return "one device"
        where = f"process {self.process_id} of {self.num_processes}, " if self.multi_process else ""
        return f"{self.kind} over {len(self.devices)} device(s) ({where}{', '.join(map(str, self.devices))})"


def process_env() -> tuple[int, int]:
    """(number of processes, this process's id) from Keras' environment variables; (1, 0) when unset."""
    raw_n, raw_id = os.environ.get(ENV_PROCESSES), os.environ.get(ENV_PROCESS_ID)
    if raw_n is None:
        return 1, 0
    try:
        n, pid = int(raw_n), int(raw_id if raw_id is not None else "x")
    except ValueError:
        raise UserError(f"{ENV_PROCESSES}={raw_n!r} and {ENV_PROCESS_ID}={raw_id!r} must both be integers") from None
    if n < 1 or not 0 <= pid < n:
        raise UserError(f"{ENV_PROCESS_ID}={pid} must lie in [0, {ENV_PROCESSES}={n})")
    if n > 1 and not os.environ.get(ENV_ADDRESSES):
        raise UserError(f"{ENV_PROCESSES}={n} needs {ENV_ADDRESSES}: host:port of every process, coordinator first")
    return n, pid


def check(kind: str, backend: str, batch_size: int) -> tuple[int, int]:
    """Refuse impossible combinations before anything runs; return (processes, process id)."""
    n, pid = process_env()
    if n > 1 and backend != "jax":
        raise UserError(
            f"training across {n} processes needs KERAS_BACKEND=jax: Keras 3.15's fit under TensorFlow's "
            "MultiWorkerMirroredStrategy fails (keras-team/keras#20585), keras.distribution.DataParallel on JAX works"
        )
    if kind == "data_parallel" and backend != "jax":
        raise UserError("train.distribution=data_parallel needs KERAS_BACKEND=jax (keras.distribution is JAX-only)")
    if kind == "mirrored" and backend != "tensorflow":
        raise UserError(f"train.distribution=mirrored is TensorFlow's MirroredStrategy; with KERAS_BACKEND={backend} "
                        "use data_parallel (or auto)")
    if kind in ("none", "mirrored") and n > 1:
        raise UserError(f"train.distribution={kind} runs in one process, but {ENV_PROCESSES}={n}")
    if batch_size % n:
        raise UserError(f"data.batch_size={batch_size} must divide evenly among the {n} processes")
    return n, pid


def join(num_processes: int, process_id: int, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
    """Join the other processes: `jax.distributed.initialize` with the coordinator (the first of
    `KERAS_DISTRIBUTION_JOB_ADDRESSES`) and the heartbeat timeout.

    What `keras.distribution.initialize()` does on JAX, except that Keras passes no timeouts
    (JAX's 100 s heartbeat would be the only choice) and then agrees on a random seed across
    processes, which training does not need: it sets `train.seed` in every process right after.
    """
    addresses = [a.strip() for a in os.environ.get(ENV_ADDRESSES, "").split(",") if a.strip()]
    if len(addresses) not in (1, num_processes):
        raise UserError(f"{ENV_ADDRESSES} lists {len(addresses)} addresses for {ENV_PROCESSES}={num_processes}: "
                        "give the coordinator's host:port, or every process's, coordinator first")
    import jax

    print(f"Process {process_id} of {num_processes}: joining the others at {addresses[0]} (waiting up to "
          f"{INIT_TIMEOUT_S} s for all {num_processes} to start)", flush=True)
    jax.distributed.initialize(coordinator_address=addresses[0], num_processes=num_processes, process_id=process_id,
                               initialization_timeout=INIT_TIMEOUT_S, heartbeat_timeout_seconds=heartbeat_timeout_s)
    if jax.process_count() != num_processes:  # another process was told another count: the coordinator's wins
        why = (f"process {process_id} was started with {ENV_PROCESSES}={num_processes}, but the coordinator at "
               f"{addresses[0]} counts {jax.process_count()} processes: give every process the same count and "
               "address list")
        from jax._src import distributed

        distributed.global_state.client.key_value_set(f"invariant_nets/{FIRST_STEP}/{process_id}", f"error: {why}")
        raise UserError(why)
    if os.environ.get(ENV_JOINED):
        with open(os.environ[ENV_JOINED], "w"):
            pass


def setup(kind: str, batch_size: int, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> Placement:
    """Decide and enter the placement of `train.distribution=kind` (call once per process, before any model)."""
    import keras

    backend = keras.backend.backend()
    n, pid = check(kind, backend, batch_size)
    if n > 1:
        join(n, pid, heartbeat_timeout_s)
    if backend == "jax":
        import jax

        devices = jax.devices()
        if kind == "data_parallel" or (kind == "auto" and len(devices) > 1):
            # make_datasets shards per process already (and pads validation): no second sharding by Keras.
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
            return Placement("data_parallel", n, pid, devices)
        return Placement("none")
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return Placement("mirrored", 1, 0, devices, tf.distribute.MirroredStrategy(devices))
    return Placement("none")


@contextlib.contextmanager
def local():
    """Within the block, no `keras.distribution`: Keras variables are made on this process's devices alone.

    Under `DataParallel` across processes, every Keras variable that is made
    (a layer's weights, a `SeedGenerator`'s state) is placed on every process's
    devices by `jax.device_put`, which is a collective: JAX checks across
    processes that each passed the same value. Work done by one process only
    (the chief's augmentation preview) or that may fail in one process only
    (building the model to check the config) must therefore make its variables
    here. The chief's preview did not, and that was the two-process failure of
    the default config: its augmentation's `SeedGenerator` made one collective
    on the chief alone, so the chief's next collective met the other process's
    first weight placement (gloo: "576 vs 4 ... collective mismatch").
    """
    import keras

    placed = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(placed)


def agree(placement: Placement, step: str, value: str, timeout_s: int = INIT_TIMEOUT_S) -> list[str]:
    """Every process's `value` for `step` (index = process id), exchanged through the key-value store of
    JAX's coordination service, which `join` started: not a collective, so a process that stops with an
    error can first say why and the others stop with that reason instead of waiting for a heartbeat."""
    if not placement.multi_process:
        return [value]
    from jax._src import distributed  # the client jax.distributed.initialize made (no public accessor)

    client = distributed.global_state.client
    client.key_value_set(f"invariant_nets/{step}/{placement.process_id}", value)
    answers = []
    for i in range(placement.num_processes):
        try:
            answers.append(value if i == placement.process_id
                           else client.blocking_key_value_get(f"invariant_nets/{step}/{i}", timeout_s * 1000))
        except Exception as e:  # noqa: BLE001 - JaxRuntimeError (DEADLINE_EXCEEDED), from C++
            if "DEADLINE_EXCEEDED" not in str(e):
                raise
            raise UserError(f"process {i} did not reach step {step!r} within {timeout_s} s; every process must run "
                            "the same command with the same settings") from None
    return answers


FIRST_STEP = "data-and-model"  # train.py's first `preflight`: where `join` posts a count mismatch


@contextlib.contextmanager
def preflight(placement: Placement, step: str):
    """Run the block in every process, then agree: if any process raised a `UserError` there, every other
    process stops too, with one line naming that process and its message (the raiser re-raises its own)."""
    try:
        yield
    except UserError as e:
        agree(placement, step, f"error: {e}")
        raise
    answers = agree(placement, step, "ok")
    for pid, answer in enumerate(answers):
        if answer != "ok":
            raise UserError(f"process {pid} stopped before training ({answer[len('error: '):]}); "
                            "this process stops with it")


def check_same(placement: Placement, step: str, value: str, what: str) -> None:
    """Raise one `UserError` line if `value` (a digest) differs between the processes."""
    answers = agree(placement, step, value)
    if len(set(answers)) > 1:
        listed = ", ".join(f"process {i}: {a[:12]}" for i, a in enumerate(answers))
        raise UserError(f"the processes disagree on {what} ({listed}): every process must run the same "
                        "command with the same config and code; something drew random numbers in one process only")


def leave(placement: Placement) -> None:
    """Back to one device in one process, at the same point in every process (after the fit).

    Across processes this is `jax.distributed.shutdown()`, a barrier every
    process reaches; the chief then tests, evaluates and exports on its own
    devices while the others have exited.
    """
    import keras

    if placement.multi_process:
        import jax

        jax.distributed.shutdown()
    if placement.kind == "data_parallel":
        keras.distribution.set_distribution(None)


def scratch_dir(run_dir: str, placement: Placement) -> str:
    """Where a process writes: the run directory for the chief, `scratch/process-<id>` for the others."""
    if placement.is_chief:
        return run_dir
    path = os.path.join(run_dir, "scratch", f"process-{placement.process_id}")
    os.makedirs(path, exist_ok=True)
    return path


def supervise(argv: list[str], cfg, process_id: int, command: list[str] | None = None) -> int:
    """Run this process's training as a child and stand by to record how it ended.

    When a peer dies, JAX's coordination service ends the survivors with a
    fatal abort (no Python `finally` runs), so a process cannot mark its own
    MLflow run FAILED. The supervisor can: on the chief (process 0) it marks
    the run FAILED with the reason and prints one `error:` line; the same
    command on every host then resumes from the last checkpoint.
    """
    import signal
    import subprocess
    import sys

    if not cfg.train.run_dir:
        raise UserError("training across processes needs train.run_dir=<a folder every process shares> "
                        "(the same on every host), where the chief keeps the run and the checkpoints")
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        joined = os.path.join(tmp, "joined")
        env = dict(os.environ, **{ENV_SUPERVISED: "1", ENV_JOINED: joined})
        child = subprocess.Popen([*(command or [sys.executable, "-m", "pipelines.train"]), *argv], env=env)
        stopping: list[float] = []

        def forward(signum, frame):
            child.send_signal(signum)
            stopping.append(time.monotonic())

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, forward)
        while (code := child.poll()) is None:
            # A process waiting in JAX's C++ (for its peers to join, or in a collective) runs no Python signal
            # handler until that returns, which may be minutes: it is killed STOP_GRACE_S after the signal.
            if stopping and time.monotonic() - stopping[0] > STOP_GRACE_S:
                child.kill()
            time.sleep(0.1)
        if code in (0, 2, 130):  # done, a user error or an interrupt: the child said so itself
            return code
        if stopping:
            why = f"training process {process_id} did not stop within {STOP_GRACE_S} s of the signal and was killed"
            if process_id == 0:
                why += _mark_failed(cfg.train.run_dir, why, "KILLED")
            print(f"interrupted ({why}); the same command on every host resumes from the last checkpoint",
                  file=sys.stderr)
            return 130
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if not os.path.exists(joined):
            print(f"error: training process {process_id} ended ({how}) before all processes joined: they must all "
                  f"start within {INIT_TIMEOUT_S} s with the same {ENV_ADDRESSES} (the coordinator first) and "
                  f"{ENV_PROCESSES}, each with its own {ENV_PROCESS_ID}", file=sys.stderr)
            return 1
    why = (f"training process {process_id} ended abnormally ({how}): it was killed, or a peer process died or "
           f"stopped answering (declared dead after {cfg.train.heartbeat_timeout_s} s without a heartbeat, "
           "or at once when its connection closed)")
    if process_id == 0:
        why += _mark_failed(cfg.train.run_dir, why)
    print(f"error: {why}; run the same command on every host again to resume from the last checkpoint",
          file=sys.stderr)
    return 1


def _mark_failed(run_dir: str, why: str, status: str = "FAILED") -> str:
    """Mark the MLflow run of `run_dir` `status` if it is still RUNNING; return a note for the message."""
    from pipelines import rundir

    run_id = rundir.read_state(run_dir).get("mlflow_run_id")
    if not run_id:  # stopped before its run began (while joining): MLflow not even imported
        return ""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines import tracking

    try:
        tracking.quiet_mlflow()
        client = mlflow.MlflowClient(tracking.tracking_uri(_configured_uri(run_dir)))
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "failure", why[:4000])
            client.set_terminated(run_id, status=status)
        return f"; MLflow run {run_id} marked {status}"
    except MlflowException:
        return ""


def _configured_uri(run_dir: str) -> str | None:
    import yaml

    try:
        with open(os.path.join(run_dir, "config.yaml")) as fh:
            return (yaml.safe_load(fh).get("tracking") or {}).get("uri")
    except (OSError, ValueError, AttributeError):
        return None
