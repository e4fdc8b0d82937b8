"""Versions and labels (issue 28): deleted versions unloaded, TF Serving's model config file, version labels.

Three versions of a tiny model are exported once; each test publishes the ones
it needs into its own directory (a copy renamed into place, as
`pipelines.export` publishes) and checks the server's answers against
`predict_savedmodel` of the same version.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest
import requests

from pipelines.cli import run_main
from pipelines.export import export_model, predict_savedmodel
from pipelines.serve import Server, main
from pipelines.serving.model_config import ModelConfigError, ModelSpec, parse_model_config
from pipelines.serving.servables import NotFound, VersionStatus
from tests.pipelines.test_serve import tiny_model

POLL_S = 0.2


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Versions 1-3 of model "m" (different weights), the test images and each version's reference answers."""
    root = str(tmp_path_factory.mktemp("source"))
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    paths = {v: export_model(tiny_model(10 + v), root, "m") for v in (1, 2, 3)}
    ref = {v: predict_savedmodel(p, x)["probabilities"] for v, p in paths.items()}
    assert not np.allclose(ref[1], ref[2], atol=1e-4) and not np.allclose(ref[2], ref[3], atol=1e-4)
    return {"paths": paths, "x": x, "ref": ref}


def publish(versions, base: str, *vs: int) -> None:
    """Publish versions `vs` under `base` as pipelines.export does: a complete copy renamed into place."""
    os.makedirs(base, exist_ok=True)
    for v in vs:
        tmp = os.path.join(base, f".tmp-{v}")
        shutil.copytree(versions["paths"][v], tmp)
        os.rename(tmp, os.path.join(base, str(v)))


def write_config(path, text: str) -> None:
    """Written whole at once (a poll between truncating and writing read an empty file, "no model", and the test
    took that for the edit's error)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def config(base: str, policy: str = "", labels: dict | None = None, name: str = "m") -> str:
    lab = "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items())
    pol = f" model_version_policy {{ {policy} }}" if policy else ""
    return (f'model_config_list {{ config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow"'
            f"{pol}{lab} }} }}\n")


def status(s: Server, route: str = "") -> list[tuple[str, str]]:
    r = requests.get(f"{s.url}/v1/models/m{route}", timeout=10)
    assert r.status_code == 200, r.text
    return [(v["version"], v["state"]) for v in r.json()["model_version_status"]]


def probs(s: Server, versions, route: str = "") -> np.ndarray:
    r = requests.post(f"{s.url}/v1/models/m{route}:predict", json={"instances": versions["x"].tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    return np.array([p["probabilities"] for p in r.json()["predictions"]])


def wait_for(cond, timeout: float = 20.0) -> float:
    """Seconds until `cond()` held (fails after `timeout`)."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - t0


def serving(s: Server, *vs: int):
    """The rows of exactly `vs` served (the status lists the newest first; versions unloaded stay as END)."""
    return lambda: [(v.version, v.state) for v in s.manager.status("m") if v.state != "END"] == \
        [(v, "AVAILABLE") for v in sorted(vs)[::-1]]


# ----------------------------------------------------------------------------- version removed from disk


def test_deleting_the_served_version_rolls_back_and_requests_in_flight_finish(tmp_path, versions):
    root = str(tmp_path / "exports")
    publish(versions, os.path.join(root, "m"), 1, 2)
    with Server(root, port=0, poll_s=POLL_S) as s:
        assert status(s) == [("2", "AVAILABLE")]
        np.testing.assert_allclose(probs(s, versions), versions["ref"][2], atol=1e-6)
        v2, _ = s.manager.resolve("m")
        gone = weakref.ref(v2._keep)
        run, started = v2.run, threading.Event()

        def slow(inputs):  # a request on version 2 that is still running when version 2 is deleted
            started.set()
            time.sleep(1.0)
            return run(inputs)

        v2.run = slow
        in_flight = {}
        t = threading.Thread(target=lambda: in_flight.update(p=probs(s, versions)))
        t.start()
        assert started.wait(10)
        shutil.rmtree(os.path.join(root, "m", "2"))
        took = wait_for(serving(s, 1))
        assert took < 10 * POLL_S + 5, took  # a poll, plus loading version 1
        t.join(30)
        np.testing.assert_allclose(in_flight["p"], versions["ref"][2], atol=1e-6)  # finished on version 2
        del v2.run, v2, run, slow
        assert status(s) == [("2", "END"), ("1", "AVAILABLE")]  # version 2 unloaded: END, as TF Serving lists it
        np.testing.assert_allclose(probs(s, versions), versions["ref"][1], atol=1e-6)
        r = requests.post(f"{s.url}/v1/models/m/versions/2:predict", json={"instances": versions["x"].tolist()},
                          timeout=10)
        assert r.status_code == 404 and "version 2 is not served" in r.json()["error"]
        # its memory is given back: not frozen, and collected again once the request in flight let go of it
        wait_for(lambda: gone() is None, timeout=15)

        shutil.rmtree(os.path.join(root, "m", "1"))  # no version left: nothing served, and a 404 says so
        wait_for(lambda: not s.manager.state("m").servables)
        assert status(s) == [("2", "END"), ("1", "END")]
        r = requests.post(f"{s.url}/v1/models/m:predict", json={"instances": versions["x"].tolist()}, timeout=10)
        assert r.status_code == 404, r.text


