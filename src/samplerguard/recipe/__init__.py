"""samplerguard.recipe."""
