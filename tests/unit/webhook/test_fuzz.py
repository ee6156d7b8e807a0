"""Hypothesis against the real HTTPS server: malformed JSON, huge bodies, wrong kinds, unicode
tricks. Every case gets a 4xx or a clean denial: never a 500, never an admit."""

from __future__ import annotations

import contextlib
import copy
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from samplerguard.errors import PolicyError
from samplerguard.policy import parse_policy
from samplerguard.webhook import (
    Admission,
    FilePolicySource,
    ReloadingCertificate,
    StaticNamespaceLabels,
    StaticPolicySource,
    WebhookConfig,
    WebhookServer,
)
from tests.support.webhook import (
    REGISTRY,
    RegistryDouble,
    encode,
    policy,
    review,
    workload,
    write_self_signed,
)

SIGNED = f"{REGISTRY}/acme/sampler:1.0"
UNSIGNED = f"{REGISTRY}/acme/unsigned:1.0"
FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("fuzz")
    cert, key = tmp / "tls.crt", tmp / "tls.key"
    write_self_signed(cert, key)
    registry = RegistryDouble()
    registry.push(SIGNED)
    registry.push(UNSIGNED, signed=False)
    config = WebhookConfig(port=0, certfile=str(cert), keyfile=str(key), max_body_bytes=256 << 10)
    admission = Admission(
        config,
        StaticPolicySource([parse_policy(policy("acme", f"{REGISTRY}/acme/**"))]),
        registry,
        registry,
        namespaces=StaticNamespaceLabels({"ml": {"samplerguard.dev/enforce": "true"}}),
    )
    with (
        WebhookServer(config, admission, ReloadingCertificate(cert, key)) as srv,
        httpx.Client(
            base_url=srv.url, verify=ssl.create_default_context(cafile=str(cert)), timeout=10
        ) as client,
    ):
        yield client


def _never_admits(client: httpx.Client, body: bytes, path: str = "/mutate") -> None:
    try:
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    except (httpx.RemoteProtocolError, httpx.WriteError):
        return  # closed on an oversized body before the answer was read: not an admit
    assert r.status_code != 500, r.text
    if r.status_code == 200:
        response = r.json()["response"]
        assert response["allowed"] is False, response
        assert response["status"]["reason"] != "InternalError", response
    else:
        assert 400 <= r.status_code < 500, r.text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
tricky_text = st.text(
    alphabet=st.sampled_from(
        [*"abcz019:/@._-", "\u200b", "\u202e", "\u0430", "\uff52", "\x00", "\n", " ", "é", "🙂"]
    ),
    max_size=60,
)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(fuzz_client: httpx.Client, body: bytes) -> None:
    _never_admits(fuzz_client, body)


@FUZZ
@given(st.data())
def test_truncated_and_nested_json(fuzz_client: httpx.Client, data: st.DataObject) -> None:
    text = encode(review(workload("Pod", UNSIGNED)))
    cut = data.draw(st.integers(0, len(text) - 1))
    _never_admits(fuzz_client, text[:cut])
    depth = data.draw(st.sampled_from([1, 64, 300, 3000]))
    _never_admits(fuzz_client, b'{"a":' * depth + b"1" + b"}" * depth)


@FUZZ
@given(st.sampled_from(["/mutate", "/validate"]), tricky_text, st.sampled_from(["front", "back"]))
def test_unicode_image_tricks(fuzz_client: httpx.Client, path: str, noise: str, where: str) -> None:
    image = noise + SIGNED if where == "front" else SIGNED.replace("sampler", "sampler" + noise)
    if image == SIGNED:
        image = UNSIGNED
    body = review(workload("Pod", image, labels={"app": noise[:20] or "x"}))
    _never_admits(
        fuzz_client, json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"), path
    )


