"""`layers` exports every public layer, and each family package its own: `import layers` registers them all."""

import importlib
import inspect
import pkgutil

import keras

import layers

FAMILIES = ("shift", "harmonic", "group", "scale", "invariance")


def _public_layer_classes():
    """Every Keras layer class registered under 'invariant>' by a module of layers/ (private modules aside)."""
    found = {}
    for m in pkgutil.walk_packages(layers.__path__, "layers."):
        if m.name.endswith("._tf_fast"):
            continue
        module = importlib.import_module(m.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, keras.layers.Layer) and obj.__module__ == module.__name__
                    and keras.saving.get_registered_name(obj).startswith("invariant>")):
                found[name] = obj
    return found


def test_every_registered_layer_is_exported_by_layers_and_its_family():
    public = _public_layer_classes()
    assert len(public) == 26, sorted(public)
    assert sorted(layers.__all__) == sorted(public)
    for name, cls in public.items():
        assert getattr(layers, name) is cls
        family = cls.__module__.split(".")[1]
        assert family in FAMILIES, cls.__module__
        assert getattr(importlib.import_module(f"layers.{family}"), name) is cls


def test_serialization_names_are_unchanged():
    """Saved models name each layer 'invariant>ClassName': the folders must not change that."""
    for name, cls in _public_layer_classes().items():
        assert keras.saving.get_registered_name(cls) == f"invariant>{name}"
        assert keras.saving.get_registered_object(f"invariant>{name}") is cls
