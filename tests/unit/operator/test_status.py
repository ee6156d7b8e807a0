"""Policy validation as status conditions: precise, and never an exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from samplerguard.operator.status import evaluate

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def _body(name: str = "demo-tiny.yaml") -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((POLICIES / name).read_text())
    body["metadata"].update(uid="u-1", generation=3)
    return body


def test_valid_policy_is_ready() -> None:
    ev = evaluate(_body(), now="2026-11-23T00:00:00Z")
    assert ev.ok
    cond = ev.status["conditions"][0]
    assert cond["type"] == "Ready" and cond["status"] == "True" and cond["reason"] == "Valid"
    assert cond["observedGeneration"] == 3 and ev.status["observedGeneration"] == 3
    assert "1 image rule(s), 1 attestation rule(s), mode enforce" in cond["message"]
    assert ev.result.rule == "policy" and ev.result.result == "pass"


def test_what_cel_cannot_see_reaches_the_status() -> None:
    # Passes the CRD's armour check, but the base64 inside is not a key.
    body = _body()
    key = body["spec"]["images"][0]["authorities"][0]["key"]
    key["publicKey"] = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    ev = evaluate(body)
    assert not ev.ok
    cond = ev.status["conditions"][0]
    assert cond["status"] == "False" and cond["reason"] == "Invalid"
    assert (
        "spec.images.0.authorities.0.key.publicKey: publicKey is not a PEM public key"
        in (cond["message"])
    )
    assert ev.result.result == "fail" and ev.result.severity == "low"
    assert ev.result.resources[0].kind == "ClusterSamplerPolicy"


def test_transition_time_is_kept_while_the_status_holds() -> None:
    body = _body()
    first = evaluate(body, now="2026-11-23T00:00:00Z")
    body["status"] = first.status
    again = evaluate(body, now="2026-11-24T00:00:00Z")
    assert again.status["conditions"][0]["lastTransitionTime"] == "2026-11-23T00:00:00Z"
    broken = copy.deepcopy(body)
    broken["spec"]["recipe"]["cfg"] = {"min": 9, "max": 1}
    flipped = evaluate(broken, now="2026-11-25T00:00:00Z")
    assert flipped.status["conditions"][0]["lastTransitionTime"] == "2026-11-25T00:00:00Z"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["ClusterSamplerPolicy", "SamplerPolicy", "Pod", None]),
    spec=_json,
    meta=st.one_of(_json, st.fixed_dictionaries({"name": st.text(max_size=10)})),
)
def test_any_body_yields_a_status_never_an_exception(kind: Any, spec: Any, meta: Any) -> None:
    ev = evaluate({"kind": kind, "metadata": meta if isinstance(meta, dict) else {}, "spec": spec})
    assert ev.status["conditions"][0]["status"] in ("True", "False")
    if not ev.ok:
        assert ev.status["conditions"][0]["message"]
