"""Verified attestations of one image and the rules they must pass.

An :class:`VerifiedAttestation` is an in-toto statement whose DSSE signature verified for at
least one authority of the image's rules and whose subject names the image digest; it
records every authority that signed it (an authority with ``attestations`` counts through
them) and the certificate identities of its keyless signers (the SLSA builder check takes the
builder from them, as slsa-verifier does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from samplerguard.policy.spec import AttestationRule, Authority
from samplerguard.supplychain.dsse import Statement
from samplerguard.supplychain.provenance import check_attestation_rule
from samplerguard.supplychain.sigstore_bundles import COSIGN_SIGN_PREDICATE
from samplerguard.supplychain.verdict import CheckResult

__all__ = [
    "VerifiedAttestation",
    "authority_key",
    "bundle_attestations",
    "check_attestation",
    "check_attesting_authority",
    "clip",
]

_MAX_DETAIL = 1500


@dataclass(frozen=True)
class VerifiedAttestation:
    source: str
    statement: Statement
    signer: str
    #: Every authority (by :func:`_akey`) whose signature on it verified.
    authorities: frozenset[str] = field(default=frozenset())
    #: The certificate identities (SANs) of the keyless signatures that verified.
    signer_subjects: frozenset[str] = field(default=frozenset())


def bundle_attestations(
    bundles: dict[str, list[VerifiedAttestation | str]], digest: str, rejected: list[str]
) -> list[VerifiedAttestation]:
    """The attestations (not cosign's sign predicate) among the verified bundles, merged per
    bundle so that every authority that verified it is known."""
    merged: dict[str, VerifiedAttestation] = {}
    for found in bundles.values():
        for att in found:
            if isinstance(att, str):
                if att not in rejected:
                    rejected.append(att)
                continue
            if att.statement.predicate_type == COSIGN_SIGN_PREDICATE:
                continue
            seen = merged.get(att.source)
            merged[att.source] = (
                att
                if seen is None
                else VerifiedAttestation(
                    seen.source,
                    seen.statement,
                    seen.signer,
                    seen.authorities | att.authorities,
                    seen.signer_subjects | att.signer_subjects,
                )
            )
    return [a for a in merged.values() if a.statement.names_digest(digest)]


def check_attesting_authority(
    authority: Authority, kept: list[VerifiedAttestation], att_rules: dict[str, AttestationRule]
) -> tuple[bool, str]:
    """An authority with ``attestations``: one attestation it signed passes a named rule."""
    mine = [k for k in kept if authority_key(authority) in k.authorities]
    if not mine:
        return False, (f"signed no attestation of this image (needed for {authority.attestations})")
    failures = []
    for name in authority.attestations:
        ok, detail = _rule_holds(att_rules[name], mine)
        if ok:
            return True, f"attestation rule {name!r}: {detail}"
        failures.append(f"rule {name!r}: {detail}")
    return False, "no attestation it signed passes: " + "; ".join(failures[:4])


def _rule_holds(rule: AttestationRule, atts: list[VerifiedAttestation]) -> tuple[bool, str]:
    types = rule.predicate_types
    of_type = [k for k in atts if k.statement.predicate_type in types]
    if not of_type:
        found = sorted({k.statement.predicate_type for k in atts})
        return False, (
            f"no verified attestation of type {' or '.join(types)} (verified types: "
            f"{found or 'none'})"
        )
    failures = []
    for att in of_type:
        for alternative in rule.alternatives():
            if alternative.predicate_type != att.statement.predicate_type:
                continue
            problems = check_attestation_rule(
                att.statement, alternative, signer_subjects=att.signer_subjects
            )
            if not problems:
                return True, (
                    f"{att.statement.predicate_type} from {att.source}, signed by {att.signer}"
                )
            failures.append(f"{att.source}: " + "; ".join(problems))
    return False, "; ".join(failures[:4])


def check_attestation(
    rule: AttestationRule,
    kept: list[VerifiedAttestation],
    notes: list[str],
    digest: str,
    looked_at: str = "",
) -> CheckResult:
    """The check of one attestation rule; a failure names what was ignored and why, and
    ``looked_at`` (where attestations were searched) when nothing was found."""
    name = f"attestation/{rule.name}"
    ok, detail = _rule_holds(rule, kept)
    if not ok and notes:
        detail += "; ignored: " + "; ".join(notes[:4])
    if not ok:
        detail = f"{digest}: {detail}" + (f"; {looked_at}" if looked_at else "")
    return CheckResult(name, ok, clip(detail))


def authority_key(authority: Authority) -> str:
    """Identity of an authority across rules: two rules may name different signers alike."""
    return authority.model_dump_json()


def clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"
