"""samplerguard.verifier."""
