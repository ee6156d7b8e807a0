"""samplerguard.webhook."""
