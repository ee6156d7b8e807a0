"""The CRDs are generated from the models, structural, valid Kubernetes objects, and committed."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes.client import V1CustomResourceDefinition
from kubernetes.client.api_client import ApiClient

from samplerguard.cli import main
from samplerguard.policy.crd import all_crds, render_all, structural_schema

CRD_DIR = Path(__file__).resolve().parents[3] / "charts" / "samplerguard" / "crds"

K8S_VERSION = "1.36.0"


def test_committed_crds_match_the_models() -> None:
    rendered = render_all()
    committed = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    assert set(committed) == set(rendered)
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} drifted: run `samplerguard crds --out {CRD_DIR}`"


def test_cli_check_reports_drift(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--out", str(tmp_path)]) == 0
    assert main(["crds", "--out", str(tmp_path), "--check"]) == 0
    victim = tmp_path / "samplerguard.dev_samplerpolicies.yaml"
    victim.write_text(victim.read_text().replace("maxItems: 32", "maxItems: 33"))
    capsys.readouterr()
    assert main(["crds", "--out", str(tmp_path), "--check"]) == 1
    assert (
        "samplerguard.dev_samplerpolicies.yaml: differs from the models" in capsys.readouterr().out
    )


@pytest.mark.parametrize("crd", all_crds(), ids=lambda c: c["metadata"]["name"])
def test_crd_is_a_valid_kubernetes_object(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(copy.deepcopy(crd), K8S_VERSION, strict=True)
    # And it round-trips through the client's typed model without losing a field.
    client = ApiClient()
    model = client._ApiClient__deserialize(crd, V1CustomResourceDefinition)  # type: ignore[attr-defined]
    assert model.spec.versions[0].schema.open_apiv3_schema.type == "object"
    assert client.sanitize_for_serialization(model) == crd


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Structural-schema rules the API server enforces (apiextensions validation)."""
    problems: list[str] = []
    for bad in ("$ref", "anyOf", "oneOf", "allOf", "not", "nullable", "default", "$defs"):
        if bad in node:
            problems.append(f"{path}: {bad} is not allowed here")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties false")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    for key, sub in node.get("properties", {}).items():
        problems += _walk(sub, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        problems += _walk(node["items"], f"{path}[]")
    if node.get("x-kubernetes-list-type") == "map":
        keys = node["x-kubernetes-list-map-keys"]
        item = node["items"]
        assert all(k in item.get("required", []) for k in keys), f"{path}: map keys not required"
    return problems


@pytest.mark.parametrize("crd", all_crds(), ids=lambda c: c["metadata"]["name"])
def test_crd_schema_is_structural(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []


def test_policy_crds_have_status_columns_and_short_names() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in all_crds()}
    for kind, shorts in (("ClusterSamplerPolicy", "csp"), ("SamplerPolicy", "sp")):
        version = crds[kind]["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert shorts in crds[kind]["spec"]["names"]["shortNames"]
        columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
        assert columns["Mode"] == ".spec.mode"
        assert columns["Images"] == ".spec.images[*].glob"
        assert columns["Verdict"] == ".status.lastVerdict"
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert crds["ClusterSamplerPolicy"]["spec"]["scope"] == "Cluster"
    assert crds["PolicyReport"]["spec"]["names"]["shortNames"] == ["polr"]
    assert crds["ClusterPolicyReport"]["spec"]["group"] == "wgpolicyk8s.io"


def test_report_crd_accepts_other_engines_rules(
    crd_validate: Callable[[dict[str, Any]], list[str]],
) -> None:
    # Kyverno writes its own rule names into the same CRD; ours must not refuse them.
    report = {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {"name": "x", "namespace": "ns"},
        "results": [{"policy": "require-labels", "rule": "check-team", "result": "fail"}],
        "summary": {"pass": 0, "fail": 1},
    }
    assert crd_validate(report) == []
    report["results"][0]["result"] = "broken"
    assert crd_validate(report)


def test_structural_schema_refuses_real_unions() -> None:
    schema = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    with pytest.raises(ValueError, match="union of 2 types"):
        structural_schema(schema)


def test_optional_inlines_and_exclusive_bounds_convert() -> None:
    schema = {
        "$defs": {"X": {"type": "object", "title": "X", "properties": {"a": {"type": "string"}}}},
        "type": "object",
        "properties": {
            "x": {"anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}], "default": None},
            "n": {"type": "number", "exclusiveMinimum": 0},
            "c": {"const": "only"},
        },
    }
    out = structural_schema(schema)
    assert out["properties"]["x"] == {"type": "object", "properties": {"a": {"type": "string"}}}
    assert out["properties"]["n"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert out["properties"]["c"] == {"enum": ["only"]}
