"""samplerguard.telemetry."""
