"""samplerguard.operator."""
