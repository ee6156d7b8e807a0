"""SLSA provenance (v0.2 and v1) checked as slsa-verifier does, and the ML-artefact binding.

What is read from a provenance predicate:

==============  ===============================================  ==================================
field           SLSA v1                                          SLSA v0.2
==============  ===============================================  ==================================
builder id      ``runDetails.builder.id``                        ``builder.id``
source URI      ``externalParameters.workflow.repository``       ``invocation.configSource.uri``
                (GitHub Actions), ``externalParameters.source``  (before ``@``), else
                or the first ``resolvedDependencies[].uri``      ``materials[0].uri``
ref             ``externalParameters.workflow.ref`` or the       the ``@…`` suffix of the URI
                ``@…`` suffix of the source URI
==============  ===============================================  ==================================

Source URIs compare after normalisation (``git+``, the scheme, a trailing ``.git`` and ``/``
dropped; case-folded), so ``github.com/acme/sampler`` matches
``git+https://github.com/acme/sampler.git``. A policy ref without ``refs/`` matches the
branch or tag name (``main`` ≙ ``refs/heads/main``).

ML artefacts (for golden digests) are resource descriptors whose role is given by the
annotation ``samplerguard.dev/role`` or a URI ``samplerguard:<role>/<name>``, found in SLSA v1
``resolvedDependencies`` and ``byproducts``, SLSA v0.2 ``materials``, and in predicates of type
:data:`ML_ARTIFACTS_PREDICATE` (``{"artifacts": [descriptor, …]}``). Roles:
``model-weights``, ``text-encoder``, ``scheduler-config``, ``solver-code``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from samplerguard.policy.spec import AttestationRule, GoldenDigests
from samplerguard.supplychain.dsse import Statement

__all__ = [
    "ML_ARTIFACTS_PREDICATE",
    "ROLES",
    "SLSA_V02",
    "SLSA_V1",
    "MlArtifact",
    "Provenance",
    "check_attestation_rule",
    "check_golden",
    "ml_artifacts",
    "parse_provenance",
]

SLSA_V02 = "https://slsa.dev/provenance/v0.2"
SLSA_V1 = "https://slsa.dev/provenance/v1"
ML_ARTIFACTS_PREDICATE = "https://samplerguard.dev/ml-artifacts/v1"
ROLE_ANNOTATION = "samplerguard.dev/role"
#: policy field (GoldenDigests attribute) → role name in attestations
ROLES: Mapping[str, str] = {
    "model_weights": "model-weights",
    "text_encoder": "text-encoder",
    "scheduler_config": "scheduler-config",
    "solver_code": "solver-code",
}
_ROLE_URI = re.compile(r"^samplerguard:([a-z-]+)/")


@dataclass(frozen=True)
class Provenance:
    version: str
    builder_id: str | None
    source_uri: str | None
    source_ref: str | None


def _dig(doc: object, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _split_ref(uri: str) -> tuple[str, str | None]:
    """``git+https://github.com/acme/x@refs/heads/main`` → (URI, ref). Only an ``@`` in the
    path separates a ref; one in the authority (``user@host``) does not."""
    m = re.match(r"^((?:git\+)?[a-zA-Z][a-zA-Z0-9+.-]*://)?([^/]*)(/.*)?$", uri)
    if m is None or not m.group(3) or "@" not in m.group(3):
        return uri, None
    path, ref = m.group(3).rsplit("@", 1)
    return f"{m.group(1) or ''}{m.group(2)}{path}", ref or None


def parse_provenance(statement: Statement) -> Provenance | None:
    """The SLSA fields of ``statement``, or ``None`` if it is not SLSA provenance."""
    p = statement.predicate
    if statement.predicate_type == SLSA_V1:
        builder = _dig(p, "runDetails", "builder", "id")
        ext = _dig(p, "buildDefinition", "externalParameters")
        uri: str | None = None
        ref: str | None = None
        repo, wref = _dig(ext, "workflow", "repository"), _dig(ext, "workflow", "ref")
        source = _dig(ext, "source")
        if isinstance(repo, str):
            uri = repo if repo.startswith("git+") else f"git+{repo}"
            ref = wref if isinstance(wref, str) else None
        elif isinstance(source, str | dict):
            text = source if isinstance(source, str) else _dig(source, "uri")
            if isinstance(text, str):
                uri, ref = _split_ref(text)
        if uri is None:
            deps = _dig(p, "buildDefinition", "resolvedDependencies")
            if isinstance(deps, list) and deps and isinstance(_dig(deps[0], "uri"), str):
                uri, ref = _split_ref(deps[0]["uri"])
        return Provenance("v1", _str(builder), uri, ref)
    if statement.predicate_type == SLSA_V02:
        builder = _dig(p, "builder", "id")
        config_uri = _dig(p, "invocation", "configSource", "uri")
        uri = ref = None
        if isinstance(config_uri, str):
            uri, ref = _split_ref(config_uri)
        else:
            materials = _dig(p, "materials")
            if (
                isinstance(materials, list)
                and materials
                and isinstance(_dig(materials[0], "uri"), str)
            ):
                uri, ref = _split_ref(materials[0]["uri"])
        return Provenance("v0.2", _str(builder), uri, ref)
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def normalize_source(uri: str) -> str:
    uri = uri.strip().removeprefix("git+")
    uri = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", uri)
    return uri.rstrip("/").removesuffix(".git").lower()


def _ref_matches(got: str, want: str) -> bool:
    if want.startswith("refs/"):
        return got == want
    return got in (want, f"refs/heads/{want}", f"refs/tags/{want}")


def check_attestation_rule(statement: Statement, rule: AttestationRule) -> list[str]:
    """Problems of ``statement`` under ``rule`` (empty: it satisfies the rule)."""
    if statement.predicate_type != rule.predicate_type:
        return [
            f"predicate type mismatch (got {statement.predicate_type}, "
            f"expected {rule.predicate_type})"
        ]
    problems: list[str] = []
    prov = parse_provenance(statement)
    if prov is None:
        if rule.builder_ids or rule.source_uris or rule.source_refs:
            problems.append(
                f"predicate type {statement.predicate_type} is not SLSA provenance, "
                "but the rule constrains builder/source"
            )
        return problems
    if rule.builder_ids and prov.builder_id not in rule.builder_ids:
        problems.append(
            f"builder id mismatch (got {prov.builder_id!r}, expected one of {rule.builder_ids})"
        )
    if rule.source_uris:
        wanted = {normalize_source(u) for u in rule.source_uris}
        if prov.source_uri is None or normalize_source(prov.source_uri) not in wanted:
            problems.append(
                f"source URI mismatch (got {prov.source_uri!r}, expected one of {rule.source_uris})"
            )
    if rule.source_refs and (
        prov.source_ref is None
        or not any(_ref_matches(prov.source_ref, want) for want in rule.source_refs)
    ):
        problems.append(
            f"source ref mismatch (got {prov.source_ref!r}, expected one of {rule.source_refs})"
        )
    return problems


@dataclass(frozen=True)
class MlArtifact:
    role: str
    name: str
    digest: str  # sha256:<hex>


def _descriptor_artifact(desc: object) -> MlArtifact | None:
    if not isinstance(desc, dict):
        return None
    role = _dig(desc, "annotations", ROLE_ANNOTATION)
    uri = desc.get("uri")
    name = desc.get("name") or uri or ""
    if not isinstance(role, str) and isinstance(uri, str):
        m = _ROLE_URI.match(uri)
        role = m.group(1) if m else None
    if not isinstance(role, str) and isinstance(desc.get("role"), str):
        role = desc["role"]
    if not isinstance(role, str) or role not in ROLES.values():
        return None
    sha = _dig(desc, "digest", "sha256")
    digest = f"sha256:{sha.lower()}" if isinstance(sha, str) else "(no sha256 digest)"
    return MlArtifact(role, str(name)[:200], digest)


def ml_artifacts(statement: Statement) -> Iterator[MlArtifact]:
    p = statement.predicate
    lists: list[object] = []
    if statement.predicate_type == SLSA_V1:
        lists += [
            _dig(p, "buildDefinition", "resolvedDependencies"),
            _dig(p, "runDetails", "byproducts"),
        ]
    elif statement.predicate_type == SLSA_V02:
        lists.append(_dig(p, "materials"))
    elif statement.predicate_type == ML_ARTIFACTS_PREDICATE:
        lists.append(_dig(p, "artifacts"))
    for entries in lists:
        if isinstance(entries, list):
            for desc in entries[:4096]:
                art = _descriptor_artifact(desc)
                if art is not None:
                    yield art


def check_golden(statements: list[Statement], golden: GoldenDigests) -> dict[str, list[str]]:
    """Per pinned role, the problems (empty list: that role is bound). Unpinned roles are
    absent from the result."""
    carried: dict[str, list[MlArtifact]] = {}
    for st in statements:
        for art in ml_artifacts(st):
            carried.setdefault(art.role, []).append(art)
    out: dict[str, list[str]] = {}
    for field_name, role in ROLES.items():
        wanted: list[str] = getattr(golden, field_name)
        if not wanted:
            continue
        arts = carried.get(role, [])
        problems: list[str] = []
        if not arts:
            problems.append(
                f"no verified attestation carries a {role} digest (expected one of {wanted})"
            )
        for art in arts:
            if art.digest not in wanted:
                problems.append(
                    f"{role} digest mismatch for {art.name!r} "
                    f"(got {art.digest}, expected one of {wanted})"
                )
        out[role] = problems
    return out
