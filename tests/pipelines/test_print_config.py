"""`--print-config` of the config-driven jobs: the resolved config as commented YAML that reads back, every key
of the schema with its value, its comment and its default where it differs; printed without TensorFlow."""

from __future__ import annotations

import dataclasses
import glob
import os
import subprocess
import sys
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from pipelines import preview, train
from pipelines.cli import DEFAULT_CONFIG, run_main
from pipelines.config import Config, load_config
from pipelines.typed import build, commented_yaml, source_notes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "pipelines", "configs", "*.yaml")))


@pytest.fixture(autouse=True)
def _in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the default --config is relative to the project


def schema_keys(cls, prefix: str = ""):
    """Every leaf key of the dataclass schema `cls`, dotted."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from schema_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def printed(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def section_lines(out: str, section: str) -> list[str]:
    """The lines of top-level `section` in the printed YAML."""
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.split("  #")[0] == f"{section}:"))
    rest = lines[start + 1:]
    end = next((i for i, line in enumerate(rest) if not line.startswith(" ")), len(rest))
    return rest[:end]


def test_every_key_of_the_schema_is_printed_with_its_comment(capsys):
    out = printed(train.main, ["--print-config"], capsys)
    data = yaml.safe_load(out)
    keys = list(schema_keys(Config))
    assert len(keys) > 50
    for key in keys:
        node = data
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} is not printed"
            node = node[part]
    lines = out.splitlines()
    # comments from pipelines/config.py and from data/augment_settings.py, after the field and above it
    assert "  optimizer: adam  # adam | adamw | sgd" in section_lines(out, "train")
    assert any(line.startswith("  heartbeat_timeout_s: 100  # Across processes (JAX): a peer silent")
               for line in lines)
    assert any(line.startswith("    fill_mode: constant  # one of FILL_MODES") for line in section_lines(out, "augment"))
    assert "  batch_size: 128" in section_lines(out, "data")  # no comment: none printed
    # data/options.py's DataSettings, which the config's DataConfig inherits: its comments too
    assert any(line.startswith("  cache: auto  # auto (memory under cache_budget_mb") for line in section_lines(out, "data"))
    assert "hp.Fixed" not in out  # a `#` inside TuneConfig's docstring is no comment
    assert lines[0].startswith("# make train CONFIG=pipelines/configs/default.yaml: the resolved config")


def test_an_override_shows_its_default(capsys):
    out = printed(train.main, ["--print-config", "train.epochs=3", "train.optimizer=sgd"], capsys)
    # the command as `make` takes it (it was `make train --config ...`, which does not run)
    assert out.startswith("# make train CONFIG=pipelines/configs/default.yaml "
                          "ARGS='train.epochs=3 train.optimizer=sgd':")
    train_lines = section_lines(out, "train")
    assert "  epochs: 3  # [default: 5]" in train_lines
    assert "  optimizer: sgd  # adam | adamw | sgd [default: adam]" in train_lines
    assert "  seed: 0" in train_lines  # a value at its default: no [default]
    assert ("  xla: false  # jit_compile the train step on TensorFlow (refused on torch: slower); JAX always jits it"
            in train_lines)


@pytest.mark.parametrize("config", CONFIGS)
def test_the_printed_yaml_loads_back_as_the_resolved_config(config, tmp_path, capsys):
    overrides = ["train.epochs=2", "train.verbose=1", "data.image_size=[28, 28]", "model.params.pyramid_scales=[1.0, 2.0]",
                 "data.source=npz:elsewhere/digits.npz", "tracking.experiment=it's: a # test"]
    resolved = load_config(config, overrides)
    out = printed(train.main, ["--config", config, "--print-config", *overrides], capsys)
    path = tmp_path / "my.yaml"
    path.write_text(out)
    again = load_config(path)
    assert again == resolved
    assert (again.name, again.tracking.experiment) == ("digits", "it's: a # test")


def test_print_config_among_overrides_as_make_passes_it(capsys):
    # make train ARGS="train.epochs=3 --print-config train.seed=4": --config $(CONFIG) $(ARGS)
    out = printed(train.main, ["--config", DEFAULT_CONFIG, "train.epochs=3", "--print-config", "train.seed=4"], capsys)
    cfg = yaml.safe_load(out)
    assert (cfg["train"]["epochs"], cfg["train"]["seed"]) == (3, 4)
    out = printed(preview.main, ["--n", "4", "--print-config", "augment.rotation.max_degrees=90"], capsys)
    assert yaml.safe_load(out)["augment"]["rotation"]["max_degrees"] == 90


def test_a_bad_key_is_one_error_line_with_the_nearest_key(capsys):
    assert run_main(train.main, ["--print-config", "train.epoch=3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.epoch: unknown key (did you mean train.epochs?"), lines
    assert run_main(train.main, ["--print-config", "train.epochs=-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: train.epochs: must be at least 1 (got -1)"


PROBE = """
import runpy, sys
sys.argv = ["job", "--print-config", "train.epochs=2"]
try:
    runpy.run_module("pipelines.{job}", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("tensorflow", "keras", "keras_tuner", "jax", "torch", "mlflow", "models") if m in sys.modules)
print("HEAVY", ",".join(heavy), "CODE", code)
"""


@pytest.mark.parametrize("job", ["train", "tune", "preview"])
def test_every_config_job_prints_without_loading_the_frameworks(job):
    out = subprocess.run([sys.executable, "-c", PROBE.format(job=job)], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY  CODE 0", out.stdout[-500:] + out.stderr[-2000:]
    assert "  epochs: 2  # [default: 5]" in out.stdout


@dataclass
class _Inner:
    """First paragraph,
    on two lines.

    Second paragraph: # no comment."""

    x: float = 1.0


@dataclass
class _Commented:
    # above a,
    # on two lines
    a: int = 1  # after a
    b: str = "x # no comment"
    c: list[int] = field(default_factory=lambda: [1,  # inside c
                                             2])

    d: str | None = None
    inner: _Inner = field(default_factory=lambda: _Inner(x=2.0))


def test_comments_are_read_with_tokenize_and_the_lines_read_back():
    doc, notes = source_notes(_Commented)
    assert notes == {"a": "above a, on two lines after a", "c": "inside c"}
    assert source_notes(_Inner) == ("First paragraph, on two lines.", {})
    obj = _Commented(b="two\nlines", d="yes", inner=_Inner(x=3.0))
    lines = commented_yaml(obj)
    assert lines[0] == "a: 1  # above a, on two lines after a"
    assert lines[1] == 'b: "two\\nlines"  # [default: \'x # no comment\']'
    assert lines[4:] == ["inner:  # First paragraph, on two lines.", "  x: 3.0  # [default: 2.0]"]  # the factory's
    assert build(_Commented, yaml.safe_load("\n".join(lines)), "") == obj
