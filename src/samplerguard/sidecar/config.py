"""The sidecar's configuration: flags and ``SAMPLERGUARD_*`` variables map onto these fields.

The variable names are the injection contract of docs/webhook.md: the webhook sets
``SAMPLERGUARD_SOCKET``, ``SAMPLERGUARD_OPENINGS_DIR``, ``SAMPLERGUARD_LISTEN_TCP``,
``SAMPLERGUARD_TENANT``, ``SAMPLERGUARD_POLICY`` and ``SAMPLERGUARD_POD_*``; the rest have
defaults that work in a pod and on loopback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["ENV", "SidecarConfig", "parse_hostport"]

#: flag name → environment variable
ENV: dict[str, str] = {
    "socket": "SAMPLERGUARD_SOCKET",
    "openings_dir": "SAMPLERGUARD_OPENINGS_DIR",
    "listen_tcp": "SAMPLERGUARD_LISTEN_TCP",
    "tenant": "SAMPLERGUARD_TENANT",
    "policy": "SAMPLERGUARD_POLICY",
    "pod_name": "SAMPLERGUARD_POD_NAME",
    "pod_namespace": "SAMPLERGUARD_POD_NAMESPACE",
    "pod_uid": "SAMPLERGUARD_POD_UID",
    "key_file": "SAMPLERGUARD_KEY_FILE",
    "token_file": "SAMPLERGUARD_TOKEN_FILE",
    "auth": "SAMPLERGUARD_AUTH",
    "allowed_subjects": "SAMPLERGUARD_VERIFIER_SUBJECTS",
    "audience": "SAMPLERGUARD_TOKEN_AUDIENCE",
    "model_files": "SAMPLERGUARD_MODEL_FILES",
    "scheduler_config": "SAMPLERGUARD_SCHEDULER_CONFIG",
    "retention": "SAMPLERGUARD_RETENTION",
    "max_store_bytes": "SAMPLERGUARD_MAX_STORE_BYTES",
    "min_free_bytes": "SAMPLERGUARD_MIN_FREE_BYTES",
    "integrity_interval": "SAMPLERGUARD_INTEGRITY_INTERVAL",
    "policy_refresh": "SAMPLERGUARD_POLICY_REFRESH",
    "secret_refresh": "SAMPLERGUARD_SECRET_REFRESH",
    "seed_ttl": "SAMPLERGUARD_SEED_TTL",
    "store_direct_io": "SAMPLERGUARD_STORE_DIRECT_IO",
    "master_secret_file": "SAMPLERGUARD_MASTER_SECRET_FILE",
    "rng_mode": "SAMPLERGUARD_RNG_MODE",
    "escrow_public_key": "SAMPLERGUARD_ESCROW_PUBLIC_KEY",
}


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the pod's verifier port


@dataclass(frozen=True)
class SidecarConfig:
    #: Unix socket the hook streams to.
    socket: Path = Path("/var/run/samplerguard/sidecar.sock")
    #: Where openings are stored: on the sidecar's own volume, which the app never mounts.
    openings_dir: Path = Path("/var/lib/samplerguard/openings")
    #: TCP address the verifier reaches; port 0 picks a free one (see ``ready_file``).
    listen_tcp: tuple[str, int] = ("127.0.0.1", 9471)
    #: Ed25519 signing key; generated at first start. Default: the parent of the openings
    #: directory (in a pod the sidecar's own volume, out of the app's reach).
    key_file: Path | None = None
    tenant: str | None = None
    #: A policy file (YAML/JSON), or ``ClusterSamplerPolicy/<name>`` /
    #: ``SamplerPolicy/<ns>/<name>`` read through the API server. None: no enforcement.
    policy: str | None = None
    #: Seconds between re-reads of ``policy``: an edited policy (recipe bounds, retention,
    #: golden digests) takes effect without restarting the pod; a deleted or invalid one
    #: refuses new requests until it is valid again. 0: read once at start.
    policy_refresh: float = 30.0
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    #: ``token-file`` (local mode) or ``tokenreview`` (cluster). Unset: ``token-file`` when a
    #: token file is given, else ``tokenreview`` inside a cluster.
    auth: Literal["token-file", "tokenreview"] | None = None
    token_file: Path | None = None
    #: TokenReview: ServiceAccount usernames allowed to read openings.
    allowed_subjects: tuple[str, ...] = (
        "system:serviceaccount:samplerguard:samplerguard-verifier",
    )
    #: TokenReview: an audience the verifier's token must carry. Unset: the API server's
    #: default audience (the chart's verifier token is the plain projected one).
    audience: str | None = None
    #: Model weight files (safetensors) hashed at start and every ``integrity_interval``.
    model_files: tuple[Path, ...] = ()
    scheduler_config: Path | None = None
    integrity_interval: float = 300.0
    #: Openings older than this are deleted (the policy's retention wins when it is set).
    retention: float = 24 * 3600.0
    #: Store size cap, counting every file the store writes in whole blocks; the oldest
    #: trajectories are evicted beyond it. Half the injected volume's 2 GiB sizeLimit.
    max_store_bytes: int = 1 << 30
    #: Never let the volume's free space fall below this; refuse new trajectories instead.
    min_free_bytes: int = 64 << 20
    #: Largest trajectory accepted (all frames together).
    max_trajectory_bytes: int = 1 << 30
    #: Concurrent hook connections; further ones wait in the listen backlog (backpressure).
    max_connections: int = 64
    #: fsync each committed trajectory before answering (durable across power loss).
    fsync: bool = False
    #: Write openings with O_DIRECT: "auto" (where the volume takes it, the default), "on"
    #: (required) or "off" (page cache). See docs/sidecar.md.
    store_direct_io: str = "auto"
    #: The master secret of the per-request DRBGs (a file only the sidecar can read). When set,
    #: the sidecar issues every DRBG request's seed and its escrow; the app never holds it.
    master_secret_file: Path | None = None
    #: At most this often (seconds) the master secret and escrow key files are looked at
    #: again: a Secret the kubelet updated (a re-made or rotated master secret) is taken up
    #: without a restart; while the files are unusable no seed is issued. 0: at every request.
    secret_refresh: float = 5.0
    #: How long (seconds) an issued seed waits for its request's START. The hook asks for the
    #: seed as the generation begins, so this is setup time, not generation time; a seed that
    #: lapses is recorded as abandoned for the verifier (see ``sidecar.abandoned``).
    seed_ttl: float = 120.0
    #: The mode of the seeds it issues.
    rng_mode: str = "ctr-drbg"
    #: The verifier's X25519 public key (PEM): issued seeds are escrowed to it.
    escrow_public_key: Path | None = None
    #: JSON file written once both listeners are up: addresses, public key id, pid.
    ready_file: Path | None = None
    socket_mode: int = 0o660
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def seed_ledger_file(self) -> Path:
        """The ledger of issued seeds, beside the signing key on the sidecar's state volume."""
        return self.openings_dir.parent / "seed-ledger.jsonl"

    @property
    def effective_key_file(self) -> Path:
        return self.key_file or self.openings_dir.parent / "sidecar-ed25519.pem"

    @property
    def pod(self) -> dict[str, str]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": self.pod_name or os.uname().nodename,
            "namespace": self.pod_namespace or "local",
            "uid": self.pod_uid or f"local-{os.uname().nodename}",
        }
