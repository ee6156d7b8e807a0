"""Verify an image against a :class:`~samplerguard.policy.spec.SamplerPolicySpec`.

The order of checks, for one image and one policy:

1. resolve the reference to a manifest digest (once; every later check binds to it);
2. pick the policy's image rules whose glob matches the image; none → the verdict fails
   (a policy that does not name an image does not vouch for it);
3. fetch the signatures once: referrers API, else the ``sha256-<hex>.sig`` tag, plus
   Sigstore bundles attached as referrers;
4. verify the attestations (``.att`` layers and DSSE bundles): keep the DSSE envelopes signed
   by an authority of the matching rules whose in-toto subject names this digest, noting
   every authority that signed each;
5. per rule, per authority: does at least one signature verify (key, or keyless chain +
   identity + Rekor SET) *and* bind the image digest? An authority with ``attestations``
   counts instead when an attestation it signed passes one of the named rules.
   ``threshold`` authorities must pass;
6. per attestation rule: a kept attestation passes one of its alternatives (predicate type,
   SLSA checks, CEL conditions);
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
from collections.abc import Callable, Sequence

from samplerguard.errors import MalformedInputError, SamplerGuardError, VerificationError
from samplerguard.policy.spec import (
    AttestationRule,
    Authority,
    ImageRule,
    KeyAuthority,
    SamplerPolicySpec,
    SecretKeyRef,
)
from samplerguard.supplychain.attestations import (
    VerifiedAttestation,
    authority_key,
    bundle_attestations,
    check_attestation,
    check_attesting_authority,
    clip,
)
from samplerguard.supplychain.cosign import (
    Artifacts,
    BundleArtifact,
    SignedLayer,
    check_simple_signing,
    fetch_artifacts,
    tag_for,
)
from samplerguard.supplychain.dsse import Envelope, Statement
from samplerguard.supplychain.keyless import verify_keyless
from samplerguard.supplychain.keys import PublicKey, default_hash, load_public_key
from samplerguard.supplychain.provenance import check_golden
from samplerguard.supplychain.reference import ImageReference, parse_reference
from samplerguard.supplychain.registry import RegistryClient, deadline
from samplerguard.supplychain.sigstore_bundles import (
    COSIGN_SIGN_PREDICATE,
    verify_dsse_bundle,
    verify_key_bundle,
)
from samplerguard.supplychain.trust import TrustedRoots
from samplerguard.supplychain.verdict import CheckResult, ImageVerdict

__all__ = ["ImageVerifier", "KeySource", "glob_candidates"]

#: Reads a public key (PEM) from a Secret: (reference, the policy's namespace or None for a
#: cluster-scoped policy) → PEM. Raises :class:`VerificationError` when the Secret or its key
#: is absent, :class:`TemporaryError` when the API cannot be reached.
KeySource = Callable[[SecretKeyRef, "str | None"], str]


def glob_candidates(image_ref: str, parsed: ImageReference | None = None) -> tuple[str, ...]:
    """The strings an image rule's glob is matched against: the reference as written, the
    normalised ``registry/repo``, and the normalised full reference."""
    ref = parsed or parse_reference(image_ref)
    return tuple(dict.fromkeys((image_ref, ref.name, str(ref))))


class ImageVerifier:
    """Verifies images; thread-safe, meant to live as long as the process.

    Args:
        client: the registry client (connections and tokens are reused across calls).
        trusted_roots: roots for keyless authorities and Sigstore bundles.
        key_source: reads keys that policies reference by ``secretRef``; None: such
            authorities fail (their key cannot be read).
        budget: seconds one :meth:`verify` may spend on the registry in total, retries
            included (default 8 s, inside the API server's 10 s webhook timeout); past it,
            :class:`TemporaryError`. ``None``: only the client's per-request timeouts.
    """

    def __init__(
        self,
        client: RegistryClient,
        *,
        trusted_roots: TrustedRoots | None = None,
        key_source: KeySource | None = None,
        budget: float | None = 8.0,
    ) -> None:
        self._client = client
        self._budget = budget
        self._roots = trusted_roots or TrustedRoots()
        self._key_source = key_source
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
        policy_namespace: str | None = None,
    ) -> ImageVerdict:
        """Verify ``image_ref`` under ``spec``.

        Args:
            image_ref: as written in the pod (``repo:tag`` or ``repo@sha256:…``).
            spec: the policy spec.
            policy_name: shown in denials (e.g. ``ClusterSamplerPolicy/prod``).
            digest: an already resolved digest (skips the tag lookup).
            client: a client for this call only, e.g. ``client.with_credentials(pull_secrets)``.
            policy_namespace: the namespace of a namespaced policy; a ``secretRef`` without a
                namespace is read there.

        Returns the verdict (a rejection is ``passed=False``). Raises :class:`TemporaryError`
        when the registry is unreachable and :class:`MalformedInputError` for a bad reference.
        """
        with deadline(self._budget):
            return self._verify(image_ref, spec, policy_name, digest, client, policy_namespace)

    def _verify(
        self,
        image_ref: str,
        spec: SamplerPolicySpec,
        policy_name: str,
        digest: str | None,
        client: RegistryClient | None,
        namespace: str | None,
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
        authorities = list({authority_key(a): a for r in rules for a in r.authorities}.values())
        need_attestations = (
            bool(spec.attestations)
            or _pins_golden(spec)
            or any(a.attestations for a in authorities)
        )
        artifacts = fetch_artifacts(registry, image, resolved, attestations=need_attestations)

        # Sigstore bundles are verified once per keyless authority, and serve as signatures
        # (cosign's sign predicate) and as attestations (any other predicate).
        # Two rules may name different signers alike: identity is the whole authority.
        keys = _Keys(self, namespace)
        bundles = self._bundles(artifacts, authorities, resolved, keys)

        # (4): the attestations, with every authority that signed each.
        kept: list[VerifiedAttestation] = []
        notes: list[str] = []
        if need_attestations:
            kept, rejected = self._attestations(artifacts, authorities, resolved, keys)
            kept += bundle_attestations(bundles, resolved, rejected)
            notes = rejected + artifacts.problems

        # (5): N-of-M authorities per rule.
        by_name = {a.name: a for a in spec.attestations}
        for rule in rules:
            checks.append(self._check_rule(rule, artifacts, resolved, bundles, kept, by_name, keys))

        # (6)–(7): attestation rules and golden digests.
        if need_attestations:
            for att_rule in spec.attestations:
                found = artifacts.attestations or artifacts.bundles
                where = "" if found else _looked_at(artifacts, resolved)
                checks.append(check_attestation(att_rule, kept, notes, resolved, where))
            for role, problems in check_golden(
                [k.statement for k in kept], spec.golden_digests
            ).items():
                detail = "; ".join(problems) if problems else "bound by a verified attestation"
                checks.append(CheckResult(f"golden/{role}", not problems, clip(detail)))
        return verdict(resolved)

    # -- signatures ------------------------------------------------------------------------

    def _bundles(
        self, artifacts: Artifacts, authorities: Sequence[Authority], digest: str, keys: _Keys
    ) -> dict[str, list[VerifiedAttestation | str]]:
        """Per authority: the statements of the bundles it signed, or why not."""
        out: dict[str, list[VerifiedAttestation | str]] = {}
        if not artifacts.bundles:
            return out
        for authority in authorities:
            found: list[VerifiedAttestation | str] = []
            for bundle in artifacts.bundles:
                try:
                    statement, identity, subjects = self._verify_bundle(
                        authority, bundle, digest, keys
                    )
                except (VerificationError, MalformedInputError) as exc:
                    found.append(f"{bundle.source}: {exc}")
                    continue
                found.append(
                    VerifiedAttestation(
                        bundle.source,
                        statement,
                        f"{authority.name} ({identity})",
                        frozenset({authority_key(authority)}),
                        frozenset(subjects),
                    )
                )
            out[authority_key(authority)] = found
        return out

    def _check_rule(
        self,
        rule: ImageRule,
        artifacts: Artifacts,
        digest: str,
        bundles: dict[str, list[VerifiedAttestation | str]],
        kept: list[VerifiedAttestation],
        att_rules: dict[str, AttestationRule],
        keys: _Keys,
    ) -> CheckResult:
        lines = []
        count = 0
        for authority in rule.authorities:
            if authority.attestations:
                ok, detail = check_attesting_authority(authority, kept, att_rules)
            else:
                ok, detail = self._check_authority(authority, artifacts, digest, bundles, keys)
            count += ok
            lines.append(f"{authority.name}: {'ok, ' if ok else ''}{detail}")
        passed = count >= rule.threshold
        if not passed:
            lines.append(_looked_at(artifacts, digest))
        if not passed and artifacts.problems:
            lines.append("unreadable: " + "; ".join(artifacts.problems[:4]))
        head = (
            f"{count} of {len(rule.authorities)} authorities verified {digest} "
            f"(threshold {rule.threshold})"
        )
        return CheckResult(f"signatures[{rule.glob}]", passed, clip(head + ": " + "; ".join(lines)))

    def _key(self, key: KeyAuthority, namespace: str | None) -> PublicKey:
        explicit = "hash_algorithm" in key.model_fields_set
        pem = key.public_key
        if pem is None:
            assert key.secret_ref is not None
            pem = self._secret_key(key.secret_ref, namespace)
        cache_key = (pem, key.hash_algorithm if explicit else "")
        with self._lock:
            found = self._keys.get(cache_key)
            if found is None:
                found = load_public_key(pem, key.hash_algorithm)
                if not explicit:
                    # As sigstore's LoadDefaultSignerVerifier: the hash follows the curve.
                    found = PublicKey(found.key, default_hash(found))
                self._keys[cache_key] = found
            return found

    def _secret_key(self, ref: SecretKeyRef, namespace: str | None) -> str:
        where = f"Secret {ref.namespace or namespace or '(samplerguard namespace)'}/{ref.name}"
        if self._key_source is None:
            raise VerificationError(
                f"key from {where} (key {ref.key!r}) cannot be read: no Secret reader is "
                "configured here"
            )
        return self._key_source(ref, namespace)

    def _check_authority(
        self,
        authority: Authority,
        artifacts: Artifacts,
        digest: str,
        bundles: dict[str, list[VerifiedAttestation | str]],
        keys: _Keys,
    ) -> tuple[bool, str]:
        failures: list[str] = []
        if authority.key is not None:
            try:
                keys.get(authority.key)
            except (VerificationError, MalformedInputError) as exc:
                return False, str(exc)
        for layer in artifacts.signatures:
            try:
                signer = self._verify_signature(authority, layer, digest, keys)
            except (VerificationError, MalformedInputError) as exc:
                failures.append(f"{layer.source}: {exc}")
                continue
            return True, f"{signer} ({layer.source})"
        for att in bundles.get(authority_key(authority), []):
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
            return True, f"bundle {att.signer} ({att.source})"
        if not failures:
            return False, "no signature to check"
        return False, "no signature verifies: " + "; ".join(failures[:4])

    def _verify_signature(
        self, authority: Authority, layer: SignedLayer, digest: str, keys: _Keys
    ) -> str:
        if authority.key is not None:
            key = keys.get(authority.key)
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

    def _verify_bundle(
        self, authority: Authority, bundle: BundleArtifact, digest: str, keys: _Keys
    ) -> tuple[Statement, str, list[str]]:
        if authority.key is not None:
            key = keys.get(authority.key)
            root = self._roots.get(authority.key.trusted_root)
            statement = verify_key_bundle(bundle.raw, key, root, digest=digest)
            return statement, f"key {key.algorithm}", []
        assert authority.keyless is not None
        root = self._roots.get(authority.keyless.trusted_root)
        statement, identity = verify_dsse_bundle(
            bundle.raw, list(authority.keyless.identities), root, digest=digest
        )
        return statement, str(identity), identity.subjects

    # -- attestations ----------------------------------------------------------------------

    def _attestations(
        self, artifacts: Artifacts, authorities: Sequence[Authority], digest: str, keys: _Keys
    ) -> tuple[list[VerifiedAttestation], list[str]]:
        kept: list[VerifiedAttestation] = []
        rejected: list[str] = []
        for layer in artifacts.attestations:
            try:
                envelope = Envelope.from_json(layer.payload)
                statement = envelope.statement()
            except MalformedInputError as exc:
                rejected.append(f"{layer.source}: {exc}")
                continue
            signer = None
            signed_by: set[str] = set()
            subjects: set[str] = set()
            errors: list[str] = []
            for authority in authorities:
                try:
                    who, sans = self._verify_envelope(authority, layer, envelope, keys)
                except (VerificationError, MalformedInputError) as exc:
                    errors.append(f"{authority.name}: {exc}")
                    continue
                signer = signer or who
                signed_by.add(authority_key(authority))
                subjects.update(sans)
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
            kept.append(
                VerifiedAttestation(
                    layer.source, statement, signer, frozenset(signed_by), frozenset(subjects)
                )
            )
        return kept, rejected

    def _verify_envelope(
        self, authority: Authority, layer: SignedLayer, envelope: Envelope, keys: _Keys
    ) -> tuple[str, list[str]]:
        """Who signed (for messages) and the certificate identities of a keyless signer."""
        signed = envelope.pae
        if authority.key is not None:
            key = keys.get(authority.key)
            if any(key.verify(sig, signed) for _, sig in envelope.signatures):
                return f"{authority.name} (key {key.algorithm})", []
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
                    envelope=layer.payload,
                )
            except (VerificationError, MalformedInputError) as exc:
                last = exc
                continue
            return f"{authority.name} (keyless {identity})", identity.subjects
        raise VerificationError(str(last) if last else "no DSSE signature")


class _Keys:
    """The keys of one verification: a key read from a Secret is read once per call, and a
    key that cannot be read fails only the authorities that name it."""

    def __init__(self, verifier: ImageVerifier, namespace: str | None) -> None:
        self._verifier = verifier
        self._namespace = namespace
        self._found: dict[str, PublicKey | Exception] = {}

    def get(self, key: KeyAuthority) -> PublicKey:
        cache_key = key.model_dump_json()
        found = self._found.get(cache_key)
        if found is None:
            try:
                found = self._verifier._key(key, self._namespace)
            except (VerificationError, MalformedInputError) as exc:
                found = exc
            self._found[cache_key] = found
        if isinstance(found, Exception):
            raise found
        return found


def _looked_at(artifacts: Artifacts, digest: str) -> str:
    """Every place that was searched, and what each held."""
    places = (
        f"the referrers API, its fallback tag {digest.replace(':', '-')}, "
        f"tags {tag_for(digest, 'sig')} and {tag_for(digest, 'att')}"
    )
    if not (artifacts.signatures or artifacts.attestations or artifacts.bundles):
        return f"no signatures found; looked at {places}"
    return (
        f"looked at {places}; found in {', '.join(artifacts.sources)}: "
        f"{len(artifacts.signatures)} signature(s), {len(artifacts.attestations)} "
        f"attestation(s), {len(artifacts.bundles)} bundle(s)"
    )


def _pins_golden(spec: SamplerPolicySpec) -> bool:
    g = spec.golden_digests
    return bool(g.model_weights or g.text_encoder or g.scheduler_config or g.solver_code)


def _is_digest(value: str) -> bool:
    return (
        len(value) == 71
        and value.startswith("sha256:")
        and all(c in "0123456789abcdef" for c in value[7:])
    )
