"""The public façade of samplerguard.webhook is a promise: changes to it are deliberate."""

from __future__ import annotations

import samplerguard.webhook as webhook


def test_exported_members() -> None:
    assert set(webhook.__all__) == {
        "Admission",
        "AdmissionRequest",
        "AdmissionResponse",
        "AdmissionReview",
        "AuditTrail",
        "Check",
        "DigestResolver",
        "FilePolicySource",
        "ImageVerifierLike",
        "InjectionConfig",
        "NamespaceLabels",
        "PolicySnapshot",
        "PolicySource",
        "ReloadingCertificate",
        "ResolutionCache",
        "StaticNamespaceLabels",
        "StaticPolicySource",
        "VerdictCache",
        "WebhookConfig",
        "WebhookServer",
    }
    for name in webhook.__all__:
        assert getattr(webhook, name).__module__.startswith("samplerguard.webhook.")
