"""samplerguard.commitment."""
