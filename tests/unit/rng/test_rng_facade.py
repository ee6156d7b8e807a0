"""The rng façade is a promise."""

from __future__ import annotations

import samplerguard.rng as rng


def test_facade() -> None:
    assert set(rng.__all__) == {
        "RNG_MODES", "CtrDrbg", "Drbg", "DrbgError", "HealthReport", "HealthTest", "HmacDrbg",
        "NoiseAuthority", "NoiseReuseDetector", "NoiseReuseError", "RequestLedger",
        "RequestNoise", "RequestReuseError", "RequestSeed", "ReseedRequiredError", "RngMode",
        "SeedEscrow", "SeedShiftError", "check_seed_vector", "escrow_seed", "load_master_secret",
        "load_x25519_private_key", "load_x25519_public_key", "open_escrow",
        "regenerate_initial_noise", "tensor_digest", "verify_initial_noise",
    }  # fmt: skip
    assert all(hasattr(rng, name) for name in rng.__all__)
