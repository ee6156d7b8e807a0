"""samplerguard.rng."""
