"""``POST /validate-policy`` over the real HTTPS server: a policy the models refuse is refused
when it is applied, with the model's message."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.webhook import post, review

EXAMPLE = Path(__file__).parents[3] / "policies" / "slsa-generated-sd15.yaml"


def _policy_review(obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    body = review(obj, kind="ClusterSamplerPolicy", namespace="", operation=operation)
    for key in ("kind", "requestKind"):
        body["request"][key] = {
            "group": "samplerguard.dev",
            "version": "v1alpha1",
            "kind": "ClusterSamplerPolicy",
        }
    return body


def test_valid_policy_is_admitted(client: httpx.Client) -> None:
    policy = yaml.safe_load(EXAMPLE.read_text())
    assert post(client, "/validate-policy", _policy_review(policy))["allowed"] is True


def test_condition_that_does_not_compile_is_refused(client: httpx.Client) -> None:
    policy = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    condition = policy["spec"]["attestations"][0]["anyOf"][1]["conditions"][0]
    condition["expression"] = "predicate.buildType =="
    answer = post(client, "/validate-policy", _policy_review(policy))
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 422
    message = answer["status"]["message"]
    assert "spec.attestations.0.anyOf.1.conditions.0.expression" in message
    assert "is not valid CEL" in message


def test_identity_pattern_re2_refuses(client: httpx.Client) -> None:
    policy = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    identity = policy["spec"]["images"][0]["authorities"][0]["keyless"]["identities"][0]
    identity["subjectRegExp"] = "^https://github\\.com/(?!evil)"
    answer = post(client, "/validate-policy", _policy_review(policy, "UPDATE"))
    assert answer["allowed"] is False
    assert "is not a valid RE2 regular expression" in answer["status"]["message"]


def test_other_objects_and_deletes_pass(client: httpx.Client) -> None:
    pod = review({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})
    assert post(client, "/validate-policy", pod)["allowed"] is True
    broken = _policy_review({"kind": "ClusterSamplerPolicy"}, "DELETE")
    assert post(client, "/validate-policy", broken)["allowed"] is True
    r = client.post("/validate-policy", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not an AdmissionReview" in r.json()["error"]
