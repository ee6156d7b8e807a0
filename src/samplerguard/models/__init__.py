"""samplerguard.models."""
