"""Data sources, by name: a source string `name` or `name:<argument>` (`npz:<path>`), one module per source.

Each module registers its opener (data/sources/registry.py);
importing the module is what makes the source known, and the lines below
import each one. A new source is a new module here and one line below (see
CONTRIBUTING.md). `data.streaming.open_source` is the entry that opens any of
them; `data.sources.common` holds what they share.
"""

from data.options import DataSourceError
from data.sources.common import VALIDATION_FOLDERS, stratified_split
from data.sources.registry import Source, available_sources, get_source, local_path, register_source, source_usage

# Importing a source module registers it; the order here is the order users read them in.
from data.sources import synthetic  # noqa: E402,F401
from data.sources import npz  # noqa: E402,F401
from data.sources import folder  # noqa: E402,F401
from data.sources import tfrecord  # noqa: E402,F401
from data.sources import tfds  # noqa: E402,F401

__all__ = ["DataSourceError", "Source", "VALIDATION_FOLDERS", "available_sources", "get_source", "local_path",
           "register_source", "source_usage", "stratified_split"]
