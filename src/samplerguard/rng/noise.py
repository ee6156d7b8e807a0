"""Per-request Gaussian noise: initial latents and every in-loop draw, from the request's DRBG.

Use::

    noise = authority.request("tenant-a", "req-0001")
    latents = noise.randn((1, 4, 64, 64))            # z_N, passed as pipe(latents=...)
    with draws.noise_from(noise.noise_fn()):         # Euler ancestral, DDPM, SDE draws
        image = pipe(..., latents=latents)
    drawn = noise.take_drawn()                       # what was drawn since the last call

Nothing here touches torch's or numpy's global generators: DRBG modes read only the DRBG, and
``framework`` mode draws from a private ``torch.Generator``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from samplerguard.commitment.draws import NoiseFn
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.rng.drbg import Drbg, DrbgError
from samplerguard.rng.escrow import SeedEscrow, escrow_seed, open_escrow
from samplerguard.rng.gaussian import bytes_for, gaussian_from_bytes
from samplerguard.rng.seed import RequestSeed, RngMode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = [
    "MAX_DRAW_ELEMENTS",
    "MAX_UNCLAIMED_DRAWS",
    "RequestNoise",
    "regenerate_initial_noise",
    "verify_initial_noise",
]

#: One draw may not exceed 2^31 elements (8 GiB of float32).
MAX_DRAW_ELEMENTS = 1 << 31
#: Draws kept for :meth:`RequestNoise.take_drawn` before the caller must claim them.
MAX_UNCLAIMED_DRAWS = 100_000


class RequestNoise:
    """The noise source of one request. Create it with ``NoiseAuthority.request`` (sidecar) or
    ``RequestSeed.noise`` via :func:`~samplerguard.rng.escrow.open_escrow` (verifier)."""

    def __init__(self, seed: RequestSeed, *, record_draws: bool = True) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._drbg: Drbg | None = None
        self._generator: torch.Generator | None = None
        if seed.mode == "framework":
            self._generator = torch.Generator(device="cpu")
            self._generator.manual_seed(seed.framework_seed())
        else:
            self._drbg = seed.drbg()
        self._record = record_draws
        self._drawn: list[torch.Tensor] = []
        self._draws = 0

    # -- public labels ----------------------------------------------------------------------

    @property
    def mode(self) -> RngMode:
        return self._seed.mode

    @property
    def seed_pseudonym(self) -> str:
        """A keyed hash of the seed: safe to log, print and put in file names."""
        return self._seed.seed_pseudonym

    @property
    def tenant_pseudonym(self) -> str:
        return self._seed.tenant_pseudonym

    @property
    def request_id(self) -> str:
        return self._seed.request_id

    @property
    def draws(self) -> int:
        """How many tensors were drawn so far."""
        return self._draws

    def recipe_fields(self) -> dict[str, str]:
        """The public facts the commitment's recipe records about this request's randomness."""
        return {
            "rngMode": self.mode,
            "seedPseudonym": self.seed_pseudonym,
            "tenantPseudonym": self.tenant_pseudonym,
            "requestId": self.request_id,
        }

    # -- drawing ------------------------------------------------------------------------------

    def randn(
        self,
        shape: Sequence[int] | torch.Size,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Standard normal noise of ``shape``. Values are computed in float32 on the CPU (see
        :mod:`samplerguard.rng.gaussian`) and then cast and moved."""
        dims = tuple(int(s) for s in shape)
        if any(d < 0 for d in dims):
            raise MalformedInputError(f"noise shape {dims} has a negative dimension")
        if not dtype.is_floating_point:
            raise MalformedInputError(f"noise dtype must be floating point, got {dtype}")
        n = math.prod(dims)
        if n > MAX_DRAW_ELEMENTS:
            raise MalformedInputError(f"a noise draw of {n} elements exceeds {MAX_DRAW_ELEMENTS}")
        with self._lock:
            if self._drbg is not None:
                buf = bytearray(bytes_for(n))
                self._drbg.random_bytes_into(buf)
                flat = gaussian_from_bytes(buf, n)
            elif self._generator is not None:
                flat = torch.randn(n, generator=self._generator, dtype=torch.float32)
            else:
                raise DrbgError("this noise source was closed")
            out = flat.view(dims)
            if dtype != torch.float32:
                out = out.to(dtype)
            if device is not None and torch.device(device).type != "cpu":
                out = out.to(device)
            self._draws += 1
            if self._record:
                if len(self._drawn) >= MAX_UNCLAIMED_DRAWS:
                    raise DrbgError(
                        f"{MAX_UNCLAIMED_DRAWS} draws were never claimed with take_drawn(); "
                        "refusing to grow further"
                    )
                self._drawn.append(out.clone())
            return out

    def noise_fn(self) -> NoiseFn:
        """A function for :func:`samplerguard.commitment.draws.noise_from`."""

        def draw(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
            return self.randn(shape, dtype=dtype, device=device)

        return draw

    def take_drawn(self) -> list[torch.Tensor]:
        """The tensors drawn since the last call (copies, in draw order), and forget them."""
        with self._lock:
            drawn, self._drawn = self._drawn, []
        return drawn

    def escrow(self, verifier_public_key: X25519PublicKey) -> SeedEscrow:
        """This request's seed encrypted to the verifier (see :mod:`samplerguard.rng.escrow`)."""
        return escrow_seed(self._seed, verifier_public_key)

    def close(self) -> None:
        """Forget the DRBG state; later draws raise :class:`DrbgError`."""
        with self._lock:
            if self._drbg is not None:
                self._drbg.uninstantiate()
            self._drbg = None
            self._generator = None
            self._drawn = []

    def __repr__(self) -> str:
        return (
            f"<RequestNoise mode={self.mode} tenant={self.tenant_pseudonym} "
            f"request_id={self.request_id!r} seed={self.seed_pseudonym} draws={self._draws}>"
        )

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("RequestNoise holds secret state and cannot be pickled")


# --- the verifier's side: the noise an escrow regenerates ---------------------------------------


def regenerate_initial_noise(
    private_key: X25519PrivateKey,
    escrow: SeedEscrow,
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """z_N as the sidecar drew it first: the stream's first ``randn(shape, dtype)``."""
    noise = RequestNoise(open_escrow(private_key, escrow), record_draws=False)
    try:
        return noise.randn(shape, dtype=dtype)
    finally:
        noise.close()


def verify_initial_noise(
    private_key: X25519PrivateKey,
    escrow: SeedEscrow,
    z_committed: torch.Tensor,
    *,
    tolerance: float = 0.0,
) -> None:
    """Regenerate z_N and compare it with the committed one: equal bits (the default), or a
    rel-L2 within ``tolerance`` when prover and verifier run different float builds."""
    z = regenerate_initial_noise(private_key, escrow, tuple(z_committed.shape), z_committed.dtype)
    got = z_committed.detach().to("cpu")
    if tolerance == 0.0:
        if not torch.equal(z, got):
            diff = int((z != got).sum())
            raise VerificationError(
                f"z_N does not match the escrowed seed ({diff} of {z.numel()} values differ, "
                "expected bit-identical noise)",
                check="noise-binding",
            )
        return
    rel = float(torch.linalg.vector_norm((z - got).double()) / torch.linalg.vector_norm(z.double()))
    if not rel <= tolerance:
        raise VerificationError(
            f"z_N does not match the escrowed seed (rel-L2 {rel:.3e}, expected ≤ {tolerance:.1e})",
            check="noise-binding",
        )
