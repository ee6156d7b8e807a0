"""A request's seed: the secret DRBG input material, and the public names that go with it.

A :class:`RequestSeed` is created by :class:`~samplerguard.rng.authority.NoiseAuthority` (from the
master secret) or by :func:`~samplerguard.rng.escrow.open_escrow` (on the verifier). It holds 48
secret bytes (32 of entropy input and a 16-byte nonce for SP 800-90A instantiate) and never shows
them: not in its repr, not to pickle, not in an exception.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal, get_args

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from samplerguard.errors import MalformedInputError
from samplerguard.rng.drbg import CtrDrbg, Drbg, HmacDrbg

__all__ = ["RNG_MODES", "SEED_BYTES", "RequestSeed", "RngMode"]

RngMode = Literal["ctr-drbg", "hmac-drbg", "framework"]
RNG_MODES: tuple[str, ...] = get_args(RngMode)
SEED_BYTES = 48


def check_mode(mode: str) -> RngMode:
    if mode not in RNG_MODES:
        raise MalformedInputError(f"rng mode {mode!r} is unknown; expected one of {RNG_MODES}")
    return mode  # type: ignore[return-value]


class RequestSeed:
    """Secret seed material of one request, with its public labels."""

    __slots__ = ("_material", "mode", "request_id", "seed_pseudonym", "tenant_pseudonym")

    def __init__(
        self,
        material: bytes,
        *,
        mode: str,
        tenant_pseudonym: str,
        request_id: str,
        seed_pseudonym: str,
    ) -> None:
        if len(material) != SEED_BYTES:
            raise MalformedInputError(f"seed material is {SEED_BYTES} bytes")
        self._material = bytes(material)
        self.mode: RngMode = check_mode(mode)
        self.tenant_pseudonym = tenant_pseudonym
        self.request_id = request_id
        self.seed_pseudonym = seed_pseudonym

    @property
    def personalization(self) -> bytes:
        """SP 800-90A personalization string: binds the stream to its public labels."""
        return "|".join(
            ("samplerguard/v1", self.mode, self.tenant_pseudonym, self.request_id)
        ).encode()

    def drbg(self) -> Drbg:
        """A fresh DRBG instantiated from this seed (``ctr-drbg`` and ``hmac-drbg`` modes)."""
        entropy, nonce = self._material[:32], self._material[32:]
        if self.mode == "ctr-drbg":
            return CtrDrbg(entropy, nonce, self.personalization)
        if self.mode == "hmac-drbg":
            return HmacDrbg(entropy, nonce, self.personalization)
        raise MalformedInputError("framework mode has no DRBG; use framework_seed()")

    def framework_seed(self) -> int:
        """The 63-bit seed of a private ``torch.Generator`` (``framework`` mode)."""
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=8,
            salt=b"samplerguard/v1/framework",
            info=self.personalization,
        ).derive(self._material)
        return int.from_bytes(okm, "big") & ((1 << 63) - 1)

    def _unsafe_material(self) -> bytes:
        """The secret bytes, for the escrow only."""
        return self._material

    def matches(self, other: RequestSeed) -> bool:
        """Constant-time comparison of two seeds (labels included)."""
        a = hashlib.sha256(self._material + self.personalization).digest()
        b = hashlib.sha256(other._material + other.personalization).digest()
        return hmac.compare_digest(a, b)

    def __repr__(self) -> str:
        return (
            f"<RequestSeed mode={self.mode} tenant={self.tenant_pseudonym} "
            f"request_id={self.request_id!r} seed={self.seed_pseudonym}>"
        )

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("RequestSeed holds secret material and cannot be pickled")
