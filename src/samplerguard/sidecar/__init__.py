"""samplerguard.sidecar."""
