"""Example policies pass the CRD (OpenAPI + CEL) and the model; bad ones fail both, precisely."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from samplerguard.errors import PolicyError
from samplerguard.policy import parse_policy

POLICIES = sorted((Path(__file__).resolve().parents[3] / "policies").glob("*.yaml"))
Validate = Callable[[dict[str, Any]], list[str]]


def _load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((POLICIES[0].parent / name).read_text())
    return body


def test_there_is_an_example_per_model_family() -> None:
    names = {p.name for p in POLICIES}
    assert {
        "sd15-euler-dpmpp2m.yaml",
        "sdxl.yaml",
        "edm.yaml",
        "lcm-few-step.yaml",
        "flow-matching-euler.yaml",
        "demo-tiny.yaml",
    } <= names


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_example_policy_is_accepted(path: Path, crd_validate: Validate) -> None:
    body = yaml.safe_load(path.read_text())
    assert crd_validate(body) == []
    policy = parse_policy(body)
    spec = policy.spec
    # Each example sets every part the issue asks for.
    assert spec.images and spec.attestations and spec.recipe is not None
    assert spec.golden_digests.model_weights
    assert 0 < spec.verification.fraction <= 1


def _mutate(path: str, value: Any, base: str = "sd15-euler-dpmpp2m.yaml") -> dict[str, Any]:
    body = copy.deepcopy(_load(base))
    node: Any = body
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return body


_DELETE = object()
_ED25519 = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAu2llTDwjr2OfpM2eTtqeRH+FQuQBZjRkX/tRQHsO7zE=\n"
    "-----END PUBLIC KEY-----\n"
)
_KEY = "spec.images.0.authorities.0.key"
_ID = "spec.images.0.authorities.1.keyless.identities.0"

# (case, mutation, what the API server says (substring), what the model says (substring))
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "wrong type",
        _mutate("spec.recipe.steps.min", "twenty"),
        "spec.recipe.steps.min: 'twenty' is not of type 'integer'",
        "spec.recipe.steps.min: Input should be a valid integer",
    ),
    (
        "cfg min > max",
        _mutate("spec.recipe.cfg", {"min": 9.0, "max": 2.0}),
        ".spec.recipe.cfg: Invalid value: min must be less than or equal to max",
        "spec.recipe.cfg: min 9.0 is greater than max 2.0",
    ),
    (
        "steps min > max",
        _mutate("spec.recipe.steps", {"min": 50, "max": 20}),
        ".spec.recipe.steps: Invalid value: min must be less than or equal to max",
        "spec.recipe.steps: min 50 is greater than max 20",
    ),
    (
        "unknown sampler",
        _mutate("spec.recipe.samplers", ["euler", "turbo_magic"]),
        "'turbo_magic' is not one of ['CogVideoXDDIMScheduler', 'DDIMParallelScheduler'",
        "unknown sampler(s) ['turbo_magic']",
    ),
    (
        "key that is not PEM",
        _mutate(f"{_KEY}.publicKey", "ssh-ed25519 AAAAC3Nza..."),
        "publicKey must be a PEM public key",
        "publicKey is not a PEM public key",
    ),
    (
        "both key and keyless",
        _mutate(
            "spec.images.0.authorities.1.key",
            {"publicKey": _ED25519},
        ),
        "an authority needs exactly one of key or keyless",
        "needs exactly one of key or keyless",
    ),
    (
        "identity with issuer and issuerRegExp",
        _mutate(f"{_ID}.issuerRegExp", "^https://.*$"),
        "an identity needs exactly one of issuer or issuerRegExp",
        "an identity needs exactly one of issuer or issuerRegExp",
    ),
    (
        "identity without subject",
        _mutate(f"{_ID}.subjectRegExp", _DELETE),
        "an identity needs exactly one of subject or subjectRegExp",
        "an identity needs exactly one of subject or subjectRegExp",
    ),
    (
        "regex that does not compile",
        _mutate(f"{_ID}.subjectRegExp", "^https://github.com/(acme$"),
        "subjectRegExp is not a valid regular expression",
        "subjectRegExp '^https://github.com/(acme$' is not a valid RE2 regular expression",
    ),
    (
        "threshold above the authorities",
        _mutate("spec.images.0.threshold", 3),
        "threshold exceeds the number of authorities",
        "threshold 3 exceeds the 2 authorities",
    ),
    (
        "bad golden digest",
        _mutate("spec.goldenDigests.modelWeights.0", "md5:abc"),
        "does not match '^sha256:[0-9a-f]{64}$'",
        "String should match pattern '^sha256:[0-9a-f]{64}$'",
    ),
    (
        "unknown mode",
        _mutate("spec.mode", "permissive"),
        "'permissive' is not one of ['enforce', 'warn', 'audit']",
        "Input should be 'enforce', 'warn' or 'audit'",
    ),
    (
        "both publicKey and secretRef",
        _mutate(f"{_KEY}.secretRef", {"name": "release-key"}),
        "a key needs exactly one of publicKey or secretRef",
        "a key needs exactly one of publicKey or secretRef",
    ),
    (
        "anyOf beside direct checks",
        _mutate(
            "spec.attestations.0.anyOf",
            [{"predicateType": "https://slsa.dev/provenance/v0.2"}],
        ),
        "a rule with anyOf states its checks inside anyOf",
        "has anyOf and also ['builder_ids'",
    ),
    (
        "versioned tag that is not semver",
        _mutate("spec.attestations.0.sourceVersionedTags", ["13.0"]),
        "spec.attestations.0.sourceVersionedTags.0: '13.0' does not match",
        "String should match pattern",
    ),
    (
        "ticket signer key that is not PEM",
        _mutate("spec.rng.tickets", {"signers": [{"name": "gw", "publicKey": "ssh-ed25519 AA"}]}),
        "publicKey must be a PEM public key",
        "publicKey is not a PEM public key",
    ),
    (
        "ticket rule without signers",
        _mutate("spec.rng.tickets", {"signers": []}),
        "spec.rng.tickets.signers",
        "List should have at least 1 item",
    ),
    (
        "ticket lifetime over a day",
        _mutate(
            "spec.rng.tickets",
            {"signers": [{"name": "gw", "publicKey": _ED25519}], "maxLifetimeSeconds": 86401},
        ),
        "spec.rng.tickets.maxLifetimeSeconds",
        "less than or equal to 86400",
    ),
    (
        "namespaceSelector on a SamplerPolicy",
        _mutate("spec.namespaceSelector", {"matchLabels": {"a": "b"}}, base="sdxl.yaml"),
        "spec.namespaceSelector is only allowed on ClusterSamplerPolicy",
        "spec.namespaceSelector is only allowed on ClusterSamplerPolicy",
    ),
]


@pytest.mark.parametrize(("case", "body", "server", "model"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_is_refused_by_crd_and_model(
    case: str, body: dict[str, Any], server: str, model: str, crd_validate: Validate
) -> None:
    errors = crd_validate(body)
    assert any(server in e for e in errors), errors
    with pytest.raises(PolicyError) as info:
        parse_policy(body)
    assert model in str(info.value)
    assert f"{body['kind']} '{body['metadata']['name']}' is invalid" in str(info.value)


def test_duplicate_authority_names_are_a_list_map(crds: dict[str, dict[str, Any]]) -> None:
    # The server refuses duplicate list-map keys itself; the model says so too.
    body = _mutate("spec.images.0.authorities.1.name", "platform-release-key")
    with pytest.raises(PolicyError, match="authority names repeat"):
        parse_policy(body)
    spec = crds["ClusterSamplerPolicy"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    auth = spec["properties"]["spec"]["properties"]["images"]["items"]["properties"]["authorities"]
    assert auth["x-kubernetes-list-map-keys"] == ["name"]


def test_demo_policy_pins_the_bundled_weights() -> None:
    weights = POLICIES[0].parents[1] / "src/samplerguard/models/weights/digits-unet.safetensors"
    if not weights.is_file():
        pytest.skip("the bundled weights are not built in this checkout")
    from samplerguard.sidecar.integrity import weights_file_digest

    pinned = parse_policy(_load("demo-tiny.yaml")).spec.golden_digests.model_weights
    assert weights_file_digest(weights) in pinned, "update policies/demo-tiny.yaml"


# What only the model can refuse (the webhook's /validate-policy and the operator's status
# carry its message): CEL that does not compile, authorities naming unknown rules.
MODEL_ONLY: list[tuple[str, dict[str, Any], str]] = [
    (
        "condition that does not compile",
        _mutate("spec.attestations.0.conditions", [{"expression": "predicate.x =="}]),
        "spec.attestations.0.conditions.0.expression: condition 'predicate.x ==' is not valid CEL",
    ),
    (
        "authority naming an unknown attestation rule",
        _mutate("spec.images.0.authorities.1.attestations", ["provenance"]),
        "names attestation rules ['provenance'] that spec.attestations does not define",
    ),
]


@pytest.mark.parametrize(("case", "body", "model"), MODEL_ONLY, ids=[b[0] for b in MODEL_ONLY])
def test_model_refuses_what_cel_cannot_check(case: str, body: dict[str, Any], model: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(model)):
        parse_policy(body)


def test_ticket_signers_are_ed25519_with_unique_names(crd_validate: Validate) -> None:
    good = {"signers": [{"name": "edge", "publicKey": _ED25519}]}
    body = _mutate("spec.rng.tickets", good)
    assert crd_validate(body) == []
    assert parse_policy(body).spec.rng.tickets is not None
    p256 = (
        "-----BEGIN PUBLIC KEY-----\n"
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\n"
        "q9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==\n"
        "-----END PUBLIC KEY-----\n"
    )
    with pytest.raises(PolicyError, match="ticket keys are Ed25519"):
        parse_policy(_mutate("spec.rng.tickets", {"signers": [{"name": "e", "publicKey": p256}]}))
    twice = {"signers": [good["signers"][0], good["signers"][0]]}
    with pytest.raises(PolicyError, match="ticket signer names repeat"):
        parse_policy(_mutate("spec.rng.tickets", twice))
