"""The local model store: names, `ember list`/`show`/`rm`/`cp`/`pull`, the built-in `tiny` model,
and models named by URI (remote.py)."""

from ember.registry.details import ModelDetails
from ember.registry.names import ModelName, parse_name
from ember.registry.store import LocalModel, ModelStore, default_home

__all__ = ["LocalModel", "ModelDetails", "ModelName", "ModelStore", "default_home", "parse_name"]
