"""The policy spec: one pydantic model behind the CRD schema, the webhook, sidecar and verifier.

``ClusterSamplerPolicy`` and ``SamplerPolicy`` (group ``samplerguard.dev``, version ``v1alpha1``)
share :class:`SamplerPolicySpec`. Field names on the wire are camelCase, as Kubernetes expects;
Python code uses snake_case. Validation here is the *only* validation: the CRD's OpenAPI and CEL
rules are generated from these models, and the webhook and operator call :func:`parse_policy`.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from samplerguard.durations import DURATION_PATTERN, parse_duration
from samplerguard.errors import PolicyError
from samplerguard.policy.expressions import check_condition, check_regexp, regexp_search

__all__ = [
    "FINGERPRINT_FIELDS",
    "GROUP",
    "KNOWN_PREDICTION_TYPES",
    "KNOWN_SAMPLERS",
    "KNOWN_SCHEDULES",
    "REFUSED_SCHEDULERS",
    "REPRODUCED_FIELDS",
    "VERSION",
    "AttestationMatch",
    "AttestationRule",
    "Authority",
    "CalibrationEntry",
    "CanaryCase",
    "ClusterSamplerPolicy",
    "Condition",
    "FloatRange",
    "GoldenDigests",
    "ImageRule",
    "IntRange",
    "KeyAuthority",
    "KeylessAuthority",
    "KeylessIdentity",
    "LabelSelector",
    "LabelSelectorRequirement",
    "ObjectMeta",
    "PolicyCondition",
    "PolicyStatus",
    "RecipeRule",
    "RngRule",
    "SamplerPolicy",
    "SamplerPolicySpec",
    "SecretKeyRef",
    "VerificationRule",
    "parse_policy",
]

GROUP = "samplerguard.dev"
VERSION = "v1alpha1"

#: Sampler ids the project knows, mapped to the diffusers scheduler class that implements them.
KNOWN_SAMPLERS: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_sde": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lcm": "LCMScheduler",
    "edm_euler": "EDMEulerScheduler",
    "edm_dpmpp_2m": "EDMDPMSolverMultistepScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}
#: Every other diffusers scheduler whose step is deterministic given its committed noise is
#: accepted under its own class name (and so are the classes above). The set is checked against
#: the installed diffusers by ``tests/integration/hook/test_scheduler_contract.py``: a class is
#: either here, with an honest trajectory re-checking to exactly 0, or refused below with its
#: reason.
KNOWN_SAMPLERS.update(
    {
        name: name
        for name in (
            *sorted(set(KNOWN_SAMPLERS.values())),
            "CogVideoXDDIMScheduler",
            "DDIMParallelScheduler",
            "DDPMParallelScheduler",
            "DEISMultistepScheduler",
            "DPMSolverSinglestepScheduler",
            "IPNDMScheduler",
            "LMSDiscreteScheduler",
            "PNDMScheduler",
            "SASolverScheduler",
            "TCDScheduler",
        )
    }
)

_BROWNIAN = (
    "draws Brownian-tree noise through torchsde, which is not drawn from the request's DRBG "
    "nor committed, so its steps cannot be re-checked"
)
_EXTRA_INPUTS = (
    "its step takes inputs besides the latent and the model output that are not committed"
)
_FAMILY = "it needs its own pipeline family's step program (not yet provided)"
_NUMPY2 = (
    "its set_timesteps calls np.cumsum on a tensor, which NumPy 2 rejects depending on the "
    "warning state, so neither a generation nor a re-check runs reliably"
)
#: diffusers schedulers refused when a request declares them, with the reason.
REFUSED_SCHEDULERS: dict[str, str] = {
    "DPMSolverSDEScheduler": _BROWNIAN,
    "CosineDPMSolverMultistepScheduler": _BROWNIAN,
    "AmusedScheduler": "a masked-token scheduler: no latent denoising step",
    "VQDiffusionScheduler": "a discrete (VQ) scheduler: no latent denoising step",
    "BlockRefinementScheduler": "a discrete-token scheduler: no latent denoising step",
    "EntropyBoundScheduler": "a discrete-token scheduler: no latent denoising step",
    "DiscreteDDIMScheduler": "a discrete-token scheduler: no latent denoising step",
    "KarrasVeScheduler": _EXTRA_INPUTS,
    "RePaintScheduler": _EXTRA_INPUTS,
    "CogVideoXDPMScheduler": _EXTRA_INPUTS,
    "ScoreSdeVeScheduler": _EXTRA_INPUTS,
    "CMStochasticIterativeScheduler": "its step rewrites init_noise_sigma, which a re-check "
    "from a committed state cannot reproduce",
    "DDIMInverseScheduler": "an inversion scheduler, not a generation",
    "DPMSolverMultistepInverseScheduler": "an inversion scheduler, not a generation",
    "UnCLIPScheduler": _FAMILY,
    "DDPMWuerstchenScheduler": _FAMILY,
    "SCMScheduler": _FAMILY,
    "FlowMatchHeunDiscreteScheduler": _FAMILY,
    "FlowMatchLCMScheduler": _FAMILY,
    "FlowMapEulerDiscreteScheduler": _FAMILY,
    "LTXEulerAncestralRFScheduler": _FAMILY,
    "HeliosScheduler": _FAMILY,
    "HeliosDMDScheduler": _FAMILY,
    "MiniMaxH3Scheduler": _FAMILY,
    "PiflowScheduler": _FAMILY,
    "RFD4ProteinaScheduler": "not an image or audio diffusion scheduler",
    "KDPM2DiscreteScheduler": _NUMPY2,
    "KDPM2AncestralDiscreteScheduler": _NUMPY2,
}

#: Schedule ids: diffusers' timestep spacings and sigma schedules.
KNOWN_SCHEDULES: frozenset[str] = frozenset(
    {"leading", "trailing", "linspace", "karras", "exponential", "beta", "edm", "flow-shift"}
)

KNOWN_PREDICTION_TYPES: frozenset[str] = frozenset(
    {"epsilon", "v_prediction", "sample", "flow_prediction"}
)

Sha256Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
RegExp = Annotated[str, StringConstraints(min_length=1, max_length=256)]

duration_seconds = parse_duration


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON body, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """``x-kubernetes-validations`` for the generated CRD: (CEL rule, message) pairs. They restate
    the model validator beside them so that ``kubectl apply`` refuses what :func:`parse_policy`
    refuses; the operator's status carries the model's own message for everything CEL cannot
    express (PEM parsing, regex compilation)."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def _cel_config(*rules: tuple[str, str]) -> ConfigDict:
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        json_schema_extra=_cel(*rules),
    )


