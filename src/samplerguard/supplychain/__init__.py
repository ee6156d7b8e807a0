"""samplerguard.supplychain."""