# ----------------------------------------------------------------------------- the model config file


def test_config_file_pins_a_specific_version(tmp_path, versions):
    base = str(tmp_path / "m")
    publish(versions, base, 1, 2, 3)
    cfg = tmp_path / "models.config"
    write_config(cfg, config(base, "specific { versions: 2 }"))
    with Server("does-not-matter", port=0, poll_s=POLL_S, model_config_file=str(cfg)) as s:
        assert s.manager.names() == ["m"]
        assert status(s) == [("2", "AVAILABLE")]
        np.testing.assert_allclose(probs(s, versions), versions["ref"][2], atol=1e-6)
        np.testing.assert_allclose(probs(s, versions, "/versions/2"), versions["ref"][2], atol=1e-6)
        for v in (1, 3):
            r = requests.post(f"{s.url}/v1/models/m/versions/{v}:predict", json={"instances": [[[[0]] * 28] * 28]},
                              timeout=10)
            assert r.status_code == 404 and f"version {v} is not served" in r.json()["error"]


def test_latest_two_versions_and_labels(tmp_path, versions):
    base = str(tmp_path / "m")
    publish(versions, base, 1, 2, 3)
    cfg = tmp_path / "models.config"
    write_config(cfg, config(base, "latest { num_versions: 2 }", {"stable": 2, "canary": 3, "old": 1}))
    with Server("unused", port=0, poll_s=POLL_S, model_config_file=str(cfg)) as s:
        assert status(s) == [("3", "AVAILABLE"), ("2", "AVAILABLE")]  # newest first, as TF Serving lists them
        ref = versions["ref"]
        np.testing.assert_allclose(probs(s, versions), ref[3], atol=1e-6)  # no version: the highest served
        for v in (2, 3):
            np.testing.assert_allclose(probs(s, versions, f"/versions/{v}"), ref[v], atol=1e-6)
            assert status(s, f"/versions/{v}") == [(str(v), "AVAILABLE")]
        for label, v in (("stable", 2), ("canary", 3)):
            np.testing.assert_allclose(probs(s, versions, f"/labels/{label}"), ref[v], atol=1e-6)
            assert status(s, f"/labels/{label}") == [(str(v), "AVAILABLE")]
            meta = requests.get(f"{s.url}/v1/models/m/labels/{label}/metadata", timeout=10).json()
            assert meta["model_spec"]["version"] == str(v)
        r = requests.post(f"{s.url}/v1/models/m/labels/nope:predict", json={"instances": [[[[0]] * 28] * 28]},
                          timeout=10)
        assert r.status_code == 404 and "no version label 'nope'" in r.json()["error"]
        assert "'canary', 'old', 'stable'" in r.json()["error"]
        r = requests.get(f"{s.url}/v1/models/m/labels/old", timeout=10)  # names version 1, which is not served
        assert r.status_code == 404 and "names version 1, which is not available" in r.json()["error"]

        # what helper APIs (gRPC) call: the same answers
        assert s.manager.resolve("m", label="stable")[0].version == 2
        assert s.manager.resolve("m", 3)[0].version == 3
        assert s.manager.get("m")[0].version == 3
        assert s.manager.status("m", label="canary") == [VersionStatus(3, "AVAILABLE", "OK", "")]
        for call in (lambda: s.manager.resolve("m", label="nope"), lambda: s.manager.resolve("m", 1),
                     lambda: s.manager.resolve("x"), lambda: s.manager.status("m", 7)):
            with pytest.raises(NotFound):
                call()


def test_config_edits_take_effect_within_a_poll_and_a_broken_edit_keeps_the_old_config(tmp_path, versions, caplog):
    base = str(tmp_path / "m")
    publish(versions, base, 1, 2)
    cfg = tmp_path / "models.config"
    write_config(cfg, config(base, "specific { versions: 1 }"))
    caplog.set_level(logging.INFO, logger="pipelines.serve")
    with Server("unused", port=0, poll_s=POLL_S, model_config_file=str(cfg)) as s:
        assert status(s) == [("1", "AVAILABLE")]
        write_config(cfg, config(base, "specific { versions: 2 }", {"stable": 2}))  # pin another, add a label
        took = wait_for(serving(s, 2))
        assert took < 10 * POLL_S + 5, took
        np.testing.assert_allclose(probs(s, versions, "/labels/stable"), versions["ref"][2], atol=1e-6)

        write_config(cfg, config(base, "newest { }"))  # an unknown policy: logged, the old config kept
        wait_for(lambda: any("keeping the previous config" in m for m in caplog.messages))
        error = next(m for m in caplog.messages if "keeping the previous config" in m)
        assert "newest" in error and "policies: latest, all, specific" in error
        time.sleep(3 * POLL_S)
        assert status(s) == [("2", "AVAILABLE"), ("1", "END")]
        np.testing.assert_allclose(probs(s, versions, "/labels/stable"), versions["ref"][2], atol=1e-6)

        write_config(cfg, config(base, "all { }"))  # fixed again: read again
        wait_for(serving(s, 1, 2))
        assert requests.get(f"{s.url}/v1/models/m/labels/stable", timeout=10).status_code == 404

        write_config(cfg, config(base, name="n"))  # the model renamed: "m" is gone, "n" serves the latest
        wait_for(lambda: s.manager.names() == ["n"] and s.manager.state("n").servable is not None)
        r = requests.get(f"{s.url}/v1/models/m", timeout=10)
        assert r.status_code == 404 and "model 'm' is not served" in r.json()["error"]
        assert s.manager.resolve("n")[0].version == 2


