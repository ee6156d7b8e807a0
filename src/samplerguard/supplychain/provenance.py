"""SLSA provenance (v0.1, v0.2 and v1) checked as slsa-verifier checks it, and the ML-artefact
binding.

What is read from a provenance predicate:

==============  ========================================  ====================================
field           SLSA v1                                   SLSA v0.2 (v0.1)
==============  ========================================  ====================================
builder id      ``runDetails.builder.id``                 ``builder.id``
trigger         ``externalParameters.workflow``           ``invocation.configSource.uri``
                (repository@ref), else the internal       (v0.1: the material
                ``GITHUB_WORKFLOW_REF``                   ``recipe.definedInMaterial`` names)
source          ``resolvedDependencies[0].uri``,          ``materials[0].uri``
                else ``externalParameters.source``
environment     ``internalParameters`` (``GITHUB_*``      ``invocation.environment``
                keys, or ``github.*``)                    (v0.1: ``recipe.environment``)
==============  ========================================  ====================================

The checks, as slsa-verifier makes them:

* builder: ``name``, ``name@vX.Y.Z`` and ``name@refs/tags/vX.Y.Z`` (its ``MatchesLoose`` with
  refs allowed). No builder IDs: the builder must be one of :data:`TRUSTED_BUILDERS`,
  referenced at a release tag ``refs/tags/vX.Y.Z``.
* source: the trigger and the source both name the repository (and, when both carry a ref,
  the same ref); URIs compare after normalisation (``git+``, scheme, trailing ``.git`` and
  ``/`` dropped, case folded).
* branch: for a branch build ``GITHUB_REF``; for a tag build the event's base ref (``push``)
  or the release's ``target_commitish`` (``release``). Tag: ``GITHUB_REF`` of a tag build.
  Versioned tag: semver, each component the policy states must be equal (``v13`` matches
  ``v13.0.30``; build metadata ignored, a prerelease must be equal).
* workflow inputs: only a ``workflow_dispatch`` build has them; each must be equal.

ML artefacts (for golden digests) are resource descriptors whose role is given by the
annotation ``samplerguard.dev/role`` or a URI ``samplerguard:<role>/<name>``, found in SLSA v1
``resolvedDependencies`` and ``byproducts``, SLSA v0.2/v0.1 ``materials``, and in predicates of
type :data:`ML_ARTIFACTS_PREDICATE` (``{"artifacts": [descriptor, …]}``). Roles:
``model-weights``, ``text-encoder``, ``scheduler-config``, ``solver-code``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from samplerguard.policy.expressions import evaluate_condition
from samplerguard.policy.spec import AttestationMatch, GoldenDigests
from samplerguard.supplychain.dsse import Statement

__all__ = [
    "ML_ARTIFACTS_PREDICATE",
    "ROLES",
    "SLSA_PREDICATES",
    "SLSA_V01",
    "SLSA_V02",
    "SLSA_V1",
    "TRUSTED_BUILDERS",
    "MlArtifact",
    "Provenance",
    "check_attestation_rule",
    "check_golden",
    "ml_artifacts",
    "parse_provenance",
]

SLSA_V01 = "https://slsa.dev/provenance/v0.1"
SLSA_V02 = "https://slsa.dev/provenance/v0.2"
SLSA_V1 = "https://slsa.dev/provenance/v1"
SLSA_PREDICATES = frozenset({SLSA_V01, SLSA_V02, SLSA_V1})
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

_GENERATOR = "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/"
#: slsa-verifier's default trusted builders (its ``defaultArtifactTrustedReusableWorkflows``,
#: ``defaultContainerTrustedReusableWorkflows`` and ``defaultBYOBReusableWorkflows``): the SLSA
#: GitHub generator's reusable workflows.
TRUSTED_BUILDERS: frozenset[str] = frozenset(
    _GENERATOR + name
    for name in (
        "generator_generic_slsa3.yml",
        "generator_container_slsa3.yml",
        "builder_go_slsa3.yml",
        "builder_container-based_slsa3.yml",
        "delegator_generic_slsa3.yml",
        "delegator_lowperms-generic_slsa3.yml",
    )
)
_RELEASE_TAG = re.compile(r"^refs/tags/v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
_SEMVER = re.compile(
    r"^v(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?(?:\.(0|[1-9][0-9]*))?"
    r"(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


@dataclass(frozen=True)
class Provenance:
    version: str
    builder_id: str | None
    source_uri: str | None
    source_ref: str | None
    trigger_uri: str | None = None
    trigger_ref: str | None = None
    #: The GitHub context, keys lower-cased (``github_ref``, ``github_event_payload``, …).
    environment: Mapping[str, Any] = field(default_factory=dict, repr=False)


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


def _lower_keys(env: object) -> dict[str, Any]:
    return (
        {k.lower(): v for k, v in env.items() if isinstance(k, str)}
        if isinstance(env, dict)
        else {}
    )


def _v1_environment(p: Mapping[str, Any]) -> dict[str, Any]:
    internal = _dig(p, "buildDefinition", "internalParameters")
    env = _lower_keys(internal)
    github = _dig(internal, "github")
    if isinstance(github, dict):
        # GitHub's attest-build-provenance: internalParameters.github.{event_name, …}.
        for key, value in github.items():
            env.setdefault(f"github_{key}", value)
    return env


def parse_provenance(statement: Statement) -> Provenance | None:
    """The SLSA fields of ``statement``, or ``None`` if it is not SLSA provenance."""
    p = statement.predicate
    if statement.predicate_type == SLSA_V1:
        builder = _dig(p, "runDetails", "builder", "id")
        ext = _dig(p, "buildDefinition", "externalParameters")
        env = _v1_environment(p)
        trigger: str | None = None
        trigger_ref: str | None = None
        repo, wref = _dig(ext, "workflow", "repository"), _dig(ext, "workflow", "ref")
        if isinstance(repo, str):
            trigger = repo if repo.startswith("git+") else f"git+{repo}"
            trigger_ref = wref if isinstance(wref, str) else None
        elif isinstance(env.get("github_workflow_ref"), str):
            # BYOB and container-based builders: owner/repo/path@ref.
            path, _, at = env["github_workflow_ref"].partition("@")
            parts = path.split("/")
            if len(parts) >= 2 and at:
                trigger, trigger_ref = f"git+https://github.com/{parts[0]}/{parts[1]}", at
        uri: str | None = None
        ref: str | None = None
        deps = _dig(p, "buildDefinition", "resolvedDependencies")
        source = _dig(ext, "source")
        if isinstance(deps, list) and deps and isinstance(_dig(deps[0], "uri"), str):
            uri, ref = _split_ref(deps[0]["uri"])
        elif isinstance(source, str | dict):
            text = source if isinstance(source, str) else _dig(source, "uri")
            if isinstance(text, str):
                uri, ref = _split_ref(text)
        if uri is None and trigger is not None:
            uri, ref = trigger, trigger_ref
        same_repo = (
            uri is not None
            and trigger is not None
            and normalize_source(uri) == normalize_source(trigger)
        )
        if ref is None and same_repo:
            ref = trigger_ref
        if "github_ref" not in env and trigger_ref is not None:
            # GitHub's buildtype records the ref in externalParameters.workflow only.
            env["github_ref"] = trigger_ref
            kind = "tag" if trigger_ref.startswith("refs/tags/") else "branch"
            env.setdefault("github_ref_type", kind)
        return Provenance("v1", _str(builder), uri, ref, trigger, trigger_ref, env)
    if statement.predicate_type in (SLSA_V02, SLSA_V01):
        builder = _dig(p, "builder", "id")
        materials = _dig(p, "materials")
        first = _dig(materials[0], "uri") if isinstance(materials, list) and materials else None
        if statement.predicate_type == SLSA_V02:
            config_uri = _dig(p, "invocation", "configSource", "uri")
            env = _lower_keys(_dig(p, "invocation", "environment"))
            version = "v0.2"
        else:
            index = _dig(p, "recipe", "definedInMaterial")
            config_uri = (
                _dig(materials[index], "uri")
                if isinstance(index, int)
                and isinstance(materials, list)
                and 0 <= index < len(materials)
                else None
            )
            env = _lower_keys(_dig(p, "recipe", "environment"))
            version = "v0.1"
        trigger = trigger_ref = uri = ref = None
        if isinstance(config_uri, str):
            trigger, trigger_ref = _split_ref(config_uri)
        if isinstance(first, str):
            uri, ref = _split_ref(first)
        elif trigger is not None:
            uri, ref = trigger, trigger_ref
        return Provenance(version, _str(builder), uri, ref, trigger, trigger_ref, env)
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


def _builder_problem(got: str | None, wanted: list[str]) -> str | None:
    """slsa-verifier's builder check: ``MatchesLoose`` with refs allowed against each wanted
    ID, or, with none wanted, its trusted builders at a release tag."""
    if got is None:
        return "provenance has no builder id"
    name, _, version = got.partition("@")
    if not wanted:
        if name not in TRUSTED_BUILDERS:
            return (
                f"builder {name!r} is not a trusted SLSA builder (no builderIds given; "
                f"trusted: {sorted(TRUSTED_BUILDERS)})"
            )
        if not _RELEASE_TAG.match(version):
            return (
                f"trusted builder referenced at {version or '(no ref)'!r} "
                "(expected a release tag refs/tags/vX.Y.Z)"
            )
        return None
    for want in wanted:
        want_name, at, want_version = want.partition("@")
        if want_name != name or (at and not want_version):
            continue
        if not at or want_version == version or f"refs/tags/{want_version}" == version:
            return None
    return f"builder id mismatch (got {got!r}, expected one of {wanted})"


def _signer_problem(
    builder_id: str | None, subjects: frozenset[str] | set[str], default_builders: bool
) -> str | None:
    if not subjects:
        return None  # signed with a key: the provenance's own claim is all there is
    builders = sorted(s for s in subjects if s.partition("@")[0] in TRUSTED_BUILDERS)
    if builders:
        if builder_id not in builders:
            return (
                f"builder id {builder_id!r} is not the trusted builder that signed the "
                f"provenance (got {builders[0]!r})"
            )
        return None
    if default_builders:
        return (
            f"provenance names builder {builder_id!r} but was signed by {sorted(subjects)[:2]} "
            "(expected the trusted builder's own workflow identity)"
        )
    return None


def _semver(text: str) -> tuple[list[str], str] | None:
    m = _SEMVER.match(text)
    if m is None:
        return None
    return [g for g in m.groups()[:3] if g is not None], m.group(4) or ""


def _versioned_tag_matches(tag: str, want: str) -> bool:
    """slsa-verifier's ``VerifyVersionedTag``: every component ``want`` states is equal."""
    got, wanted = _semver(tag), _semver(want)
    if got is None or wanted is None:
        return False
    got_parts = got[0] + ["0"] * (3 - len(got[0]))  # semver.Canonical
    parts, pre = wanted
    if any(g != w for g, w in zip(got_parts, parts, strict=False)):
        return False
    return len(parts) < 3 or pre == got[1]


