"""References, pull secrets, challenges, DSSE, statements, manifests and SLSA parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from samplerguard.commitment.dsse import pae
from samplerguard.errors import MalformedInputError
from samplerguard.policy.spec import AttestationRule, GoldenDigests
from samplerguard.supplychain import DockerConfig, Manifest, parse_reference
from samplerguard.supplychain.auth import parse_challenge
from samplerguard.supplychain.cosign import check_simple_signing, simple_signing_payload, tag_for
from samplerguard.supplychain.dsse import Envelope, Statement
from samplerguard.supplychain.provenance import (
    check_attestation_rule,
    check_golden,
    parse_provenance,
)

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "index.docker.io", "library/nginx", "latest", None),
        ("docker.io/acme/x:1", "index.docker.io", "acme/x", "1", None),
        ("localhost:5000/a/b", "localhost:5000", "a/b", "latest", None),
        ("127.0.0.1:5000/a/b:v1.2", "127.0.0.1:5000", "a/b", "v1.2", None),
        (f"ghcr.io/acme/sampler@{D}", "ghcr.io", "acme/sampler", None, D),
        (f"ghcr.io/acme/sampler:1.0@{D}", "ghcr.io", "acme/sampler", "1.0", D),
        ("[::1]:5000/a/b:c", "[::1]:5000", "a/b", "c", None),
    ],
)
def test_references(
    ref: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    parsed = parse_reference(ref)
    assert (parsed.registry, parsed.repository, parsed.tag, parsed.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert parsed.reference == (digest or tag)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "ghcr.io/UPPER/case",
        "ghcr.io/acme/x@sha256:abc",
        "ghcr.io/acme/x@md5:" + "a" * 32,
        "ghcr.io/acme/x:" + "t" * 200,
        "ghcr.io/acme/x:bad tag",
        "ghcr.io/acme/\u0445",
        "ghcr.io/acme/x\n",
        "ghcr.io//x",
        "a" * 2000,
        "ghcr.io/acme/x:-lead",
    ],
)
def test_bad_references(ref: str) -> None:
    with pytest.raises(MalformedInputError):
        parse_reference(ref)


def test_dockerconfigjson_forms_and_secrecy() -> None:
    raw = json.dumps(
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw1").decode()},
                "reg.example.com:5000": {"username": "u", "password": "s3cret"},
                "tok.example.com": {"identitytoken": "idtok"},
            }
        }
    )
    cfg = DockerConfig.from_dockerconfigjson(raw)
    hub = cfg.credentials_for("index.docker.io")
    assert hub is not None and (hub.username, hub.password) == ("hub", "pw1")
    reg = cfg.credentials_for("reg.example.com:5000")
    assert reg is not None and reg.password == "s3cret"
    tok = cfg.credentials_for("tok.example.com")
    assert tok is not None and tok.password == "idtok"
    assert cfg.credentials_for("other.example.com") is None
    assert "s3cret" not in repr(cfg) and "s3cret" not in repr(reg) and "pw1" not in repr(hub)
    merged = DockerConfig.merged([DockerConfig.from_dockerconfigjson(b'{"auths": {}}'), cfg])
    assert merged.credentials_for("reg.example.com:5000") == reg


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"auths": []}',
        b'{"auths": {"r": 1}}',
        b'{"auths": {"r": {"auth": "!!!"}}}',
        b'{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}',  # "nocolon"
        b'{"auths": {"r": {}}}',
        b"x" * (2 << 20),
    ],
)
def test_bad_dockerconfigjson(raw: bytes) -> None:
    with pytest.raises(MalformedInputError) as err:
        DockerConfig.from_dockerconfigjson(raw)
    assert "bm9jb2xvbg" not in str(err.value)


def test_challenges() -> None:
    c = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"'
    )
    assert c is not None and c.scheme == "bearer"
    assert dict(c.params) == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull",
    }
    basic = parse_challenge('Basic realm="x"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("") is None
    assert parse_challenge("x" * 5000) is None


def test_simple_signing_payload_is_cosigns_bytes() -> None:
    payload = simple_signing_payload("ghcr.io/acme/x", D)
    assert payload == (
        b'{"critical":{"identity":{"docker-reference":"ghcr.io/acme/x"},'
        b'"image":{"docker-manifest-digest":"' + D.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    assert check_simple_signing(payload, D) == "ghcr.io/acme/x"
    assert tag_for(D, "sig") == "sha256-" + "a" * 64 + ".sig"
    for bad in (b"{}", b"null", b"[1]", b'{"critical": {"type": "x"}}', b"\xff"):
        with pytest.raises(MalformedInputError):
            check_simple_signing(bad, D)


def test_pae_matches_the_spec() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_envelope_and_statement() -> None:
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "predicateType": "https://slsa.dev/provenance/v1",
        "subject": [{"name": "x", "digest": {"sha256": "a" * 64}}],
        "predicate": {},
    }
    env = {
        "payloadType": "application/vnd.in-toto+json",
        "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(b"sig").decode()}],
    }
    parsed = Envelope.from_json(json.dumps(env).encode())
    assert parsed.signatures == (("", b"sig"),)
    st = parsed.statement()
    assert st.names_digest(D) and not st.names_digest("sha256:" + "b" * 64)
    for broken in (
        {**env, "signatures": []},
        {**env, "payload": "***"},
        {**env, "payloadType": "text/plain"},
        {**env, "signatures": [{"sig": 5}]},
        {**env, "signatures": [{"sig": "AA=="}] * 17},
    ):
        with pytest.raises(MalformedInputError):
            Envelope.from_dict(broken).statement()
    for bad_statement in (
        {**statement, "_type": "https://in-toto.io/Statement/v9"},
        {**statement, "subject": []},
        {**statement, "subject": [{"digest": {"sha256": 5}}]},
        {**statement, "predicate": []},
    ):
        with pytest.raises(MalformedInputError):
            Statement.from_json(json.dumps(bad_statement).encode())


@pytest.mark.parametrize(
    "doc",
    [
        {"schemaVersion": 1},
        {"schemaVersion": 2, "mediaType": "text/html"},
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"},
        {
            "schemaVersion": 2,
            "config": {"mediaType": "x", "digest": "sha256:zz", "size": 1},
            "layers": [],
        },
        {"schemaVersion": 2, "config": {"mediaType": "x", "digest": D, "size": -1}, "layers": []},
        {"schemaVersion": 2, "config": {"mediaType": "x", "digest": D, "size": 1}, "layers": {}},
        {"schemaVersion": 2, "manifests": [{"mediaType": "x"}] * 2000},
        {
            "schemaVersion": 2,
            "config": {"mediaType": "x", "digest": D, "size": 1},
            "layers": [],
            "annotations": {"a": 1},
        },
    ],
)
def test_bad_manifests(doc: object) -> None:
    with pytest.raises(MalformedInputError):
        Manifest.parse(json.dumps(doc).encode())


def test_manifest_size_bound() -> None:
    with pytest.raises(MalformedInputError, match="at most"):
        Manifest.parse(b" " * (5 << 20))


def test_real_slsa_predicates(shared_testdata: Path) -> None:
    def statement(ptype: str, name: str) -> Statement:
        predicate = json.loads((shared_testdata / "sigstore" / name).read_text())
        return Statement("https://in-toto.io/Statement/v1", ptype, (), predicate)

    v02 = parse_provenance(
        statement("https://slsa.dev/provenance/v0.2", "slsa_predicate_v0_2.json")
    )
    assert v02 is not None and v02.version == "v0.2"
    assert v02.builder_id == (
        "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/"
        "generator_generic_slsa3.yml@refs/tags/v2.0.0"
    )
    assert v02.source_uri == "git+https://github.com/sigstore/sigstore-python"
    assert v02.source_ref == "refs/tags/v3.2.0"

    st1 = statement("https://slsa.dev/provenance/v1", "slsa_predicate_v1_0.json")
    v1 = parse_provenance(st1)
    assert v1 is not None and v1.version == "v1"
    assert v1.source_uri == "git+https://github.com/octo-org/octo-repo"
    assert v1.source_ref == "refs/tags/1.21.0"
    rule = AttestationRule(
        name="slsa",
        builder_ids=[
            "https://github.com/octo-org/octo-repo/.github/workflows/docker.yaml@refs/heads/development"
        ],
        source_uris=["github.com/octo-org/octo-repo"],
        source_refs=["1.21.0"],
    )
    assert check_attestation_rule(st1, rule) == []
    wrong = rule.model_copy(update={"source_refs": ["refs/heads/main"]})
    assert check_attestation_rule(st1, wrong) == [
        "source ref mismatch (got 'refs/tags/1.21.0', expected one of ['refs/heads/main'])"
    ]
    # No ML artefacts in the real predicate: a pinned role is unbound.
    problems = check_golden([st1], GoldenDigests(model_weights=[D]))
    assert problems == {
        "model-weights": [
            f"no verified attestation carries a model-weights digest (expected one of ['{D}'])"
        ]
    }