def test_a_broken_config_file_at_start_up_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.cfg"
    write_config(bad, config(str(tmp_path), "newest { }"))
    r = subprocess.run([sys.executable, "-m", "pipelines.serve", "--model-config-file", str(bad), "--port", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model config file ") and "no field named \"newest\"" in last, r.stderr


BAD_CONFIGS = [
    # (id, config text, words of the error)
    ("syntax", 'model_config_list { config { name: "m" ', 'Expected "}"'),
    ("unknown-field", 'model_config_list { config { nme: "m" } }', 'no field named "nme"'),
    ("empty", "", "no model"),
    ("no-config", "model_config_list { }", "has no config"),
    ("no-name", 'model_config_list { config { base_path: "/x" } }', "name must be non-empty"),
    ("no-base-path", 'model_config_list { config { name: "m" } }', "base_path is missing"),
    ("twice", 'model_config_list { config { name: "m" base_path: "/x" } config { name: "m" base_path: "/y" } }',
     "configured twice"),
    ("platform", 'model_config_list { config { name: "m" base_path: "/x" model_platform: "pytorch" } }', "pytorch"),
    ("specific-empty", 'model_config_list { config { name: "m" base_path: "/x" model_version_policy { specific { } '
     "} } }", "names no versions"),
    ("label-not-pinned", 'model_config_list { config { name: "m" base_path: "/x" model_version_policy { specific { '
     'versions: 3 } } version_labels { key: "stable" value: 2 } } }', "version label 'stable' names version 2"),
]


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_files_are_one_clear_error(tmp_path, capsys, case):
    _, text, words = case
    cfg = tmp_path / "bad.cfg"
    write_config(cfg, text)
    with pytest.raises(ModelConfigError, match=None) as e:
        parse_model_config(text, str(cfg))
    assert words in str(e.value) and "\n" not in str(e.value)
    assert run_main(main, ["--model-config-file", str(cfg), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert run_main(main, ["--model-config-file", str(tmp_path / "missing.cfg")]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_version_policies():
    assert ModelSpec("m", "/x").wanted([3, 1, 2]) == {3}
    assert ModelSpec("m", "/x", "latest", 2).wanted([3, 1, 2]) == {2, 3}
    assert ModelSpec("m", "/x", "all").wanted([3, 1, 2]) == {1, 2, 3}
    assert ModelSpec("m", "/x", "specific", versions=(2, 5)).wanted([3, 1, 2]) == {2}
    spec = parse_model_config('model_config_list { config { name: "m" base_path: "/x" '
                              'model_version_policy { latest { } } } }')["m"]
    assert (spec.policy, spec.num_versions) == ("latest", 1)  # unset num_versions: 1, as in TF Serving


# ----------------------------------------------------------------------------- swaps under load


def test_swaps_under_load_have_no_failed_request(tmp_path, versions):
    """A new version published, then deleted again (a rollback), while clients post: every answer is a 200
    from one whole version."""
    base = str(tmp_path / "m")
    publish(versions, base, 1)
    cfg = tmp_path / "models.config"
    write_config(cfg, config(base))
    ref = versions["ref"]
    with Server("unused", port=0, poll_s=POLL_S, model_config_file=str(cfg)) as s:
        url, body = f"{s.url}/v1/models/m:predict", {"instances": versions["x"].tolist()}
        answers, errors, stop = [[], [], []], [], threading.Event()

        def client(out):
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        r = session.post(url, json=body, timeout=30)
                        out.append((r.status_code, np.array([p["probabilities"] for p in r.json()["predictions"]])
                                    if r.status_code == 200 else r.text))
                    except Exception as e:  # noqa: BLE001 - counted as a failure
                        errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(out,)) for out in answers]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)
            publish(versions, base, 2)
            wait_for(serving(s, 2))
            time.sleep(0.3)
            shutil.rmtree(os.path.join(base, "2"))
            wait_for(serving(s, 1))
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert not errors, errors[:3]
    assert sum(map(len, answers)) > 20
    for out in answers:
        assert [a for code, a in out if code != 200] == []
        which = [next((v for v in (1, 2) if np.allclose(p, ref[v], atol=1e-6)), 0) for _, p in out]
        assert 0 not in which
        assert which[0] == 1 and which[-1] == 1 and 2 in which