def _branch(env: Mapping[str, Any]) -> tuple[str | None, str]:
    """(``refs/heads/…`` or None, how it was found) per slsa-verifier's ``GetBranch``."""
    ref_type = env.get("github_ref_type")
    if ref_type == "branch":
        ref = env.get("github_ref")
        return (ref if isinstance(ref, str) else None), "github_ref"
    if ref_type != "tag":
        return None, f"unknown ref type {str(ref_type)[:40]!r}"
    base = env.get("github_base_ref")
    if isinstance(base, str) and base:
        return base, "github_base_ref"
    payload = env.get("github_event_payload")
    event = env.get("github_event_name")
    if event == "push":
        value = _dig(payload, "base_ref")
        return (value if isinstance(value, str) else None), "the push event's base_ref"
    if event == "release":
        value = _dig(payload, "release", "target_commitish")
        return (
            f"refs/heads/{value}" if isinstance(value, str) else None
        ), "the release's target_commitish"
    return None, f"a tag build from a {str(event)[:40]!r} event names no branch"


def _tag(env: Mapping[str, Any]) -> str | None:
    ref = env.get("github_ref")
    if env.get("github_ref_type") == "tag" and isinstance(ref, str):
        return ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None
    return None


def _source_problems(prov: Provenance, wanted: list[str]) -> list[str]:
    want = {normalize_source(u) for u in wanted}
    problems = []
    for what, uri in (("source", prov.source_uri), ("trigger", prov.trigger_uri)):
        if uri is None:
            if what == "source":
                problems.append(f"source URI mismatch (got None, expected one of {wanted})")
            continue
        if normalize_source(uri) not in want:
            problems.append(f"{what} URI mismatch (got {uri!r}, expected one of {wanted})")
    if (
        not problems
        and prov.trigger_ref is not None
        and prov.source_ref is not None
        and prov.trigger_ref != prov.source_ref
    ):
        problems.append(
            f"source and trigger refs differ (source {prov.source_ref!r}, "
            f"trigger {prov.trigger_ref!r})"
        )
    return problems


