"""samplerguard's admission webhook: verify sampler images, then inject the sidecar.

The façade::

    config = WebhookConfig(certfile=..., keyfile=..., policies="policies/")
    admission = Admission(config, FilePolicySource(config.policies), verifier, registry_client)
    WebhookServer(config, admission, ReloadingCertificate(config.certfile, config.keyfile))

``samplerguard webhook`` wires the same pieces from flags and environment; docs/webhook.md
describes the endpoints, the opt-in, the cache and the injection contract.
"""

from samplerguard.webhook.admission import Admission, Check
from samplerguard.webhook.audit import AuditTrail
from samplerguard.webhook.cache import ResolutionCache, VerdictCache
from samplerguard.webhook.config import InjectionConfig, WebhookConfig
from samplerguard.webhook.optin import NamespaceLabels, StaticNamespaceLabels
from samplerguard.webhook.policies import (
    FilePolicySource,
    PolicySnapshot,
    PolicySource,
    StaticPolicySource,
)
from samplerguard.webhook.review import AdmissionRequest, AdmissionResponse, AdmissionReview
from samplerguard.webhook.server import WebhookServer
from samplerguard.webhook.tls import ReloadingCertificate
from samplerguard.webhook.verifying import DigestResolver, ImageVerifierLike

__all__ = [
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
]
