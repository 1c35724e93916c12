"""Which models a request may name. The store's names always; a server path or a URI (file://,
http(s)://, s3://, gs://, hf://) only when the operator allows it (--allow-model-paths) or gave
it on the command line: otherwise any client could make the server copy its folders into the
store, fetch from hosts inside its network, or read buckets with the server's credentials."""

from __future__ import annotations

from ember.errors import InvalidRequestError


def is_location(name: str) -> bool:
    """Whether `name` is a server path or a URI rather than a store name."""
    from ember.registry.remote import is_uri

    text = name.strip()
    return is_uri(text) or text.startswith((".", "/", "~"))


def refuse_location(name: str, param: str = "model") -> InvalidRequestError:
    return InvalidRequestError(
        f"'{name}' is a server path or URI, and this server takes model names from its store "
        "only (see /api/tags or 'ember list'); pull the model on the server with 'ember pull', "
        "or start it with --allow-model-paths (EMBER_ALLOW_MODEL_PATHS=1) to allow paths and "
        "URIs in requests",
        param=param,
    )
