"""What a verification found: one :class:`CheckResult` per check, gathered in an
:class:`ImageVerdict`."""

from __future__ import annotations

from dataclasses import dataclass

from samplerguard.errors import VerificationError

__all__ = ["CheckResult", "ImageVerdict"]


@dataclass(frozen=True)
class CheckResult:
    """One check. ``name`` is stable and machine-readable (``resolve``, ``signature/<authority>``,
    ``signatures``, ``attestation/<rule>``, ``golden/<artefact>``); ``detail`` is for humans and
    says what was found and, on failure, what was expected."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ImageVerdict:
    """The outcome of verifying one image under one policy.

    ``passed`` is true only when every check passed and at least one ran. ``digest`` is the
    manifest digest the checks apply to (the tag resolved once, at the start): admit *that*
    digest, never the tag.
    """

    image: str
    digest: str
    policy: str
    passed: bool
    checks: tuple[CheckResult, ...]

    @property
    def pinned(self) -> str:
        """The image reference pinned to the verified digest (``name@sha256:…``), for the
        mutating webhook's tag rewrite."""
        base = self.image.split("@", 1)[0]
        slash, colon = base.rfind("/"), base.rfind(":")
        if colon > slash:
            base = base[:colon]
        return f"{base}@{self.digest}"

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def reasons(self) -> list[str]:
        """One sentence per failed check: image, policy, check, got and expected."""
        return [
            f"image {self.image} ({self.digest or 'unresolved'}) denied by policy "
            f"{self.policy!r}: {c.name}: {c.detail}"
            for c in self.failed
        ]

    def raise_for_failure(self) -> None:
        """Raise :class:`VerificationError` with :attr:`reasons` unless the verdict passed."""
        if not self.passed:
            raise VerificationError("; ".join(self.reasons) or f"image {self.image} not verified")

    def summary(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [f"{status} {self.image} @ {self.digest or '-'} under policy {self.policy!r}"]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)
