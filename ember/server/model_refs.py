"""Which models a request may name. The store's names always; a server path or a URI (file://,
http(s)://, s3://, gs://, hf://) only when the operator allows it (--allow-model-paths) or gave
it on the command line: otherwise any client could make the server copy its folders into the
store, fetch from hosts inside its network, or read buckets with the server's credentials."""

from __future__ import annotations

from ember.errors import InvalidRequestError
from ember.registry.remote import is_location


def check_model_ref(allowed: bool, name: str, param: str = "model") -> None:
    """400 for a path or URI named in a request, unless paths and URIs are `allowed`."""
    if allowed or not is_location(name):
        return
    raise InvalidRequestError(
        f"'{name}' is a server path or URI, and this server takes model names from its store "
        "only (see /api/tags or 'ember list'); pull the model on the server with 'ember pull', "
        "or start it with --allow-model-paths (EMBER_ALLOW_MODEL_PATHS=1) to allow paths and "
        "URIs in requests",
        param=param,
    )
