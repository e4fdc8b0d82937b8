"""What every job's `main` shares: user errors end in one clear message and exit code 2."""

from __future__ import annotations

import _thread
import argparse
import logging
import os
import shlex
import signal
import sys
import threading

DEFAULT_CONFIG = "pipelines/configs/default.yaml"


class ConfigArgumentParser(argparse.ArgumentParser):
    """A config-driven job's parser: options may stand between the overrides (`a=1 --print-config b=2`),
    and `--print-config` prints the resolved config and exits 0, as `--help` does (before any heavy import)."""

    def parse_args(self, args=None, namespace=None):
        ns = self.parse_intermixed_args(args, namespace)
        if ns.print_config:
            print_config(self.prog, ns.config, ns.overrides)
            self.exit(0)
        return ns


def config_parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    """The arguments every config-driven job takes: --config, dotted key=value overrides, --print-config."""
    p = ConfigArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML")
    p.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {example}")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (--config plus overrides) as YAML with every key, its comment "
                        "and its default where it differs, then exit; `> my.yaml` makes a config to edit")
    return p


def train_command(config_path: str, backend: str) -> str:
    """The command that trains `config_path` on Keras' `backend` (`make` alone picks TensorFlow; PyTorch writes no
    SavedModel, so its command turns the export off): what `make tune` and the advice about its runs print."""
    env = "" if backend == "tensorflow" else f"KERAS_BACKEND={backend} "
    args = ' ARGS="export.enabled=false"' if backend == "torch" else ""
    return f"{env}make train CONFIG={config_path}{args}"


def check_backend_options(cfg, exports: bool) -> None:
    """Options that Keras' backend cannot honour, refused before any data is read (a folder's load may take
    minutes): the export on PyTorch (`exports`: `make train`), and `train.xla` on PyTorch."""
    import keras

    from pipelines.errors import UserError

    if keras.backend.backend() != "torch":
        return
    if exports and cfg.export.enabled:
        raise UserError("export: the PyTorch backend cannot write a SavedModel (Keras exports from TensorFlow or "
                        "JAX); train with KERAS_BACKEND=tensorflow or jax, or set export.enabled=false")
    if cfg.train.xla:  # measured: 31-40 images/s against 384 eagerly, on 2 CPU cores, with a page of warnings
        raise UserError("train.xla: on PyTorch Keras (3.15) compiles the train step with torch.compile, which "
                        "recompiles this project's models layer by layer until TorchDynamo's limit and then runs "
                        "them about 10x slower than eagerly; leave train.xla off on PyTorch, or use "
                        "KERAS_BACKEND=tensorflow or jax")


def print_config(prog: str, path: str, overrides: list[str]) -> None:
    """The config `path` with `overrides` as commented YAML that load_config reads back (model.name and
    model.params are checked by the job itself: the check imports Keras)."""
    from pipelines.config import load_config
    from pipelines.typed import commented_yaml

    cfg = load_config(path, overrides, check_model=False)
    given = f"CONFIG={shlex.quote(path)}" + (f" ARGS={shlex.quote(shlex.join(overrides))}" if overrides else "")
    given = given.replace("\n", "\\n")  # the command as `make` takes it
    head = [f"# {prog} {given}: the resolved config, every key; [default: ...] where a value is not the default.",
            "# model.name and model.params are checked when the job runs."]
    print("\n".join(head + commented_yaml(cfg)))


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM a KeyboardInterrupt, so that a job killed politely records itself as KILLED."""
    signal.signal(signal.SIGTERM, _interrupt)


class _SwallowedInterrupts:
    """A job's `sys.unraisablehook`: a Ctrl-C (or SIGTERM) whose KeyboardInterrupt was raised inside a callback
    whose exceptions Python can only print (a `gc` callback, such as JAX's, which importing TensorFlow installs; a
    `__del__`) is delivered again to the main thread, where it stops the job. Before, the job went on to its end
    after printing 'Exception ignored ... KeyboardInterrupt'. Here the interrupt would be swallowed again, so a
    timer thread delivers it once the hook has returned, and only while the job runs (`close`)."""

    def __init__(self, previous):
        self.previous, self.lock, self.running, self.timers = previous, threading.Lock(), True, []

    def __call__(self, unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            return self.previous(unraisable)
        with self.lock:
            if self.running:
                timer = threading.Timer(0.01, self._deliver)
                timer.daemon = True
                timer.start()
                self.timers.append(timer)

    def _deliver(self) -> None:
        with self.lock:
            if self.running:  # the handler of SIGINT (Ctrl-C), or of SIGTERM where SIGINT is ignored (nohup, `&`)
                for signum in (signal.SIGINT, signal.SIGTERM):  # that raises KeyboardInterrupt (interrupt_on_sigterm)
                    if callable(signal.getsignal(signum)):
                        _thread.interrupt_main(signum)  # run at the main thread's next Python instruction
                        break

    def close(self) -> None:
        """No delivery after this; one already made is raised in the calls below, still inside the job's `try`."""
        with self.lock:
            self.running = False
        for timer in self.timers:
            timer.cancel()


def user_errors() -> tuple[type[BaseException], ...]:
    from data.sources import DataSourceError
    from pipelines.config import ConfigError

    from pipelines.errors import UserError

    return (ConfigError, DataSourceError, UserError)


def run_main(main, argv=None, resumes: str | None = None) -> int:
    """Call `main(argv)`; print a user error as `error: ...` on stderr and return 2. Interrupted (Ctrl-C, or
    SIGTERM with `interrupt_on_sigterm`): "interrupted", with `resumes` (what the same command goes on from)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's Python-side warnings (retracing notices when several models
    # predict in one job) are noise for a user; errors still show.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    previous = sys.unraisablehook
    sys.unraisablehook = interrupts = _SwallowedInterrupts(previous)
    try:
        try:
            code = main(argv)
        finally:
            sys.unraisablehook = previous
            interrupts.close()
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; the same command resumes {resumes}" if resumes else "interrupted", file=sys.stderr)
        return INTERRUPTED
    return int(code or 0)


INTERRUPTED = 130  # a job's exit code after Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it)


def exit_job(code: int):
    """A job's `sys.exit(code)`; after an interrupt at once, once stdout and stderr are flushed. By then the job
    has saved what the same command resumes from and ended its MLflow run; Python's shutdown would still wait for
    tf.data's threads to finish elements that nobody reads (Ctrl-C in the default `make train`: 8 s more on one
    core, longer on a loaded one). Not a process of a training across processes: it leaves through JAX's
    shutdown (at exit), which its peers wait on."""
    from pipelines.distribute import ENV_SUPERVISED

    if code == INTERRUPTED and os.environ.get(ENV_SUPERVISED) != "1":
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or terminal (`make train | head`): nothing to lose
                pass
        os._exit(code)
    sys.exit(code)
