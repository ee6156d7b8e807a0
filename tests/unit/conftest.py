"""Unit-test fixtures shared across components.

``crds`` / ``crd_validate``: a CRD-schema check without a cluster, OpenAPI v3 via jsonschema
plus the CEL rules via cel-python, walking the schema the way the API server's structural
validator does. The imports are lazy so other components' tests do not pay for them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "charts" / "samplerguard" / "crds"


def load_crds() -> dict[str, dict[str, Any]]:
    """kind -> CRD, from the committed files."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def _cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    import celpy
    from celpy.adapter import json_to_cel
    from celpy.evaluation import CELEvalError

    env = celpy.Environment()
    errors: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                errors += _cel_errors(props[key], sub, f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _cel_errors(schema["additionalProperties"], sub, f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, sub in enumerate(value):
            errors += _cel_errors(schema["items"], sub, f"{path}[{i}]")
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        ok: object
        try:
            ok = program.evaluate({"self": json_to_cel(value)})
        except CELEvalError:
            ok = False
        if not isinstance(ok, celpy.celtypes.BoolType) or not bool(ok):
            errors.append(f"{path}: Invalid value: {rule['message']}")
    return errors


def crd_errors(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """What the API server would refuse ``obj`` for (OpenAPI first, CEL only if it passes,
    as the server does)."""
    import jsonschema

    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft4Validator(schema)
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    if errors:
        return errors
    return _cel_errors(schema, obj, "")


@pytest.fixture(scope="session")
def crds() -> dict[str, dict[str, Any]]:
    return load_crds()


@pytest.fixture(scope="session")
def crd_validate(
    crds: dict[str, dict[str, Any]],
) -> Callable[[dict[str, Any]], list[str]]:
    def check(obj: dict[str, Any]) -> list[str]:
        return crd_errors(crds[obj["kind"]], obj)

    return check
