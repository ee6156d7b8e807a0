"""samplerguard.hook."""