def _inputs_problems(env: Mapping[str, Any], wanted: Mapping[str, str]) -> list[str]:
    event = env.get("github_event_name")
    if event != "workflow_dispatch":
        return [f"workflow inputs need a workflow_dispatch build (got event {event!r})"]
    inputs = _dig(env.get("github_event_payload"), "inputs")
    if not isinstance(inputs, dict):
        return ["workflow inputs mismatch (the event payload records no inputs)"]
    problems = []
    for key, value in wanted.items():
        got = inputs.get(key)
        if got != value:
            problems.append(f"workflow input {key!r} mismatch (got {got!r}, expected {value!r})")
    return problems


def check_attestation_rule(
    statement: Statement,
    rule: AttestationMatch,
    *,
    signer_subjects: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """Problems of ``statement`` under ``rule`` (empty: it satisfies the rule).

    ``signer_subjects``: the certificate identities of the keyless signatures that verified.
    As slsa-verifier takes the builder from the signing certificate, a provenance signed by a
    trusted builder's workflow must name exactly that builder, and with no ``builderIds`` a
    keyless provenance must be signed by the trusted builder it names."""
    if statement.predicate_type != rule.predicate_type:
        return [
            f"predicate type mismatch (got {statement.predicate_type}, "
            f"expected {rule.predicate_type})"
        ]
    problems: list[str] = []
    prov = parse_provenance(statement)
    if prov is None:
        if rule.constrains_slsa:
            problems.append(
                f"predicate type {statement.predicate_type} is not SLSA provenance, "
                "but the rule constrains builder/source"
            )
    else:
        problems += _slsa_problems(prov, rule)
        signer = _signer_problem(prov.builder_id, signer_subjects, not rule.builder_ids)
        if signer is not None:
            problems.append(signer)
    for condition in rule.conditions:
        holds, got = evaluate_condition(condition.expression, statement.document)
        if not holds:
            problems.append(
                f"condition {condition.message or condition.expression!r} does not hold "
                f"(got {got}, expected true)"
            )
    return problems


def _slsa_problems(prov: Provenance, rule: AttestationMatch) -> list[str]:
    problems: list[str] = []
    builder = _builder_problem(prov.builder_id, list(rule.builder_ids))
    if builder is not None:
        problems.append(builder)
    if rule.source_uris:
        problems += _source_problems(prov, list(rule.source_uris))
    if rule.source_refs and (
        prov.source_ref is None
        or not any(_ref_matches(prov.source_ref, want) for want in rule.source_refs)
    ):
        problems.append(
            f"source ref mismatch (got {prov.source_ref!r}, expected one of {rule.source_refs})"
        )
    if rule.source_branches:
        ref, how = _branch(prov.environment)
        branch = ref.removeprefix("refs/heads/") if ref and ref.startswith("refs/heads/") else None
        if branch not in rule.source_branches:
            problems.append(
                f"source branch mismatch (got {branch!r} from {how}, "
                f"expected one of {rule.source_branches})"
            )
    if rule.source_tags or rule.source_versioned_tags:
        tag = _tag(prov.environment)
        if rule.source_tags and tag not in rule.source_tags:
            problems.append(
                f"source tag mismatch (got {tag!r}, expected one of {rule.source_tags})"
            )
        if rule.source_versioned_tags and not (
            tag is not None
            and any(_versioned_tag_matches(tag, w) for w in rule.source_versioned_tags)
        ):
            problems.append(
                f"source versioned tag mismatch (got {tag!r}, expected semver "
                f"{rule.source_versioned_tags})"
            )
    if rule.workflow_inputs:
        problems += _inputs_problems(prov.environment, rule.workflow_inputs)
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
    elif statement.predicate_type in (SLSA_V02, SLSA_V01):
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
