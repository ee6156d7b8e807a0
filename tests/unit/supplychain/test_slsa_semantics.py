"""slsa-verifier's semantics on real provenance: the container generator's (SLSA v0.2, in
tests/data/supplychain) and GitHub's attest-build-provenance shape (SLSA v1)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from samplerguard.policy.spec import AttestationMatch
from samplerguard.supplychain.dsse import Statement
from samplerguard.supplychain.provenance import (
    SLSA_V01,
    SLSA_V1,
    check_attestation_rule,
    parse_provenance,
)

DATA = Path(__file__).parents[2] / "data" / "supplychain" / "slsa-container-generator"
GENERATOR = (
    "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/"
    "generator_container_slsa3.yml"
)


def _generator_statement(release: str) -> Statement:
    layout = json.loads((DATA / release / "layout.json").read_text())
    manifest = json.loads((DATA / release / "blobs" / layout["attestations"][7:]).read_text())
    envelope = json.loads(
        (DATA / release / "blobs" / manifest["layers"][0]["digest"][7:]).read_text()
    )
    return Statement.from_json(base64.b64decode(envelope["payload"]))


def _problems(statement: Statement, **rule: Any) -> list[str]:
    subjects = rule.pop("subjects", frozenset())
    match = AttestationMatch.model_validate({"predicateType": statement.predicate_type, **rule})
    return check_attestation_rule(statement, match, signer_subjects=subjects)


def test_builder_taken_from_the_signing_certificate() -> None:
    statement = _generator_statement("v1.4.0")
    own = frozenset({f"{GENERATOR}@refs/tags/v1.4.0"})
    assert _problems(statement, subjects=own) == []
    assert _problems(statement, subjects=own, builderIds=[f"{GENERATOR}@v1.4.0"]) == []
    # The provenance names v1.4.0 but the certificate is v1.5.0's: a forged claim.
    other = frozenset({f"{GENERATOR}@refs/tags/v1.5.0"})
    assert _problems(statement, subjects=other) == [
        f"builder id '{GENERATOR}@refs/tags/v1.4.0' is not the trusted builder that signed the "
        f"provenance (got '{GENERATOR}@refs/tags/v1.5.0')"
    ]
    # With no builderIds, a keyless provenance must come from the builder it names.
    stranger = frozenset({"https://github.com/acme/x/.github/workflows/y.yml@refs/heads/main"})
    [problem] = _problems(statement, subjects=stranger)
    assert problem.startswith(f"provenance names builder '{GENERATOR}@refs/tags/v1.4.0' but was")


def test_trusted_builders_need_a_release_tag() -> None:
    doc = _generator_statement("v1.4.0").document
    doc["predicate"]["builder"]["id"] = f"{GENERATOR}@refs/heads/main"
    statement = Statement.from_json(json.dumps(doc).encode())
    assert _problems(statement) == [
        "trusted builder referenced at 'refs/heads/main' (expected a release tag refs/tags/vX.Y.Z)"
    ]
    assert _problems(statement, builderIds=[GENERATOR]) == []


@pytest.mark.parametrize(
    ("want", "ok"),
    [
        ("v13", True),
        ("v13.0", True),
        ("v13.0.30", True),
        ("v13.0.3", False),
        ("v14", False),
        ("v13.1", False),
        ("v13.0.30-rc.1", False),
    ],
)
def test_versioned_tags(want: str, ok: bool) -> None:
    problems = _problems(_generator_statement("v2.0.0"), sourceVersionedTags=[want])
    assert (problems == []) is ok, problems


def test_v02_environment() -> None:
    prov = parse_provenance(_generator_statement("v1.9.0"))
    assert prov is not None and prov.version == "v0.2"
    assert prov.trigger_uri == "git+https://github.com/slsa-framework/example-package"
    assert prov.trigger_ref == "refs/tags/v13.0.30"
    statement = _generator_statement("v1.4.0")
    assert _problems(statement, workflowInputs={"x": "1"}) == [
        "workflow inputs mismatch (the event payload records no inputs)"
    ]


def test_github_attest_v1_shape(shared_testdata: Path) -> None:
    predicate = json.loads((shared_testdata / "sigstore" / "slsa_predicate_v1_0.json").read_text())
    statement = Statement("https://in-toto.io/Statement/v1", SLSA_V1, (), predicate)
    builder = predicate["runDetails"]["builder"]["id"]
    assert (
        _problems(
            statement,
            builderIds=[builder],
            sourceUris=["github.com/octo-org/octo-repo"],
            sourceTags=["1.21.0"],
        )
        == []
    )
    [problem] = _problems(statement, builderIds=[builder], sourceBranches=["main"])
    assert problem.startswith("source branch mismatch (got None")


def test_v01_predicate() -> None:
    predicate = {
        "builder": {"id": "https://github.com/Attestations/GitHubHostedActions@v1"},
        "recipe": {
            "type": "https://github.com/Attestations/GitHubActionsWorkflow@v1",
            "definedInMaterial": 0,
            "entryPoint": ".github/workflows/build.yml",
            "environment": {"github_ref": "refs/heads/main", "github_ref_type": "branch"},
        },
        "materials": [{"uri": "git+https://github.com/acme/sampler@refs/heads/main"}],
    }
    statement = Statement("https://in-toto.io/Statement/v0.1", SLSA_V01, (), predicate)
    rule = {
        "builderIds": ["https://github.com/Attestations/GitHubHostedActions"],
        "sourceUris": ["github.com/acme/sampler"],
        "sourceBranches": ["main"],
    }
    assert _problems(statement, **rule) == []
    assert parse_provenance(statement) is not None
