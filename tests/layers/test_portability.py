"""layers/ and models/ are written in keras.ops: no TensorFlow import there, except the TF-only fast path.

`layers/common/_tf_fast.py` is imported by `layers/common/_ops.py` and `layers/common/conv.py`
only when the backend is TensorFlow; on JAX, importing every layer and builder leaves TensorFlow
unloaded.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TF_ONLY = {os.path.join("layers", "common", "_tf_fast.py")}


def _python_files(room):
    for dirpath, _, files in os.walk(os.path.join(ROOT, room)):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def _tensorflow_imports(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            if name == "tensorflow" or name.startswith("tensorflow."):
                yield node.lineno, name


@pytest.mark.parametrize("room", ["layers", "models"])
def test_no_module_imports_tensorflow_but_the_tf_fast_path(room):
    found = {p: list(_tensorflow_imports(p)) for p in _python_files(room) if p not in TF_ONLY}
    assert not {p: v for p, v in found.items() if v}, "import tensorflow in layers/ or models/ (use keras.ops)"


def test_layers_and_models_load_no_tensorflow_on_jax():
    code = (
        "import importlib, pkgutil, sys\n"
        "import layers, models\n"
        "for m in pkgutil.walk_packages(layers.__path__, 'layers.'):\n"
        "    if not m.name.endswith('._tf_fast'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'tensorflow' or n.startswith('tensorflow.'))[:3])\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