#: A list whose items are keyed by ``name``: the API server refuses two items of one name.
_NAMED_LIST: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
}


# --- images and who must sign them ------------------------------------------------------------


class SecretKeyRef(_Model):
    """A public key held in a Kubernetes Secret (as policy-controller's ``secretRef``)."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")]
    """Name of the Secret holding the PEM public key."""
    namespace: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    """Unset: the policy's namespace for a SamplerPolicy, samplerguard's own namespace for a
    ClusterSamplerPolicy."""
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]{1,253}$")] = "cosign.pub"
    """The data key holding the PEM; cosign's ``generate-key-pair k8s://`` writes
    ``cosign.pub``."""


class KeyAuthority(_Model):
    """A cosign public key: PEM inline, or a Secret holding it. ECDSA P-256/P-384/P-521,
    Ed25519 and RSA are accepted."""

    model_config = _cel_config(
        (
            "has(self.publicKey) != has(self.secretRef)",
            "a key needs exactly one of publicKey or secretRef",
        ),
        (
            "!has(self.publicKey) || (self.publicKey.contains('-----BEGIN PUBLIC KEY-----') && "
            "self.publicKey.contains('-----END PUBLIC KEY-----'))",
            "publicKey must be a PEM public key (-----BEGIN PUBLIC KEY----- ... "
            "-----END PUBLIC KEY-----)",
        ),
    )

    # 8 KiB holds an RSA-8192 PEM; the bound keeps the CRD's CEL cost within budget.
    public_key: Annotated[str, StringConstraints(min_length=1, max_length=8192)] | None = None
    """The PEM public key inline (-----BEGIN PUBLIC KEY----- ...); exactly one of publicKey or
    secretRef."""
    secret_ref: SecretKeyRef | None = None
    """A Secret holding the PEM public key; exactly one of publicKey or secretRef."""
    hash_algorithm: Literal["sha256", "sha384", "sha512"] = "sha256"
    """The digest the signature was made over (cosign's --signature-digest-algorithm)."""
    trusted_root: NonEmpty | None = None
    """The trusted root whose Rekor keys vouch for Sigstore bundles signed with this key (as for
    keyless authorities); unset: the default root."""

    @field_validator("public_key")
    @classmethod
    def _parse_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            load_pem_public_key(value.encode())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"publicKey is not a PEM public key: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> KeyAuthority:
        if (self.public_key is None) == (self.secret_ref is None):
            raise ValueError("a key needs exactly one of publicKey or secretRef")
        return self


class KeylessIdentity(_Model):
    """A Fulcio certificate identity: issuer and subject, each exact or a regular expression.

    A regular expression is RE2 and matches a substring, exactly as cosign's
    ``--certificate-identity-regexp`` and policy-controller's ``subjectRegExp`` do: a policy
    ported from them means the same thing here. Anchor it (``^…$``) to pin the whole value."""

    model_config = _cel_config(
        (
            "has(self.issuer) != has(self.issuerRegExp)",
            "an identity needs exactly one of issuer or issuerRegExp",
        ),
        (
            "has(self.subject) != has(self.subjectRegExp)",
            "an identity needs exactly one of subject or subjectRegExp",
        ),
        # CEL's matches() raises on a pattern that does not compile (RE2 syntax), and an
        # error on both sides of || is an error, so the object is refused.
        (
            "!has(self.issuerRegExp) || ''.matches(self.issuerRegExp) || "
            "!''.matches(self.issuerRegExp)",
            "issuerRegExp is not a valid regular expression",
        ),
        (
            "!has(self.subjectRegExp) || ''.matches(self.subjectRegExp) || "
            "!''.matches(self.subjectRegExp)",
            "subjectRegExp is not a valid regular expression",
        ),
    )

    issuer: NonEmpty | None = None
    """The OIDC issuer of the Fulcio certificate, exact (e.g.
    https://token.actions.githubusercontent.com); exactly one of issuer or issuerRegExp."""
    issuer_reg_exp: RegExp | None = Field(default=None, alias="issuerRegExp")
    """An RE2 expression the certificate's OIDC issuer must match (a substring match: anchor it
    with ^...$); exactly one of issuer or issuerRegExp."""
    subject: NonEmpty | None = None
    """The certificate's subject (SAN: an email, or a workflow URI @ref), exact; exactly one of
    subject or subjectRegExp."""
    subject_reg_exp: RegExp | None = Field(default=None, alias="subjectRegExp")
    """An RE2 expression the certificate's subject must match (a substring match: anchor it with
    ^...$); exactly one of subject or subjectRegExp."""

    @model_validator(mode="after")
    def _one_of_each(self) -> KeylessIdentity:
        if (self.issuer is None) == (self.issuer_reg_exp is None):
            raise ValueError("an identity needs exactly one of issuer or issuerRegExp")
        if (self.subject is None) == (self.subject_reg_exp is None):
            raise ValueError("an identity needs exactly one of subject or subjectRegExp")
        if self.issuer_reg_exp is not None:
            check_regexp(self.issuer_reg_exp, "issuerRegExp")
        if self.subject_reg_exp is not None:
            check_regexp(self.subject_reg_exp, "subjectRegExp")
        return self

    def matches(self, issuer: str, subject: str) -> bool:
        if self.issuer is not None and issuer != self.issuer:
            return False
        if self.issuer_reg_exp is not None and not regexp_search(self.issuer_reg_exp, issuer):
            return False
        if self.subject is not None and subject != self.subject:
            return False
        return not (
            self.subject_reg_exp is not None and not regexp_search(self.subject_reg_exp, subject)
        )


class KeylessAuthority(_Model):
    """Fulcio-issued certificates, Rekor-logged, chained to a trusted root."""

    identities: Annotated[list[KeylessIdentity], Field(min_length=1, max_length=16)]
    """Certificate identities accepted; a signature counts when its certificate matches any one
    of them."""
    trusted_root: NonEmpty | None = None
    """Path (local mode) or ConfigMap key (cluster) of a trusted_root.json. Unset: the root
    bundled with the installation, which is the public-good production instance."""


class Authority(_Model):
    """One signer. Exactly one of ``key`` or ``keyless``.

    Without ``attestations`` the authority counts when it signed the image (a cosign
    signature or a Sigstore bundle of cosign's sign predicate). With ``attestations`` it
    counts, as in policy-controller, when it signed an attestation of the image that passes
    one of the named attestation rules: the image needs no ``.sig`` at all (images from the
    SLSA generators carry only their provenance)."""

    model_config = _cel_config(
        ("has(self.key) != has(self.keyless)", "an authority needs exactly one of key or keyless")
    )

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    """A name for this signer, unique within its image rule; denials and reports name it."""
    key: KeyAuthority | None = None
    """Verify with a cosign public key; exactly one of key or keyless."""
    keyless: KeylessAuthority | None = None
    """Verify Fulcio certificates (Sigstore keyless signing); exactly one of key or keyless."""
    attestations: Annotated[list[NonEmpty], Field(max_length=16)] = []
    """Names of ``spec.attestations`` rules; any one satisfied by an attestation this authority
    signed makes it count."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Authority:
        if (self.key is None) == (self.keyless is None):
            raise ValueError(f"authority {self.name!r} needs exactly one of key or keyless")
        return self


class ImageRule(_Model):
    """Images matching ``glob`` need signatures from ``threshold`` of ``authorities``."""

    model_config = _cel_config(
        (
            "!has(self.threshold) || self.threshold <= size(self.authorities)",
            "threshold exceeds the number of authorities",
        )
    )

    glob: NonEmpty
    """Image references this rule governs, e.g. registry.example.com/ml/*. '*' stays within one
    path segment, '**' crosses segments."""
    # Names are list-map keys in the CRD, so the API server refuses duplicates.
    authorities: Annotated[
        list[Authority],
        Field(
            min_length=1,
            max_length=8,
            json_schema_extra=_NAMED_LIST,
        ),
    ]
    """The signers; names are unique (the API server refuses duplicates)."""
    threshold: Annotated[int, Field(ge=1, le=8)] = 1
    """How many distinct authorities must have signed (k of n); at most the number of
    authorities."""

    @model_validator(mode="after")
    def _threshold_reachable(self) -> ImageRule:
        if self.threshold > len(self.authorities):
            raise ValueError(
                f"threshold {self.threshold} exceeds the {len(self.authorities)} authorities "
                f"of image rule {self.glob!r}"
            )
        names = [a.name for a in self.authorities]
        if len(set(names)) != len(names):
            raise ValueError(f"authority names repeat in image rule {self.glob!r}: {names}")
        return self

    def matches(self, image: str) -> bool:
        """Glob match in cosign policy-controller's style: ``*`` does not cross ``/``,
        ``**`` does."""
        return _glob_regex(self.glob).fullmatch(image) is not None


def _glob_regex(glob: str) -> re.Pattern[str]:
    parts = glob.split("**")
    translated = ".*".join(fnmatch.translate(p)[4:-3].replace(".*", "[^/]*") for p in parts)
    return re.compile(translated)


# --- attestations -------------------------------------------------------------------------------


class Condition(_Model):
    """A CEL expression over the attestation that must evaluate to true. It reads
    ``predicate`` (the in-toto predicate), ``predicateType`` and ``subject``, e.g.
    ``predicate.buildType == 'https://github.com/slsa-framework/slsa-github-generator/container@v1'``.
    It is compiled when the policy is applied; an evaluation error counts as false."""

    expression: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    """The CEL expression; it reads predicate, predicateType and subject and must evaluate to
    true."""
    message: Annotated[str, StringConstraints(max_length=512)] | None = None
    """Shown when the condition does not hold; default: the expression itself."""

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return check_condition(value)


_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
#: slsa-verifier's --source-versioned-tag: vMAJOR, vMAJOR.MINOR or vMAJOR.MINOR.PATCH[-pre].
_VERSIONED_TAG = r"^v(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?)?)?$"


class AttestationMatch(_Model):
    """What one attestation must be: its predicate type, the SLSA checks slsa-verifier makes,
    and CEL conditions on its predicate.

    For SLSA provenance (v0.1, v0.2, v1) the checks follow slsa-verifier: ``builderIds`` take
    its three forms (``name``, ``name@vX.Y.Z``, ``name@refs/tags/vX.Y.Z``) and, when empty,
    default to slsa-verifier's trusted builders at a ``vX.Y.Z`` release tag; ``sourceTags``
    are exact tag names, ``sourceVersionedTags`` semver prefixes (``v13`` matches ``v13.0.30``),
    ``sourceBranches`` the branch the build ran on (for a tag push, the event's base ref), and
    ``workflowInputs`` the inputs of a ``workflow_dispatch``."""

    predicate_type: NonEmpty = "https://slsa.dev/provenance/v1"
    """The in-toto predicate type the attestation must carry (SLSA v1, v0.2, v0.1 or any other
    type URI)."""
    builder_ids: Annotated[list[NonEmpty], Field(max_length=64)] = []
    """Builder IDs, in slsa-verifier's forms. Empty: the trusted SLSA builders."""
    source_uris: Annotated[list[NonEmpty], Field(max_length=64)] = []
    """Source repository URIs, e.g. ``github.com/acme/sampler``."""
    source_refs: Annotated[list[NonEmpty], Field(max_length=64)] = []
    """Refs the build must come from, e.g. ``refs/heads/main`` (a bare name: branch or tag)."""
    source_branches: Annotated[list[NonEmpty], Field(max_length=64)] = []
    """Branches (without ``refs/heads/``), as slsa-verifier's ``--source-branch``."""
    source_tags: Annotated[list[NonEmpty], Field(max_length=64)] = []
    """Exact tags (without ``refs/tags/``), as ``--source-tag``."""
    source_versioned_tags: Annotated[
        list[Annotated[str, StringConstraints(pattern=_VERSIONED_TAG, max_length=128)]],
        Field(max_length=64),
    ] = []
    """Semver tags, as ``--source-versioned-tag``: ``v1`` matches any v1.x.y."""
    workflow_inputs: Annotated[dict[str, str], Field(max_length=32)] = {}
    """Inputs of a ``workflow_dispatch`` build, as ``--build-workflow-input``."""
    conditions: Annotated[list[Condition], Field(max_length=16)] = []
    """CEL conditions on the attestation; every one must hold."""

    @property
    def constrains_slsa(self) -> bool:
        return bool(
            self.builder_ids
            or self.source_uris
            or self.source_refs
            or self.source_branches
            or self.source_tags
            or self.source_versioned_tags
            or self.workflow_inputs
        )


_MATCH_FIELDS = frozenset(AttestationMatch.model_fields)


class AttestationRule(AttestationMatch):
    """An in-toto attestation the image must carry, signed by an authority of its image rule.

    Either the fields of :class:`AttestationMatch` directly, or ``anyOf``: a list of them of
    which one must hold (``SLSA v1 from this builder, or v0.2 from that one``)."""

    model_config = _cel_config(
        (
            "!has(self.anyOf) || size(self.anyOf) == 0 || (!has(self.predicateType) && "
            "!has(self.builderIds) && !has(self.sourceUris) && !has(self.sourceRefs) && "
            "!has(self.sourceBranches) && !has(self.sourceTags) && "
            "!has(self.sourceVersionedTags) && !has(self.workflowInputs) && "
            "!has(self.conditions))",
            "a rule with anyOf states its checks inside anyOf",
        )
    )

    name: Annotated[str, StringConstraints(pattern=_NAME)]
    """The rule's name, unique in the policy; authorities' attestations lists refer to it and
    reports name it."""
    any_of: Annotated[list[AttestationMatch], Field(max_length=8)] = []
    """Alternatives of which one must hold; a rule with anyOf states no checks of its own."""

    @model_validator(mode="after")
    def _either(self) -> AttestationRule:
        if self.any_of:
            mixed = sorted(self.model_fields_set & _MATCH_FIELDS)
            if mixed:
                raise ValueError(
                    f"attestation rule {self.name!r} has anyOf and also {mixed}: "
                    "state the checks inside anyOf"
                )
        return self

    def alternatives(self) -> list[AttestationMatch]:
        """The matches of which one must hold."""
        return list(self.any_of) or [self]

    @property
    def predicate_types(self) -> list[str]:
        return list(dict.fromkeys(m.predicate_type for m in self.alternatives()))


# --- the sampling recipe -----------------------------------------------------------------------


class IntRange(_Model):
    model_config = _cel_config(("self.min <= self.max", "min must be less than or equal to max"))

    min: Annotated[int, Field(ge=1, le=10000)]
    """Smallest allowed value (inclusive)."""
    max: Annotated[int, Field(ge=1, le=10000)]
    """Largest allowed value (inclusive); at least min."""

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.min <= value <= self.max


class FloatRange(_Model):
    model_config = _cel_config(("self.min <= self.max", "min must be less than or equal to max"))

    min: Annotated[float, Field(ge=0.0, le=100.0)]
    """Smallest allowed value (inclusive)."""
    max: Annotated[float, Field(ge=0.0, le=100.0)]
    """Largest allowed value (inclusive); at least min."""

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.min <= value <= self.max


def _enum_items(names: object) -> dict[str, Any]:
    # The CRD lists the known names, so an unknown sampler is refused at ``kubectl apply``.
    return {"items": {"type": "string", "enum": sorted(names)}}  # type: ignore[call-overload]


class RecipeRule(_Model):
    """What a sampler may do at inference time."""

    samplers: Annotated[
        list[str],
        Field(min_length=1, max_length=32, json_schema_extra=_enum_items(KNOWN_SAMPLERS)),
    ]
    """Sampler ids allowed (euler, dpmpp_2m, ddim, ...): the scheduler a request declares must be
    one of them."""
    schedules: Annotated[
        list[str], Field(max_length=32, json_schema_extra=_enum_items(KNOWN_SCHEDULES))
    ] = []
    """Schedule ids allowed (leading, trailing, linspace, karras, exponential, edm, flow-shift,
    ...); empty: any."""
    steps: IntRange
    """Allowed number of inference steps."""
    cfg: FloatRange
    """Allowed classifier-free guidance scale."""
    prediction_types: Annotated[
        list[str], Field(max_length=8, json_schema_extra=_enum_items(KNOWN_PREDICTION_TYPES))
    ] = ["epsilon"]
    """Allowed prediction types of the scheduler config (epsilon, v_prediction, sample, flow);
    empty: any."""

    @field_validator("samplers")
    @classmethod
    def _known_samplers(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in KNOWN_SAMPLERS]
        if unknown:
            raise ValueError(f"unknown sampler(s) {unknown}; known: {sorted(KNOWN_SAMPLERS)}")
        return value

    @field_validator("schedules")
    @classmethod
    def _known_schedules(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in KNOWN_SCHEDULES]
        if unknown:
            raise ValueError(f"unknown schedule(s) {unknown}; known: {sorted(KNOWN_SCHEDULES)}")
        return value

    @field_validator("prediction_types")
    @classmethod
    def _known_predictions(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in KNOWN_PREDICTION_TYPES]
        if unknown:
            raise ValueError(
                f"unknown prediction type(s) {unknown}; known: {sorted(KNOWN_PREDICTION_TYPES)}"
            )
        return value


#: τ when the policy sets none and has no calibration entries.
DEFAULT_TAU = 1e-4


class GoldenDigests(_Model):
    """Digests the running artefacts must match. An empty list leaves that artefact unpinned."""

    model_weights: Annotated[list[Sha256Digest], Field(max_length=16)] = []
    """Digests of the denoiser's weights (UNet or transformer) as `samplerguard digest` prints
    them: the digest of the loaded tensors, not sha256sum of the file. The sidecar, the
    verifier's reference model and attestations are held to it."""
    text_encoder: Annotated[list[Sha256Digest], Field(max_length=16)] = []
    """Digests of the text encoder weights, as `samplerguard digest` prints them."""
    scheduler_config: Annotated[list[Sha256Digest], Field(max_length=16)] = []
    """Digests of the scheduler class and config, as `samplerguard digest` prints them; a request
    whose declared scheduler config is not listed is refused."""
    solver_code: Annotated[list[Sha256Digest], Field(max_length=16)] = []
    """Digests of the diffusers scheduler code the app runs, as `samplerguard digest` prints them
    with the serving image's diffusers version."""


class TicketSigner(_Model):
    """A gateway's key for request tickets."""

    model_config = _cel_config(
        (
            "self.publicKey.contains('-----BEGIN PUBLIC KEY-----') && "
            "self.publicKey.contains('-----END PUBLIC KEY-----')",
            "publicKey must be a PEM public key (-----BEGIN PUBLIC KEY----- ... "
            "-----END PUBLIC KEY-----)",
        ),
    )

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")]
    """A name for the key (the gateway it belongs to), shown in messages."""
    public_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """The gateway's Ed25519 public key, PEM (``samplerguard ticket keygen`` writes one)."""

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        try:
            key = load_pem_public_key(value.encode())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"publicKey is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"ticket keys are Ed25519, got {type(key).__name__.lstrip('_')}")
        return value


class TicketRule(_Model):
    """Requests must carry a ticket signed by the consumer's gateway (see ``samplerguard
    ticket``): the sidecar issues a seed, and commits a trajectory, only for a request id a
    gateway ticketed, once. The provider can then no longer invent request ids to draw seeds
    under and keep the draw it likes."""

    signers: Annotated[
        list[TicketSigner],
        Field(
            min_length=1,
            max_length=8,
            json_schema_extra=_NAMED_LIST,
        ),
    ]
    """The gateways' keys; a ticket signed by any one of them is accepted."""
    max_lifetime_seconds: Annotated[int, Field(ge=10, le=86400)] = 600
    """The longest a ticket may live (expiresAt - issuedAt): a longer-lived one is refused."""

    @model_validator(mode="after")
    def _unique_names(self) -> TicketRule:
        names = [s.name for s in self.signers]
        if len(set(names)) != len(names):
            raise ValueError(f"ticket signer names repeat: {names}")
        return self


class RngRule(_Model):
    mode: Literal["ctr-drbg", "hmac-drbg", "framework"] = "ctr-drbg"
    """Where the noise comes from: ctr-drbg or hmac-drbg (NIST SP 800-90A, per request, seeded by
    the sidecar) or framework (the framework's own generator, recorded only)."""
    escrow: bool = False
    """Require the request seed escrowed to the verifier's X25519 key."""
    health_checks: bool = True
    """Run the seed-vector health checks before generation."""
    tickets: TicketRule | None = None
    """Require a gateway-signed request ticket with every request (unset: none required)."""


class CanaryCase(_Model):
    """A canary condition run by the verifier against the declared model."""

    class_label: Annotated[int, Field(ge=0, le=100000)]
    """The class the canary conditions on."""
    seed_shift: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    """Shift η applied to the canary's seed vector (0 = honest seed)."""
    samples: Annotated[int, Field(ge=1, le=1024)] = 16
    """Images generated for this case per canary run."""


#: The build fingerprint's fields (``samplerguard.commitment.fingerprint``).
FINGERPRINT_FIELDS = frozenset(
    {
        "torch",
        "diffusers",
        "numpy",
        "python",
        "device",
        "deviceName",
        "capability",
        "cuda",
        "threads",
        "mkldnn",
        "deterministic",
        "tf32Matmul",
        "tf32Cudnn",
        "cudnn",
        "cudnnDeterministic",
        "cudnnBenchmark",
        "textCleaning",
    }
)
#: Fields the verifier sets to the provider's values for a re-check (they never differ), and
#: fields that only record facts: a calibration entry names neither.
REPRODUCED_FIELDS = frozenset(
    {"threads", "mkldnn", "tf32Matmul", "tf32Cudnn", "cudnn", "cudnnDeterministic", "deterministic"}
)
#: (``textCleaning``, the optional packages some pipelines clean prompts with, changes no
#: kernel: the codecs of those pipelines compare it themselves)
_UNCOMPARED_FIELDS = REPRODUCED_FIELDS | {"cudnnBenchmark", "textCleaning"}

FingerprintText = Annotated[str, StringConstraints(max_length=128)]
#: Tolerances above this are not calibrations of honest float drift but of a different
#: computation; the policy refuses them.
MAX_CALIBRATED_TAU = 1e-2


class CalibrationEntry(_Model):
    """The measured honest drift between a provider's build and a verifier's, as calibrate
    prints it."""

    producer: Annotated[
        dict[str, FingerprintText],
        Field(
            min_length=1,
            max_length=8,
            description="Fingerprint fields of the provider's build (values as text: strings "
            "as they are, null, true/false and integers as JSON writes them).",
        ),
    ]
    verifier: Annotated[
        dict[str, FingerprintText],
        Field(
            min_length=1,
            max_length=8,
            description="The same fields of the verifier's build; at least one differs from "
            "the producer's.",
        ),
    ]
    tau: Annotated[
        float,
        Field(
            gt=0.0,
            le=MAX_CALIBRATED_TAU,
            allow_inf_nan=False,
            description="The tolerance on the re-check score for this pair of builds.",
        ),
    ]
    honest_samples: Annotated[
        int,
        Field(
            ge=1,
            le=10**9,
            description="How many honest steps were re-checked across the pair to choose tau.",
        ),
    ]
    false_rejection: Annotated[
        float,
        Field(
            ge=0.0,
            le=1.0,
            allow_inf_nan=False,
            description="Upper confidence bound (95%) on the probability that tau rejects an "
            "honest challenged request, from honestSamples.",
        ),
    ]
    weight_noise_min: Annotated[
        float | None,
        Field(
            gt=0.0,
            allow_inf_nan=False,
            description="The smallest score of a provider whose weights carry 1e-4 relative "
            "noise, measured across the same pair; tau must stay below it.",
        ),
    ] = None

    @model_validator(mode="after")
    def _a_real_pair(self) -> CalibrationEntry:
        named = set(self.producer) | set(self.verifier)
        unknown = sorted(named - FINGERPRINT_FIELDS)
        if unknown:
            raise ValueError(
                f"calibration entry names fields {unknown} that the build fingerprint does not "
                f"have (known: {sorted(FINGERPRINT_FIELDS - _UNCOMPARED_FIELDS)})"
            )
        reproduced = sorted(named & _UNCOMPARED_FIELDS)
        if reproduced:
            raise ValueError(
                f"calibration entry names {reproduced}: the verifier sets these to the "
                "provider's values (or does not compare them), so they never differ"
            )
        if set(self.producer) != set(self.verifier):
            raise ValueError(
                f"calibration entry's producer names {sorted(self.producer)} and its verifier "
                f"{sorted(self.verifier)}: both sides must name the same fields"
            )
        if all(self.producer[k] == self.verifier[k] for k in self.producer):
            raise ValueError(
                f"calibration entry's producer and verifier are the same build "
                f"({self.producer}): a reproduced build is checked exactly, without tau"
            )
        if self.weight_noise_min is not None and self.tau >= self.weight_noise_min:
            raise ValueError(
                f"calibration entry's tau {self.tau:g} is not below the 1e-4 weight-noise "
                f"score {self.weight_noise_min:g} measured for the same pair: it would accept "
                "that provider"
            )
        return self


class VerificationRule(_Model):
    fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    """Fraction of requests challenged."""
    steps_per_challenge: Annotated[int, Field(ge=1, le=64)] = 2
    """Windows opened per challenge (k)."""
    window: Annotated[int, Field(ge=1, le=64)] = 1
    """Consecutive steps re-checked per window (w): a deviation on every w-th step or more often
    is caught by every challenge."""
    deviation_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    """The fraction of deviating steps the reported catch probability is computed for."""
    target_catch_probability: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.999
    """The catch probability per provider the report states the number of requests for."""
    require_same_build: Annotated[
        bool,
        Field(
            description="Fail a trajectory whose build this verifier cannot reproduce and no "
            "calibration entry covers, instead of holding it to tau."
        ),
    ] = False
    tau: Annotated[
        float | None,
        Field(
            ge=0.0,
            le=1.0,
            allow_inf_nan=False,
            description="Tolerance on the re-check score for a build this verifier cannot "
            "reproduce and no calibration entry covers. Unset: the tightest calibrated tau "
            "(1e-4 without calibration). It may not exceed any calibrated tau.",
        ),
    ] = None
    calibration: Annotated[
        list[CalibrationEntry],
        Field(
            max_length=64,
            description="Calibrated tolerances per pair of builds, as samplerguard calibrate "
            "--json prints them. A trajectory is held to the tightest entry whose producer "
            "matches its declared build and whose verifier matches this verifier's, on every "
            "field that differs.",
        ),
    ] = []
    retention: Duration = "24h"
    """How long openings are kept."""
    canaries: Annotated[list[CanaryCase], Field(max_length=64)] = []
    """Canary cases the verifier runs against the declared model."""
    canary_min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] = 0.8
    """Minimum conditional accuracy for the canary suite; a drop below fails the promotion."""

    @property
    def retention_seconds(self) -> float:
        return duration_seconds(self.retention)

    @property
    def fallback_tau(self) -> float:
        """τ for a build no calibration entry covers: ``tau``, else the tightest calibrated τ,
        else 1e-4."""
        if self.tau is not None:
            return self.tau
        return min((e.tau for e in self.calibration), default=DEFAULT_TAU)

    @model_validator(mode="after")
    def _fallback_within_calibration(self) -> VerificationRule:
        # The provider chooses the fingerprint it declares: an uncovered one is always within
        # its reach, so a fallback looser than a calibrated pair would loosen that pair too.
        tightest = min((e.tau for e in self.calibration), default=None)
        if self.tau is not None and tightest is not None and self.tau > tightest:
            raise ValueError(
                f"verification.tau {self.tau:g} exceeds the tightest calibrated tau "
                f"{tightest:g}: a provider could declare an uncalibrated build to be held to the "
                "looser one; lower tau, leave it unset, or set requireSameBuild"
            )
        pairs = [(sorted(e.producer.items()), sorted(e.verifier.items())) for e in self.calibration]
        repeated = [p for i, p in enumerate(pairs) if p in pairs[:i]]
        if repeated:
            raise ValueError(f"calibration entries repeat the pair {repeated[0]}")
        return self


# --- selectors and metadata ---------------------------------------------------------------------


class LabelSelectorRequirement(_Model):
    key: NonEmpty
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """In, NotIn, Exists or DoesNotExist."""
    values: Annotated[list[str], Field(max_length=64)] = []
    """Label values; non-empty for In and NotIn, empty for Exists and DoesNotExist."""


class LabelSelector(_Model):
    match_labels: dict[str, str] = {}
    """Labels that must all be present with these values."""
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=32)] = []
    """Label requirements that must all hold."""

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
            if req.operator == "In" and labels.get(req.key) not in req.values:
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
        return True


class SamplerPolicySpec(_Model):
    """The spec both policy kinds share."""

    # The attestation rules are keyed by name, so the API server refuses duplicates.
    mode: Literal["enforce", "warn", "audit"] = "enforce"
    """What a violation does: enforce denies the Pod, warn admits it with a warning, audit admits
    it and only reports."""
    # The list bounds multiply into the API server's CEL cost estimate (images x authorities x
    # identities); they were chosen so the CRD is accepted with room to spare.
    images: Annotated[list[ImageRule], Field(max_length=16)] = []
    """Image rules: which images may run and who must have signed them. An image no rule matches
    is not governed by this policy."""
    attestations: Annotated[
        list[AttestationRule],
        Field(
            max_length=32,
            json_schema_extra=_NAMED_LIST,
        ),
    ] = []
    """Attestations (SLSA provenance and others) the image must carry; names are unique."""
    recipe: RecipeRule | None = None
    """The sampling recipes allowed: samplers, schedules, steps, guidance and prediction type."""
    golden_digests: GoldenDigests = GoldenDigests()
    """Digests the running model, encoder, scheduler config and solver code must match; print
    them with `samplerguard digest`."""
    rng: RngRule = RngRule()
    """How per-request noise is drawn and checked."""
    verification: VerificationRule = VerificationRule()
    """How often and how strictly the verifier re-checks committed trajectories."""
    namespace_selector: LabelSelector | None = None
    """Only on ClusterSamplerPolicy: which namespaces it governs. Unset: every opted-in one."""

    @model_validator(mode="after")
    def _unique_attestation_names(self) -> SamplerPolicySpec:
        names = [a.name for a in self.attestations]
        if len(set(names)) != len(names):
            raise ValueError(f"attestation names repeat: {names}")
        for rule in self.images:
            for authority in rule.authorities:
                unknown = [n for n in authority.attestations if n not in names]
                if unknown:
                    raise ValueError(
                        f"authority {authority.name!r} of image rule {rule.glob!r} names "
                        f"attestation rules {unknown} that spec.attestations does not define "
                        f"(defined: {names})"
                    )
        return self

    def image_rules_for(self, image: str) -> list[ImageRule]:
        return [rule for rule in self.images if rule.matches(image)]


class ObjectMeta(_Model):
    """The part of ``metadata`` samplerguard reads."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """The object's name."""
    namespace: str | None = None
    """The object's namespace."""
    uid: str = ""
    """The object's UID."""
    resource_version: str = ""
    """The object's resourceVersion."""
    generation: int = 0
    """The object's generation."""
    labels: dict[str, str] = {}
    """The object's labels."""


class PolicyCondition(_Model):
    type: str
    """Condition type; Ready says whether the policy is in force."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """A CamelCase reason for the last transition."""
    message: str = ""
    """Why, in words (for Ready=False: what in the policy is invalid)."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The policy generation this condition was computed for."""


class PolicyStatus(_Model):
    conditions: list[PolicyCondition] = []
    """The policy's conditions (Ready)."""
    last_verdict: str | None = None
    """The operator's summary of the latest results under this policy."""
    observed_generation: int | None = None
    """The policy generation the operator last processed."""


class _PolicyObject(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    api_version: Literal["samplerguard.dev/v1alpha1"] = "samplerguard.dev/v1alpha1"
    """samplerguard.dev/v1alpha1."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: SamplerPolicySpec
    """The policy."""
    status: PolicyStatus | None = None
    """Written by the operator."""

    @property
    def key(self) -> str:
        """A stable identity for caches: kind/namespace/name@uid."""
        ns = self.metadata.namespace or ""
        return f"{type(self).__name__}/{ns}/{self.metadata.name}@{self.metadata.uid}"


class ClusterSamplerPolicy(_PolicyObject):
    kind: Literal["ClusterSamplerPolicy"] = "ClusterSamplerPolicy"
    """ClusterSamplerPolicy."""


class SamplerPolicy(_PolicyObject):
    kind: Literal["SamplerPolicy"] = "SamplerPolicy"
    """SamplerPolicy."""

    @model_validator(mode="after")
    def _no_namespace_selector(self) -> SamplerPolicy:
        if self.spec.namespace_selector is not None:
            raise ValueError(
                "spec.namespaceSelector is only allowed on ClusterSamplerPolicy; "
                "a SamplerPolicy governs its own namespace"
            )
        return self


AnyPolicy = ClusterSamplerPolicy | SamplerPolicy


def parse_policy(body: object) -> ClusterSamplerPolicy | SamplerPolicy:
    """Parse a policy object (a dict from YAML/JSON). Raises :class:`PolicyError` that names the
    offending field and what was wrong with it."""
    if not isinstance(body, dict):
        raise PolicyError(f"a policy must be a mapping, got {type(body).__name__}")
    kind = body.get("kind")
    model: type[ClusterSamplerPolicy] | type[SamplerPolicy]
    if kind == "ClusterSamplerPolicy":
        model = ClusterSamplerPolicy
    elif kind == "SamplerPolicy":
        model = SamplerPolicy
    else:
        raise PolicyError(
            f"kind {kind!r} is not a samplerguard policy "
            "(expected ClusterSamplerPolicy or SamplerPolicy)"
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise PolicyError(_explain(kind, body, exc)) from None


def _explain(kind: str, body: dict[str, Any], exc: ValidationError) -> str:
    name = (
        body.get("metadata", {}).get("name", "?") if isinstance(body.get("metadata"), dict) else "?"
    )
    problems = []
    for err in exc.errors(include_url=False, include_input=False)[:10]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    more = f" (and {exc.error_count() - 10} more)" if exc.error_count() > 10 else ""
    return f"{kind} {name!r} is invalid: " + "; ".join(problems) + more
