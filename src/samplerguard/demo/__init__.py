"""samplerguard.demo."""
