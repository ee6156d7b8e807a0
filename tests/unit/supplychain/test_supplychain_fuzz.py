"""Hypothesis: manifests and DSSE envelopes, malformed or forged, never pass and never crash.

Every case must end as a typed :class:`MalformedInputError` (parsers) or as a failed verdict
(the verifier): never another exception, never ``passed=True``.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samplerguard.errors import MalformedInputError
from samplerguard.policy.spec import (
    AttestationRule,
    Authority,
    ImageRule,
    KeyAuthority,
    SamplerPolicySpec,
)
from samplerguard.supplychain import ImageVerifier, Manifest
from samplerguard.supplychain.cosign import (
    ATTESTATION_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    simple_signing_payload,
    tag_for,
)
from samplerguard.supplychain.dsse import Envelope, Statement
from tests.support.fakeregistry import HOST, OCI_MANIFEST, FakeRegistry
from tests.support.publish import Signer, make_envelope, make_statement

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Through the whole verifier (fake registry, real crypto): fewer examples, each costs more.
VERIFY_SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SIGNER = Signer.generate()
SLSA = "https://slsa.dev/provenance/v1"
SPEC = SamplerPolicySpec(
    images=[
        ImageRule(
            glob=f"{HOST}/acme/*",
            authorities=[Authority(name="k", key=KeyAuthority(public_key=SIGNER.public_pem))],
        )
    ],
    attestations=[AttestationRule(name="slsa", predicate_type=SLSA, builder_ids=["b"])],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)
tricky_text = st.text(
    alphabet=st.sampled_from(["a", "\u202e", "\u0000", "\ufeff", "\U0001f600", '"', "\\", "é"]),
    max_size=30,
)


def _manifest_like() -> st.SearchStrategy[dict[str, Any]]:
    descriptor = st.fixed_dictionaries(
        {},
        optional={
            "mediaType": st.sampled_from([SIMPLE_SIGNING_MEDIA_TYPE, ATTESTATION_MEDIA_TYPE, "x"])
            | tricky_text,
            "digest": st.sampled_from(["sha256:" + "a" * 64, "sha256:zz", ""]) | tricky_text,
            "size": st.integers(-5, 1 << 40) | st.text(max_size=3),
            "annotations": st.dictionaries(tricky_text, tricky_text | st.integers(), max_size=3),
        },
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "schemaVersion": st.sampled_from([2, 1, "2", None]),
            "mediaType": st.sampled_from([OCI_MANIFEST, "application/vnd.oci.image.index.v1+json"])
            | tricky_text,
            "config": descriptor | json_values,
            "layers": st.lists(descriptor, max_size=3) | json_values,
            "manifests": st.lists(descriptor, max_size=3) | json_values,
            "annotations": json_values,
            "subject": descriptor | json_values,
        },
    )


@SETTINGS
@given(doc=_manifest_like() | json_values)
def test_manifest_parser_only_raises_malformed(doc: Any) -> None:
    raw = json.dumps(doc).encode()
    try:
        manifest = Manifest.parse(raw)
    except MalformedInputError:
        return
    assert manifest.raw == raw


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_envelope_parser_on_bytes(raw: bytes) -> None:
    with contextlib.suppress(MalformedInputError):
        Envelope.from_json(raw).statement()


@SETTINGS
@given(
    doc=st.fixed_dictionaries(
        {},
        optional={
            "payloadType": st.sampled_from(["application/vnd.in-toto+json"]) | tricky_text,
            "payload": st.binary(max_size=50).map(lambda b: base64.b64encode(b).decode())
            | tricky_text
            | json_values,
            "signatures": st.lists(
                st.fixed_dictionaries({}, optional={"keyid": tricky_text, "sig": tricky_text}),
                max_size=3,
            )
            | json_values,
        },
    )
)
def test_envelope_parser_on_shapes(doc: dict[str, Any]) -> None:
    with contextlib.suppress(MalformedInputError):
        Envelope.from_dict(doc).statement()


@SETTINGS
@given(doc=json_values)
def test_statement_parser(doc: Any) -> None:
    with contextlib.suppress(MalformedInputError):
        Statement.from_json(json.dumps(doc).encode())


def _registry_with(sig_manifest: bytes | None, att_blob: bytes | None) -> tuple[FakeRegistry, str]:
    reg = FakeRegistry()
    digest = reg.image()
    if sig_manifest is not None:
        reg.put_manifest("acme/x", sig_manifest, tag=tag_for(digest, "sig"))
    if att_blob is not None:
        layer = reg.put_blob(att_blob)
        layer["mediaType"] = ATTESTATION_MEDIA_TYPE
        config = reg.put_blob(b"{}")
        raw = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
        ).encode()
        reg.put_manifest("acme/x", raw, tag=tag_for(digest, "att"))
    return reg, digest


@VERIFY_SETTINGS
@given(doc=_manifest_like() | json_values)
def test_fuzzed_signature_manifests_never_pass(doc: Any) -> None:
    reg, _ = _registry_with(json.dumps(doc).encode(), None)
    with reg.client() as client:
        verdict = ImageVerifier(client).verify(f"{HOST}/acme/x:1.0", SPEC, policy_name="fuzz")
    assert not verdict.passed


def _signed_sig_manifest(reg: FakeRegistry, payload: bytes, signature: bytes) -> bytes:
    layer = reg.put_blob(payload)
    layer["mediaType"] = SIMPLE_SIGNING_MEDIA_TYPE
    layer["annotations"] = {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
    config = reg.put_blob(b"{}")
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    ).encode()


@VERIFY_SETTINGS
@given(data=st.data())
def test_bit_flips_in_signed_material_never_pass(data: st.DataObject) -> None:
    reg = FakeRegistry()
    digest = reg.image()
    name = f"{HOST}/acme/x"
    payload = simple_signing_payload(name, digest)
    signature = SIGNER.sign(payload)
    statement = make_statement(name, digest, SLSA, {"runDetails": {"builder": {"id": "b"}}})
    envelope, _ = make_envelope(statement, [SIGNER])
    target = data.draw(st.sampled_from(["payload", "signature", "statement", "dsse-sig"]))
    env_doc = json.loads(envelope)

    def flip(raw: bytes) -> bytes:
        # Signature lengths vary (DER, random k): draw independently of them.
        i = data.draw(st.integers(0, 1 << 16)) % len(raw)
        bit = data.draw(st.integers(0, 7))
        return raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1 :]

    if target == "payload":
        payload = flip(payload)
    elif target == "signature":
        signature = flip(signature)
    elif target == "statement":
        env_doc["payload"] = base64.b64encode(flip(statement)).decode()
    else:
        sig = base64.b64decode(env_doc["signatures"][0]["sig"])
        env_doc["signatures"][0]["sig"] = base64.b64encode(flip(sig)).decode()
    sig_manifest = _signed_sig_manifest(reg, payload, signature)
    reg.put_manifest("acme/x", sig_manifest, tag=tag_for(digest, "sig"))
    att_reg, _ = _registry_with(None, json.dumps(env_doc).encode())
    for key, value in att_reg.manifests.items():
        if key[1].endswith(".att"):
            reg.put_manifest("acme/x", value[0], tag=tag_for(digest, "att"))
    reg.blobs.update(att_reg.blobs)
    with reg.client() as client:
        verdict = ImageVerifier(client).verify(f"{name}:1.0", SPEC, policy_name="fuzz")
    assert not verdict.passed, verdict.summary()
    failed = {c.name for c in verdict.failed}
    assert failed == (
        {"signatures[registry.test/acme/*]"}
        if target in ("payload", "signature")
        else {"attestation/slsa"}
    )


def test_unflipped_material_passes() -> None:
    """The control for the bit-flip test: the same construction, untouched, passes."""
    reg = FakeRegistry()
    digest = reg.image()
    name = f"{HOST}/acme/x"
    payload = simple_signing_payload(name, digest)
    reg.put_manifest(
        "acme/x",
        _signed_sig_manifest(reg, payload, SIGNER.sign(payload)),
        tag=tag_for(digest, "sig"),
    )
    statement = make_statement(name, digest, SLSA, {"runDetails": {"builder": {"id": "b"}}})
    envelope, _ = make_envelope(statement, [SIGNER])
    att_reg, _ = _registry_with(None, envelope)
    for key, value in att_reg.manifests.items():
        if key[1].endswith(".att"):
            reg.put_manifest("acme/x", value[0], tag=tag_for(digest, "att"))
    reg.blobs.update(att_reg.blobs)
    with reg.client() as client:
        verdict = ImageVerifier(client).verify(f"{name}:1.0", SPEC, policy_name="fuzz")
    assert verdict.passed, verdict.summary()


@VERIFY_SETTINGS
@given(blob=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_attestation_blobs_never_pass(blob: bytes) -> None:
    reg, digest = _registry_with(None, blob)
    # A genuine signature, so only the attestation can fail.
    name = f"{HOST}/acme/x"
    payload = simple_signing_payload(name, digest)
    reg.put_manifest(
        "acme/x",
        _signed_sig_manifest(reg, payload, SIGNER.sign(payload)),
        tag=tag_for(digest, "sig"),
    )
    with reg.client() as client:
        verdict = ImageVerifier(client).verify(f"{name}:1.0", SPEC, policy_name="fuzz")
    assert not verdict.passed
    assert [c.name for c in verdict.failed] == ["attestation/slsa"]


@SETTINGS
@given(
    doc=json_values | st.fixed_dictionaries({"auths": st.dictionaries(tricky_text, json_values)})
)
def test_dockerconfigjson_parser(doc: Any) -> None:
    from samplerguard.supplychain import DockerConfig

    with contextlib.suppress(MalformedInputError):
        cfg = DockerConfig.from_dockerconfigjson(json.dumps(doc).encode())
        cfg.credentials_for("registry.test")


@SETTINGS
@given(header=st.text(max_size=200) | tricky_text)
def test_challenge_parser_never_raises(header: str) -> None:
    from samplerguard.supplychain.auth import parse_challenge

    challenge = parse_challenge(header)
    assert challenge is None or isinstance(challenge.scheme, str)


@SETTINGS
@given(ref=st.text(max_size=80) | tricky_text)
def test_reference_parser(ref: str) -> None:
    from samplerguard.supplychain import parse_reference

    with contextlib.suppress(MalformedInputError):
        parsed = parse_reference(ref)
        assert parse_reference(str(parsed)) == parsed
