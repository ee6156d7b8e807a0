"""The webhook's configuration: flags and environment variables map onto these fields.

Everything the injected containers rely on (images, socket path, ports, environment) is named
here and documented in docs/webhook.md, the contract with the sidecar and the hook.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Literal

from samplerguard.policy.drbg import ESCROW_PUBLIC_KEY, MASTER_SECRET_KEY

__all__ = [
    "ANNOTATION_CONTAINERS",
    "ANNOTATION_INJECTED",
    "ANNOTATION_POLICY",
    "ANNOTATION_TENANT",
    "DRBG_VOLUME",
    "HOOK_INIT_NAME",
    "HOOK_VOLUME",
    "LABEL_ENFORCE",
    "LABEL_INJECT",
    "RUN_VOLUME",
    "SIDECAR_NAME",
    "STATE_VOLUME",
    "InjectionConfig",
    "WebhookConfig",
]

#: Namespace label that opts a whole namespace in.
LABEL_ENFORCE = "samplerguard.dev/enforce"
#: Pod label that opts one pod in (value "true"); "false" turns injection off for the pod.
LABEL_INJECT = "samplerguard.dev/inject"
ANNOTATION_INJECTED = "samplerguard.dev/injected"
ANNOTATION_POLICY = "samplerguard.dev/policy"
ANNOTATION_TENANT = "samplerguard.dev/tenant"
#: Comma-separated container names the hook instruments (default: all app containers).
ANNOTATION_CONTAINERS = "samplerguard.dev/container-names"

SIDECAR_NAME = "samplerguard-sidecar"
HOOK_INIT_NAME = "samplerguard-hook-init"
HOOK_VOLUME = "samplerguard-python"
RUN_VOLUME = "samplerguard-run"
#: the sidecar's own volume (signing key and openings store), never mounted into the app
STATE_VOLUME = "samplerguard-state"
#: the namespace's DRBG Secret (master secret, escrow public key), mounted into the sidecar only
DRBG_VOLUME = "samplerguard-drbg"


@dataclass(frozen=True)
class InjectionConfig:
    """What the mutating webhook injects. See docs/webhook.md, "The injection contract"."""

    enabled: bool = True
    sidecar_image: str = "ghcr.io/samplerguard/sidecar:0.1.0"
    #: The image whose ``hook_source`` directory holds the hook package and its
    #: ``sitecustomize.py``; unset: the sidecar image.
    hook_image: str | None = None
    #: Directory inside the hook image copied into the shared volume.
    hook_source: str = "/opt/samplerguard/python"
    #: Where app containers see the hook package; prepended to their PYTHONPATH.
    hook_mount: str = "/samplerguard/python"
    #: The emptyDir shared with the app: the Unix socket and nothing else. App containers
    #: mount it read-only (connecting to a socket needs no write access to its filesystem),
    #: so the app can neither replace the socket nor write beside it.
    run_dir: str = "/var/run/samplerguard"
    #: The sidecar's own emptyDir: its signing key and the openings store. Mounted into the
    #: sidecar only: nothing in the app's containers can read the key or alter an opening.
    state_dir: str = "/var/lib/samplerguard"
    #: The state volume's sizeLimit; the sidecar's store cap (SAMPLERGUARD_MAX_STORE_BYTES)
    #: is set to half of it, so a full store never reaches the limit (which evicts the pod).
    state_size_mib: int = 2048
    socket_name: str = "sidecar.sock"
    #: TCP port on which the verifier reaches the sidecar.
    sidecar_port: int = 9471
    #: Run the sidecar as a native sidecar (an init container with restartPolicy Always,
    #: Kubernetes ≥ 1.29) so Jobs complete; otherwise as a plain container.
    native_sidecar: bool = True
    #: Extra environment for the sidecar, e.g. the verifier's address or telemetry endpoint.
    sidecar_env: tuple[tuple[str, str], ...] = ()
    #: The Secret, in each injected pod's namespace, holding the DRBG master secret and the
    #: verifier's escrow public key (written by the operator). None: no DRBG wiring, and a pod
    #: whose policy asks for DRBG noise is denied (enforce) or runs on framework noise, every
    #: request quarantined (warn, audit).
    drbg_secret: str | None = None
    #: Where the sidecar, and nothing else, sees that Secret.
    drbg_dir: str = "/etc/samplerguard/drbg"
    sidecar_cpu_request: str = "50m"
    #: Measured on the bundled model: 180 MiB resident once torch is imported.
    sidecar_memory_request: str = "256Mi"
    sidecar_memory_limit: str = "1Gi"

    @property
    def socket_path(self) -> str:
        return posixpath.join(self.run_dir, self.socket_name)

    @property
    def openings_dir(self) -> str:
        return posixpath.join(self.state_dir, "openings")

    @property
    def key_file(self) -> str:
        return posixpath.join(self.state_dir, "sidecar-ed25519.pem")

    @property
    def master_secret_file(self) -> str:
        return posixpath.join(self.drbg_dir, MASTER_SECRET_KEY)

    @property
    def escrow_public_key_file(self) -> str:
        return posixpath.join(self.drbg_dir, ESCROW_PUBLIC_KEY)

    @property
    def store_cap_bytes(self) -> int:
        return (self.state_size_mib << 20) // 2

    @property
    def effective_hook_image(self) -> str:
        return self.hook_image or self.sidecar_image


@dataclass(frozen=True)
class WebhookConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    certfile: str = ""
    keyfile: str = ""
    #: Policy file or directory (local mode); None: watch the CRDs through the API server.
    policies: str | None = None
    #: samplerguard's own namespace, never touched.
    own_namespace: str = "samplerguard"
    exempt_namespaces: tuple[str, ...] = ("kube-system",)
    #: The namespace label that opts a namespace in (the chart's ``optInLabel``).
    opt_in_label: str = LABEL_ENFORCE
    #: Seconds a request may take end to end; keep it under the API server's wait (the webhook
    #: configurations' ``timeoutSeconds``, the chart's ``webhook.timeout``).
    deadline: float = 8.0
    max_body_bytes: int = 3 << 20
    #: What happens to an image that no policy's image rules match.
    no_match: Literal["deny", "warn", "allow"] = "deny"
    fresh_ttl: float = 300.0
    last_known_good_ttl: float = 3600.0
    failure_ttl: float = 10.0
    resolve_ttl: float = 30.0
    #: Threads verifying images concurrently (each holds one registry conversation).
    verify_concurrency: int = 16
    #: JSON-lines audit log of failed checks (policy.report records); None: log only.
    audit_log: str | None = None
    #: The operator's results endpoint; failed checks are posted there (Events, PolicyReports).
    report_url: str | None = None
    report_token_file: str | None = None
    #: CA of the operator's certificate (samplerguard's own CA; the registry trust is separate).
    report_ca_file: str | None = None
    injection: InjectionConfig = field(default_factory=InjectionConfig)

    @property
    def exempt(self) -> frozenset[str]:
        return frozenset((*self.exempt_namespaces, self.own_namespace))
