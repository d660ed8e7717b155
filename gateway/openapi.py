"""The OpenAPI 3.1 description of the gateway's HTTP API: `gateway/openapi.yaml`, served at `/openapi.json`.

The document lives beside the code as YAML (what API tools read); it is loaded and checked once when the app
is built, so a broken document stops the gateway at start instead of failing a client. The tests validate it
fully as OpenAPI 3.1, compare its paths with the app's routes and run Schemathesis against a live gateway.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

from gateway import __version__


class OpenApiError(ValueError):
    """gateway/openapi.yaml is not a usable OpenAPI 3.1 document."""


@cache
def openapi_spec() -> dict:
    text = resources.files("gateway").joinpath("openapi.yaml").read_text(encoding="utf-8")
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict) or not str(spec.get("openapi", "")).startswith("3.1"):
        raise OpenApiError("gateway/openapi.yaml must be an OpenAPI 3.1 document")
    if not isinstance(spec.get("paths"), dict) or not spec["paths"]:
        raise OpenApiError("gateway/openapi.yaml has no paths")
    for ref in _refs(spec):
        _resolve(spec, ref)
    spec["info"]["version"] = __version__
    return spec


def _refs(node: Any):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(spec: dict, ref: str) -> Any:
    if not ref.startswith("#/"):
        raise OpenApiError(f"gateway/openapi.yaml: only local references are allowed, got {ref!r}")
    node: Any = spec
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            raise OpenApiError(f"gateway/openapi.yaml: {ref!r} points at nothing")
        node = node[part]
    return node
