"""Config loading: typed, validated, errors that name the key and the value."""

import pytest

from pipelines.config import Config, ConfigError, config_from_dict, load_config


def test_defaults_and_overrides():
    cfg = config_from_dict({}, ["train.epochs=3", "data.source=npz:../x.npz", "model.params.filters=[8, 16]"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3
    assert cfg.data.source == "npz:../x.npz"
    assert cfg.model.params == {"filters": [8, 16]}
    assert cfg.train.learning_rate == pytest.approx(1e-3)


def test_int_widens_to_float_but_not_the_reverse():
    assert config_from_dict({"train": {"learning_rate": 1}}).train.learning_rate == 1.0
    with pytest.raises(ConfigError, match=r"train\.epochs: must be an integer \(got 2\.5\)"):
        config_from_dict({"train": {"epochs": 2.5}})


def test_a_number_in_exponent_form_without_a_dot_is_a_number_in_a_file_and_on_the_command_line(tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-4` as a string; the usual way to write a learning rate was refused."""
    cfg = config_from_dict({}, ["train.learning_rate=1e-4", "train.weight_decay=5E-2"])
    assert cfg.train.learning_rate == 1e-4 and cfg.train.weight_decay == 0.05
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 3e-4\n")
    assert load_config(str(path), []).train.learning_rate == pytest.approx(3e-4)
    assert config_from_dict({}, ["description=1e"]).description == "1e"  # not a number: text
    named = config_from_dict({"name": "1e3", "description": "2E5"})  # strings that read as numbers: written quoted
    path.write_text(named.to_yaml())
    again = load_config(str(path), [])
    assert (again.name, again.description) == ("1e3", "2E5")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"epochz": 1}}, r"train\.epochz: unknown key \(did you mean train\.epochs\? known keys"),
        ({"trian": {"epochs": 1}}, r"trian: unknown key \(did you mean train\? known keys"),
        ({"bogus": {}}, r"bogus: unknown key \(known keys"),  # nothing close: no suggestion
        ({"train": {"epochs": -1}}, r"train\.epochs: must be at least 1 \(got -1\)"),
        ({"train": {"heartbeat_timeout_s": 0}}, r"train\.heartbeat_timeout_s: must be at least 1 \(got 0\)"),
        ({"train": {"epochs": "ten"}}, r"train\.epochs: must be an integer \(got 'ten'\)"),
        ({"model": {"name": "resnet9000"}}, r"model\.name: unknown model.*\(got 'resnet9000'\)"),
        ({"model": {"params": {"widht": 3}}}, r"model\.params: unknown key\(s\) \['widht'\] .*it takes \[.*\], and "
         r"as every builder pyramid_scales, pyramid_pool, pyramid_bandlimit, invariant"),
        ({"model": {"name": "keras_app:Bogus"}},
         r"model\.name: unknown keras\.applications model 'Bogus'; available: "),
        ({"model": {"params": {"filtres": [4]}}}, r"unknown key\(s\) \['filtres'\] .*\(filtres: did you mean filters\?\)"),
        ({"data": {"source": "s3://bucket"}}, r"data\.source: must be .*\(got 's3://bucket'\)"),
        ({"data": {"validation_fraction": 1.5}}, r"data\.validation_fraction: must be in \(0, 1\) \(got 1\.5\)"),
        ({"augment": {"rotation": {"max_degrees": 400}}}, r"augment\.rotation\.max_degrees: .*\(got 400\.0\)"),
        ({"train": {"mixed_precision": "yes"}}, r"train\.mixed_precision: must be true or false \(got 'yes'\)"),
        ({"data": "synthetic"}, r"data: must be a mapping \(got 'synthetic'\)"),
    ],
)
def test_errors_name_the_key_and_value(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_override_errors():
    with pytest.raises(ConfigError, match="expected key=value"):
        config_from_dict({}, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key"):
        config_from_dict({}, ["train.nope=1"])


def test_a_mapping_written_as_one_on_the_command_line_is_a_mapping_and_other_text_stays_text():
    cfg = config_from_dict({"model": {"name": "resnet", "params": {"filters": [4, 8]}}},
                           ["model.name=baseline_cnn", "model.params={}", "model.params.invariant.group=D4"])
    assert cfg.model.params == {"invariant": {"group": "D4"}}
    cfg = config_from_dict({}, ["model.params.invariant={group: D4, method: canonicalize}"])
    assert cfg.model.params == {"invariant": {"group": "D4", "method": "canonicalize"}}
    assert config_from_dict({}, ["description=a: b"]).description == "a: b"  # not written as a mapping: text
    assert config_from_dict({}, ["description={draft}"]).description == "{draft}"  # a string field: its text
    with pytest.raises(ConfigError, match=r"override 'model.params=\{a: 1, a: 2\}': the key 'a' is given twice"):
        config_from_dict({}, ["model.params={a: 1, a: 2}"])  # as a config file's YAML: refused, not the last kept
    merged = config_from_dict({}, ["model.params={b: &x {c: 1}, d: {<<: *x}}"], check_model=False)  # merged
    assert merged.model.params == {"b": {"c": 1}, "d": {"c": 1}}
    with pytest.raises(ConfigError, match="must be a mapping"):  # an unhashable key: not YAML that loads, the text
        config_from_dict({}, ["model.params={[1]: 2}"])
    cfg = config_from_dict({}, ["model.params.invariant={group: D4}"])
    assert type(cfg.model.params["invariant"]) is dict and "invariant:\n      group: D4\n" in cfg.to_yaml()


def test_a_model_changed_on_the_command_line_with_the_configs_params_says_how_to_clear_them():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['filters'\].* model.params=\{\} clears them"):
        config_from_dict({"model": {"name": "resnet", "params": {"filters": [4, 8]}}},
                         ["model.name=keras_app:MobileNetV2"])
    with pytest.raises(ConfigError, match=r"model.params=\{\} clears them"):  # another key given too: the hint
        config_from_dict({"model": {"name": "resnet", "params": {"filters": [4, 8]}}},
                         ["model.name=keras_app:MobileNetV2", "model.params.invariant.group=D4"])
    for config, overrides in [  # no hint: the unknown key is the user's own, or the model is the config's own
            ({"model": {"name": "resnet", "params": {}}}, ["model.name=baseline_cnn", "model.params.blocks=2"]),
            ({"model": {"name": "resnet", "params": {"filtres": [4]}}}, ["model.name=resnet"])]:
        with pytest.raises(ConfigError, match=r"unknown key") as e:
            config_from_dict(config, overrides)
        assert "clears them" not in str(e.value), overrides


def test_load_config_files(tmp_path):
    good = tmp_path / "exp.yaml"
    good.write_text("train:\n  epochs: 2\n")
    cfg = load_config(good)
    assert cfg.name == "exp" and cfg.train.epochs == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 2\n  epochs: 30\n")  # YAML would keep 30 without a word
    with pytest.raises(ConfigError, match=r"malformed YAML: the key 'epochs' is given twice\s+in .*line 3"):
        load_config(twice)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_every_shipped_config_loads():
    import glob

    paths = glob.glob("pipelines/configs/*.yaml")
    assert "pipelines/configs/default.yaml" in paths
    for path in paths:
        load_config(path)


def test_round_trip_through_yaml():
    import yaml

    cfg = config_from_dict({"train": {"epochs": 4}, "model": {"params": {"filters": [4]}}})
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    flat = cfg.flat()
    assert flat["train.epochs"] == 4 and flat["model.params.filters"] == [4]


def test_a_run_on_other_data_is_named_after_it_and_described_unless_told():
    import os

    from pipelines.config import load_config, name_from_source

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    default = os.path.join(root, "pipelines", "configs", "default.yaml")
    pets = load_config(default, ["data.source=folder:/data/pets/"])
    assert pets.name == pets.export_name == pets.registered_model_name == "pets"
    assert pets.description == "baseline_cnn on folder:/data/pets/ (from config 'default')"
    mine = load_config(default, ["data.source=folder:/data/pets", "name=mine"])
    assert mine.name == "mine" and "folder:/data/pets" in mine.description
    assert load_config(default, ["data.source=synthetic"]).name == "default"  # the config's own data
    assert load_config(default).name == "default"
    assert [name_from_source(s) for s in ("npz:x/digits.npz", "tfds:mnist", "tfrecord:/d/eurosat/*.tfrecord",
                                          "folder:/data/my pets")] == ["digits", "mnist", "eurosat", "my-pets"]


def test_names_that_are_not_a_plain_folder_name_are_refused_and_every_folder_gets_a_name_of_its_own(tmp_path):
    import os

    import pytest

    from pipelines.config import ConfigError, config_from_dict, name_from_source

    for override in ("name=..", "name=.hidden", "name=a b", "export.name=../evil", "export.name=x/y"):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=rf"{key}: must be letters, digits, '_', '.' and '-'"):
            config_from_dict({}, [override])
    assert config_from_dict({}, ["name=pets_v2.1-a"]).export_name == "pets_v2.1-a"
    assert name_from_source("folder:/data/Forêt") == "Foret"
    cjk = [name_from_source(f"folder:/data/{d}") for d in ("森林", "河流")]
    assert all(n.startswith("folder-") and len(n) == 15 for n in cjk) and cjk[0] != cjk[1]
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert name_from_source("folder:.") == name_from_source(f"folder:{tmp_path}") != "folder"
    finally:
        os.chdir(cwd)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pipelines.config import load_config

    same = load_config(os.path.join(root, "pipelines", "configs", "default.yaml"), ["data.source=folder:/x/default"])
    assert same.name == same.export_name == "default-folder"  # never the config's own model's name
