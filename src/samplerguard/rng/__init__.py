"""samplerguard.rng: SP 800-90A DRBGs, per-tenant/per-request noise, seed escrow and seed-vector
health checks.

The façade below is the promise; the modules behind it are free to change.
"""

from samplerguard.rng.authority import NoiseAuthority, load_master_secret
from samplerguard.rng.drbg import (
    CtrDrbg,
    Drbg,
    DrbgError,
    HmacDrbg,
    ReseedRequiredError,
)
from samplerguard.rng.escrow import (
    SeedEscrow,
    escrow_seed,
    load_x25519_private_key,
    load_x25519_public_key,
    open_escrow,
)
from samplerguard.rng.health import (
    HealthReport,
    HealthTest,
    NoiseReuseDetector,
    NoiseReuseError,
    SeedShiftError,
    check_seed_vector,
    tensor_digest,
)
from samplerguard.rng.ledger import RequestLedger, RequestReuseError
from samplerguard.rng.noise import RequestNoise, regenerate_initial_noise, verify_initial_noise
from samplerguard.rng.seed import RNG_MODES, RequestSeed, RngMode

__all__ = [
    "RNG_MODES",
    "CtrDrbg",
    "Drbg",
    "DrbgError",
    "HealthReport",
    "HealthTest",
    "HmacDrbg",
    "NoiseAuthority",
    "NoiseReuseDetector",
    "NoiseReuseError",
    "RequestLedger",
    "RequestNoise",
    "RequestReuseError",
    "RequestSeed",
    "ReseedRequiredError",
    "RngMode",
    "SeedEscrow",
    "SeedShiftError",
    "check_seed_vector",
    "escrow_seed",
    "load_master_secret",
    "load_x25519_private_key",
    "load_x25519_public_key",
    "open_escrow",
    "regenerate_initial_noise",
    "tensor_digest",
    "verify_initial_noise",
]
