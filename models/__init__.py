"""Model builders, chosen by registered name. Never reads configs; the one file read is a local weights file
given to a `keras_app:<Name>` backbone (models/keras_app.py)."""

from models.registry import available_models, build_model, check_params, get_spec, register

# Importing a builder module registers it.
from models import baseline  # noqa: E402,F401
from models import hnet  # noqa: E402,F401
from models import sesn  # noqa: E402,F401
from models import resnet  # noqa: E402,F401
from models.antialias import antialias  # noqa: E402
from models import gcnn  # noqa: E402,F401
from models import pyramid as _pyramid  # noqa: E402,F401
from models.invariant import invariant  # noqa: E402
from models.plain import to_plain  # noqa: E402  (any model -> stock Keras layers, for inference)

__all__ = ["antialias", "available_models", "build_model", "check_params", "get_spec", "invariant", "register", "to_plain"]
