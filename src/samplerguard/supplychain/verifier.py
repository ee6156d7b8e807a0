"""Verify an image against a :class:`~samplerguard.policy.spec.SamplerPolicySpec`.

The order of checks, for one image and one policy:

1. resolve the reference to a manifest digest (once; every later check binds to it);
2. pick the policy's image rules whose glob matches the image; none → the verdict fails
   (a policy that does not name an image does not vouch for it);
3. fetch the signatures once: referrers API, else the ``sha256-<hex>.sig`` tag, plus
   Sigstore bundles attached as referrers;
4. per rule, per authority: does at least one signature verify (key, or keyless chain +
   identity + Rekor SET) *and* bind the image digest? ``threshold`` authorities must pass;
5. fetch the attestations once (referrers, else the ``.att`` tag); keep the DSSE envelopes
   signed by any authority of the matching rules whose in-toto subject names this digest;
6. per attestation rule: a kept attestation of its predicate type must satisfy the SLSA
   checks (builder id, source URI, ref);
7. golden digests: when the policy pins model weights, encoder, scheduler config or solver
   code, the kept attestations must carry those artefacts, and every carried digest of a
   pinned kind must be in the golden list.

Outcomes: a *rejection* is a returned :class:`ImageVerdict` with ``passed=False`` (call
:meth:`ImageVerdict.raise_for_failure` for a :class:`VerificationError`). A registry that
cannot be reached raises :class:`TemporaryError` (fail closed, or use a last-known-good
cache). A reference that cannot be parsed raises :class:`MalformedInputError`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from samplerguard.errors import MalformedInputError, SamplerGuardError, VerificationError
from samplerguard.policy.spec import Authority, ImageRule, KeyAuthority, SamplerPolicySpec
from samplerguard.supplychain.cosign import (
    Artifacts,
    BundleArtifact,
    SignedLayer,
    check_simple_signing,
    fetch_artifacts,
)
from samplerguard.supplychain.dsse import Envelope, Statement
from samplerguard.supplychain.keyless import verify_keyless
from samplerguard.supplychain.keys import PublicKey, default_hash, load_public_key
from samplerguard.supplychain.provenance import check_attestation_rule, check_golden
from samplerguard.supplychain.reference import ImageReference, parse_reference
from samplerguard.supplychain.registry import RegistryClient, deadline
from samplerguard.supplychain.sigstore_bundles import COSIGN_SIGN_PREDICATE, verify_dsse_bundle
from samplerguard.supplychain.trust import TrustedRoots
from samplerguard.supplychain.verdict import CheckResult, ImageVerdict

__all__ = ["ImageVerifier", "glob_candidates"]

_MAX_DETAIL = 1500


def glob_candidates(image_ref: str, parsed: ImageReference | None = None) -> tuple[str, ...]:
    """The strings an image rule's glob is matched against: the reference as written, the
    normalised ``registry/repo``, and the normalised full reference."""
    ref = parsed or parse_reference(image_ref)
    return tuple(dict.fromkeys((image_ref, ref.name, str(ref))))


@dataclass(frozen=True)
class _Attestation:
    source: str
    statement: Statement
    signer: str


class ImageVerifier:
    """Verifies images; thread-safe, meant to live as long as the process.

    Args:
        client: the registry client (connections and tokens are reused across calls).
        trusted_roots: roots for keyless authorities and Sigstore bundles.
        budget: seconds one :meth:`verify` may spend on the registry in total, retries
            included (default 8 s, inside the API server's 10 s webhook timeout); past it,
            :class:`TemporaryError`. ``None``: only the client's per-request timeouts.
    """

    def __init__(
        self,
        client: RegistryClient,
        *,
        trusted_roots: TrustedRoots | None = None,
        budget: float | None = 8.0,
    ) -> None:
        self._client = client
        self._budget = budget
        self._roots = trusted_roots or TrustedRoots()
        self._keys: dict[tuple[str, str], PublicKey] = {}
        self._lock = threading.Lock()

    def verify(
        self,
        image_ref: str,
        spec: SamplerPolicySpec,
        *,
        policy_name: str,
        digest: str | None = None,
        client: RegistryClient | None = None,
    ) -> ImageVerdict:
        """Verify ``image_ref`` under ``spec``.

        Args:
            image_ref: as written in the pod (``repo:tag`` or ``repo@sha256:…``).
            spec: the policy spec.
            policy_name: shown in denials (e.g. ``ClusterSamplerPolicy/prod``).
            digest: an already resolved digest (skips the tag lookup).
            client: a client for this call only, e.g. ``client.with_credentials(pull_secrets)``.

        Returns the verdict (a rejection is ``passed=False``). Raises :class:`TemporaryError`
        when the registry is unreachable and :class:`MalformedInputError` for a bad reference.
        """
        with deadline(self._budget):
            return self._verify(image_ref, spec, policy_name, digest, client)

    def _verify(
        self,
        image_ref: str,
        spec: SamplerPolicySpec,
        policy_name: str,
        digest: str | None,
        client: RegistryClient | None,
    ) -> ImageVerdict:
        image = parse_reference(image_ref)
        registry = client or self._client
        checks: list[CheckResult] = []

        def verdict(resolved: str) -> ImageVerdict:
            passed = bool(checks) and all(c.passed for c in checks)
            return ImageVerdict(image_ref, resolved, policy_name, passed, tuple(checks))

        # (1): the rules that govern this image.
        candidates = glob_candidates(image_ref, image)
        rules = [r for r in spec.images if any(r.matches(c) for c in candidates)]
        if not rules:
            globs = [r.glob for r in spec.images]
            checks.append(
                CheckResult("image-rule", False, f"no image rule matches {image} (globs: {globs})")
            )
            return verdict(image.digest or "")
        checks.append(
            CheckResult("image-rule", True, "matched " + ", ".join(repr(r.glob) for r in rules))
        )

        # (2): one digest for every later check.
        if digest is not None and not _is_digest(digest):
            raise MalformedInputError(f"digest {digest[:80]!r} is not sha256:<64 hex>")
        if image.digest and digest and digest != image.digest:
            raise MalformedInputError(f"digest {digest} contradicts the reference {image}")
        resolved = image.digest or digest
        if resolved is None:
            try:
                resolved = registry.resolve(image)
            except (VerificationError, MalformedInputError) as exc:
                # The reference was fine; what the registry answered was not.
                checks.append(CheckResult("resolve", False, str(exc)))
                return verdict("")
            checks.append(CheckResult("resolve", True, f"{image.tag} -> {resolved}"))
        else:
            checks.append(CheckResult("resolve", True, f"pinned {resolved}"))

        # (3): fetch everything attached to the digest, once.
        need_attestations = bool(spec.attestations) or _pins_golden(spec)
        artifacts = fetch_artifacts(registry, image, resolved, attestations=need_attestations)

        # Sigstore bundles are verified once per keyless authority, and serve as signatures
        # (cosign's sign predicate) and as attestations (any other predicate).
        # Two rules may name different signers alike: identity is the whole authority.
        authorities = list({_akey(a): a for r in rules for a in r.authorities}.values())
        bundles = self._bundles(artifacts, authorities)

        # (4): N-of-M authorities per rule.
        for rule in rules:
            checks.append(self._check_rule(rule, artifacts, resolved, bundles))

        # (5)–(7): attestations and golden digests.
        if need_attestations:
            kept, rejected = self._attestations(artifacts, authorities, resolved)
            for found in bundles.values():
                for att in found:
                    if (
                        isinstance(att, str)
                        or att.statement.predicate_type == COSIGN_SIGN_PREDICATE
                    ):
                        continue
                    if att.statement.names_digest(resolved):
                        kept.append(att)
                    else:
                        rejected.append(
                            f"{att.source} ({att.statement.predicate_type}, "
                            f"signed by {att.signer}) is for another image "
                            f"(subject digest mismatch: got {att.statement.subject_digests()[:4]}, "
                            f"expected {resolved})"
                        )
            notes = rejected + artifacts.problems
            for att_rule in spec.attestations:
                checks.append(_check_attestation(att_rule, kept, notes, resolved))
            for role, problems in check_golden(
                [k.statement for k in kept], spec.golden_digests
            ).items():
                detail = "; ".join(problems) if problems else "bound by a verified attestation"
                checks.append(CheckResult(f"golden/{role}", not problems, _clip(detail)))
        return verdict(resolved)

    # -- signatures ------------------------------------------------------------------------

    def _bundles(
        self, artifacts: Artifacts, authorities: Sequence[Authority]
    ) -> dict[str, list[_Attestation | str]]:
        """Per keyless authority: the statements of the bundles it signed, or why not."""
        out: dict[str, list[_Attestation | str]] = {}
        if not artifacts.bundles:
            return out
        for authority in authorities:
            if authority.keyless is None:
                continue
            found: list[_Attestation | str] = []
            for bundle in artifacts.bundles:
                try:
                    statement, identity = self._verify_bundle(authority, bundle)
                except (VerificationError, MalformedInputError) as exc:
                    found.append(f"{bundle.source}: {exc}")
                    continue
                found.append(
                    _Attestation(bundle.source, statement, f"{authority.name} ({identity})")
                )
            out[_akey(authority)] = found
        return out

    def _check_rule(
        self,
        rule: ImageRule,
        artifacts: Artifacts,
        digest: str,
        bundles: dict[str, list[_Attestation | str]],
    ) -> CheckResult:
        lines = []
        count = 0
        for authority in rule.authorities:
            ok, detail = self._check_authority(authority, artifacts, digest, bundles)
            count += ok
            lines.append(f"{authority.name}: {'ok, ' if ok else ''}{detail}")
        passed = count >= rule.threshold
        if not artifacts.signatures and not artifacts.bundles:
            where = ", ".join(artifacts.sources) or "referrers and tag sha256-….sig"
            lines.append(f"no signatures found (looked at {where})")
        if not passed and artifacts.problems:
            lines.append("unreadable: " + "; ".join(artifacts.problems[:4]))
        head = (
            f"{count} of {len(rule.authorities)} authorities verified {digest} "
            f"(threshold {rule.threshold})"
        )
        return CheckResult(
            f"signatures[{rule.glob}]", passed, _clip(head + ": " + "; ".join(lines))
        )

    def _key(self, key: KeyAuthority) -> PublicKey:
        explicit = "hash_algorithm" in key.model_fields_set
        cache_key = (key.public_key, key.hash_algorithm if explicit else "")
        with self._lock:
            found = self._keys.get(cache_key)
            if found is None:
                found = load_public_key(key.public_key, key.hash_algorithm)
                if not explicit:
                    # As sigstore's LoadDefaultSignerVerifier: the hash follows the curve.
                    found = PublicKey(found.key, default_hash(found))
                self._keys[cache_key] = found
            return found

    def _check_authority(
        self,
        authority: Authority,
        artifacts: Artifacts,
        digest: str,
        bundles: dict[str, list[_Attestation | str]],
    ) -> tuple[bool, str]:
        failures: list[str] = []
        for layer in artifacts.signatures:
            try:
                signer = self._verify_signature(authority, layer, digest)
            except (VerificationError, MalformedInputError) as exc:
                failures.append(f"{layer.source}: {exc}")
                continue
            return True, f"{signer} ({layer.source})"
        for att in bundles.get(_akey(authority), []):
            if isinstance(att, str):
                failures.append(att)
                continue
            if att.statement.predicate_type != COSIGN_SIGN_PREDICATE:
                continue
            if not att.statement.names_digest(digest):
                failures.append(
                    f"{att.source}: signed digest mismatch "
                    f"(got {att.statement.subject_digests()[:4]}, expected {digest})"
                )
                continue
            return True, f"keyless {att.signer} ({att.source})"
        if not failures:
            return False, "no signature to check"
        return False, "no signature verifies: " + "; ".join(failures[:4])

    def _verify_signature(self, authority: Authority, layer: SignedLayer, digest: str) -> str:
        if authority.key is not None:
            key = self._key(authority.key)
            # (a): the signature over the payload, with the authority's key.
            if not key.verify(layer.signature, layer.payload):
                raise VerificationError(f"signature does not verify with key ({key.algorithm})")
            # (b): the payload names this digest.
            check_simple_signing(layer.payload, digest)
            return f"key {key.algorithm}"
        assert authority.keyless is not None
        root = self._roots.get(authority.keyless.trusted_root)
        identity = verify_keyless(
            certificate_pem=layer.certificate_pem,
            chain_pem=layer.chain_pem,
            rekor_bundle=layer.rekor_bundle,
            signature=layer.signature,
            signed_bytes=layer.payload,
            payload=layer.payload,
            identities=list(authority.keyless.identities),
            trusted_root=root,
        )
        check_simple_signing(layer.payload, digest)
        return f"keyless {identity}"

    def _verify_bundle(self, authority: Authority, bundle: BundleArtifact) -> tuple[Statement, str]:
        assert authority.keyless is not None
        root = self._roots.get(authority.keyless.trusted_root)
        payload_type, payload, identity = verify_dsse_bundle(
            bundle.raw, list(authority.keyless.identities), root
        )
        statement = Envelope(payload_type, payload, ()).statement()
        return statement, str(identity)

    # -- attestations ----------------------------------------------------------------------

    def _attestations(
        self, artifacts: Artifacts, authorities: Sequence[Authority], digest: str
    ) -> tuple[list[_Attestation], list[str]]:
        kept: list[_Attestation] = []
        rejected: list[str] = []
        for layer in artifacts.attestations:
            try:
                envelope = Envelope.from_json(layer.payload)
                statement = envelope.statement()
            except MalformedInputError as exc:
                rejected.append(f"{layer.source}: {exc}")
                continue
            signer = None
            errors: list[str] = []
            for authority in authorities:
                try:
                    signer = self._verify_envelope(authority, layer, envelope)
                    break
                except (VerificationError, MalformedInputError) as exc:
                    errors.append(f"{authority.name}: {exc}")
            if signer is None:
                rejected.append(
                    f"{layer.source} ({statement.predicate_type}) is signed by no authority: "
                    + "; ".join(errors[:3])
                )
                continue
            if not statement.names_digest(digest):
                rejected.append(
                    f"{layer.source} ({statement.predicate_type}) is for another image "
                    f"(subject digest mismatch: got {statement.subject_digests()[:4]}, "
                    f"expected {digest})"
                )
                continue
            kept.append(_Attestation(layer.source, statement, signer))
        return kept, rejected

    def _verify_envelope(self, authority: Authority, layer: SignedLayer, envelope: Envelope) -> str:
        signed = envelope.pae
        if authority.key is not None:
            key = self._key(authority.key)
            if any(key.verify(sig, signed) for _, sig in envelope.signatures):
                return f"{authority.name} (key {key.algorithm})"
            raise VerificationError(f"no DSSE signature verifies with key ({key.algorithm})")
        assert authority.keyless is not None
        root = self._roots.get(authority.keyless.trusted_root)
        last: SamplerGuardError | None = None
        for _, sig in envelope.signatures:
            try:
                identity = verify_keyless(
                    certificate_pem=layer.certificate_pem,
                    chain_pem=layer.chain_pem,
                    rekor_bundle=layer.rekor_bundle,
                    signature=sig,
                    signed_bytes=signed,
                    payload=envelope.payload,
                    identities=list(authority.keyless.identities),
                    trusted_root=root,
                )
            except (VerificationError, MalformedInputError) as exc:
                last = exc
                continue
            return f"{authority.name} (keyless {identity})"
        raise VerificationError(str(last) if last else "no DSSE signature")


def _check_attestation(
    rule: Any, kept: list[_Attestation], notes: list[str], digest: str
) -> CheckResult:
    name = f"attestation/{rule.name}"
    of_type = [k for k in kept if k.statement.predicate_type == rule.predicate_type]
    if not of_type:
        found = sorted({k.statement.predicate_type for k in kept})
        detail = (
            f"no verified attestation of type {rule.predicate_type} for {digest} "
            f"(verified types: {found or 'none'})"
        )
        if notes:
            detail += "; ignored: " + "; ".join(notes[:4])
        return CheckResult(name, False, _clip(detail))
    failures = []
    for att in of_type:
        problems = check_attestation_rule(att.statement, rule)
        if not problems:
            return CheckResult(
                name, True, f"{rule.predicate_type} from {att.source}, signed by {att.signer}"
            )
        failures.append(f"{att.source}: " + "; ".join(problems))
    return CheckResult(name, False, _clip("; ".join(failures[:4])))


def _akey(authority: Authority) -> str:
    return authority.model_dump_json()


def _pins_golden(spec: SamplerPolicySpec) -> bool:
    g = spec.golden_digests
    return bool(g.model_weights or g.text_encoder or g.scheduler_config or g.solver_code)


def _is_digest(value: str) -> bool:
    return (
        len(value) == 71
        and value.startswith("sha256:")
        and all(c in "0123456789abcdef" for c in value[7:])
    )


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"