@FUZZ
@given(
    st.text(max_size=30).filter(
        lambda k: (
            k
            not in {
                "Pod",
                "Deployment",
                "StatefulSet",
                "DaemonSet",
                "ReplicaSet",
                "Job",
                "CronJob",
                "ReplicationController",
            }
        )
    ),
    st.sampled_from(["", "apps", "batch", "v1", "evil.io"]),
)
def test_wrong_kinds(fuzz_client: httpx.Client, kind: str, group: str) -> None:
    body = review(workload("Pod", UNSIGNED))
    body["request"]["kind"] = {"group": group, "version": "v1", "kind": kind}
    _never_admits(fuzz_client, encode(body), "/validate")


@FUZZ
@given(
    st.sampled_from(
        [
            ("spec",),
            ("spec", "containers"),
            ("spec", "containers", 0),
            ("spec", "containers", 0, "name"),
            ("spec", "initContainers"),
            ("spec", "volumes"),
            ("metadata",),
            ("metadata", "labels"),
            ("metadata", "annotations"),
            ("spec", "containers", 0, "env"),
        ]
    ),
    json_values,
)
# volumes that are not a list of objects reached the injection's hostPath check (a 500)
@example(("spec", "volumes"), True)
@example(("spec", "volumes"), 1.5)
@example(("spec", "volumes"), ["a"])
def test_shapes_of_the_object(fuzz_client: httpx.Client, path: tuple[Any, ...], value: Any) -> None:
    obj = workload("Pod", SIGNED, UNSIGNED)
    node: Any = obj
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = copy.deepcopy(value)
    # The unsigned container must survive for "never an admit" to be the right expectation.
    spec = obj.get("spec")
    if not (
        isinstance(spec, dict)
        and isinstance(spec.get("containers"), list)
        and any(isinstance(c, dict) and c.get("image") == UNSIGNED for c in spec["containers"])
    ):
        obj["spec"] = {"containers": [{"name": "u", "image": UNSIGNED}], "junk": value}
    _never_admits(fuzz_client, encode(review(obj)))


@FUZZ
@given(
    st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    st.sampled_from(["request", "top"]),
)
def test_envelope_fields(fuzz_client: httpx.Client, extra: dict[str, Any], where: str) -> None:
    body = review(workload("Pod", UNSIGNED))
    target = body["request"] if where == "request" else body
    for key, value in extra.items():
        if key in ("operation", "subResource", "namespace", "dryRun"):
            continue  # these can legitimately change the answer to an admit
        target[key] = value
    _never_admits(fuzz_client, encode(body))


def test_huge_body(fuzz_client: httpx.Client) -> None:
    body = review(workload("Pod", UNSIGNED))
    body["request"]["object"]["metadata"]["annotations"] = {"x": "y" * (300 << 10)}
    _never_admits(fuzz_client, encode(body))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["kind", "metadata", "spec", "apiVersion", "x"]), json_values)
)
def test_policies_parse_or_raise_policy_error(body: dict[str, Any]) -> None:
    body.setdefault("kind", "ClusterSamplerPolicy")
    with contextlib.suppress(PolicyError):
        parse_policy(body)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(max_size=400),
        st.builds(
            lambda doc, key, value: _mutated(doc, key, value),
            st.just(policy("p", "reg.io/**")),
            st.sampled_from(
                ["kind", "metadata", "spec", "mode", "images", "glob", "authorities", "namespace"]
            ),
            json_values,
        ),
    )
)
def test_policy_files_load_or_raise_policy_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    try:
        source = FilePolicySource(tmp_path / "p.yaml")
    except PolicyError:
        return
    for loaded in source.snapshot().policies:
        assert loaded.metadata.uid and loaded.metadata.resource_version


def _mutated(doc: dict[str, Any], key: str, value: Any) -> str:
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    if key in ("kind", "metadata", "spec"):
        doc[key] = value
    elif key == "mode":
        spec["mode"] = value
    elif key == "images":
        spec["images"] = value
    elif key == "namespace":
        doc["metadata"]["namespace"] = value
    else:
        spec["images"][0][key] = value
    return yaml.safe_dump(doc, allow_unicode=True)
