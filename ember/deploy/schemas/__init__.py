"""JSON Schemas of the custom resources ember writes (Knative Service for Cloud Run, PodMonitoring,
KEDA ScaledObject): minimal, covering the fields ember emits, strict about unknown ones."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_BY_KIND = {
    ("serving.knative.dev/v1", "Service"): "knative_service.json",
    ("monitoring.googleapis.com/v1", "PodMonitoring"): "podmonitoring.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
}


def schema_for(doc: dict[str, Any]) -> dict[str, Any]:
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key not in _BY_KIND:
        raise KeyError(f"no schema for {key[0]} {key[1]}")
    text = resources.files(__package__).joinpath(_BY_KIND[key]).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_custom(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `doc` breaks its kind's schema (needs jsonschema)."""
    import jsonschema

    jsonschema.validate(doc, schema_for(doc))
