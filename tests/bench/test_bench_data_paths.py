"""Benchmarks whose data is absent: a skip (exit 0) where none was named, so that `make bench` runs on a machine
without ../shared/data; one error line and exit 2 where the user named a file or folder that is not there (a
mistyped MNIST_NPZ or --data exited 0 and read as a pass)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bench(script: str, *args: str, **env: str):
    full = {k: v for k, v in os.environ.items() if k not in ("MNIST_NPZ", "EUROSAT_DIR")}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args], cwd=ROOT,
                         env={**full, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize("script", ["bench_baseline_mnist.py", "bench_antialias.py"])  # common's check, its own
def test_a_named_mnist_file_that_is_absent_is_an_error(tmp_path, script):
    code, _, err = _bench(script, MNIST_NPZ=str(tmp_path / "mnist.npz"))
    assert code == 2 and err.strip().splitlines()[-1] == \
        f"error: MNIST_NPZ={tmp_path / 'mnist.npz'} is not a file (the reference MNIST file: ../shared/data/README.md)"


def test_eurosat_named_but_absent_is_an_error_and_not_named_a_skip(tmp_path):
    code, _, err = _bench("bench_eurosat.py", "--data", str(tmp_path))
    assert code == 2 and f"error: {str(tmp_path)!r} is not a EuroSAT folder" in err, err
    code, _, err = _bench("bench_eurosat.py", EUROSAT_DIR=str(tmp_path / "nowhere"))
    assert code == 2 and "is not a EuroSAT folder" in err, err
    code, out, _ = _bench("bench_eurosat.py")
    assert code == 0 and out.startswith("SKIP: no EuroSAT folder given"), out
    code, _, err = _bench("bench_folder_to_answer.py", "--eurosat", str(tmp_path))
    assert code == 2 and "is not a EuroSAT folder" in err, err
