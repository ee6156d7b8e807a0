"""Which sidecars this verifier audits: a static list (local mode) or the pods the webhook
injected (cluster), split into shards by a stable hash of the pod UID."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from samplerguard.errors import TemporaryError

__all__ = [
    "INJECTED_LABEL",
    "Discovery",
    "KubernetesDiscovery",
    "StaticDiscovery",
    "Target",
    "in_shard",
]

#: Pods the webhook injected carry this annotation; opted-in pods also carry the label.
INJECTED_ANNOTATION = "samplerguard.dev/injected"
INJECTED_LABEL = "samplerguard.dev/inject=true"
SIDECAR_PORT = 9471


@dataclass(frozen=True)
class Target:
    url: str
    uid: str
    name: str = ""
    namespace: str = ""

    @property
    def resource(self) -> dict[str, str]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": self.name or self.url,
            "namespace": self.namespace or "local",
            "uid": self.uid,
        }


def in_shard(uid: str, shard: int, shards: int) -> bool:
    """Stable across restarts and replicas: SHA-256 of the pod UID modulo the shard count."""
    if shards <= 1:
        return True
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") % shards == shard


class Discovery(Protocol):
    def targets(self) -> list[Target]: ...


class StaticDiscovery:
    """Local mode: sidecar URLs from flags. The pod identity comes from each sidecar's
    ``/v1/public-key`` answer when it is reachable (see the service), else the URL."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = [u.rstrip("/") for u in urls]

    def targets(self) -> list[Target]:
        return [Target(url=u, uid=u) for u in self.urls]


class KubernetesDiscovery:
    """Running pods with the injection label whose sidecar port is reachable by pod IP."""

    def __init__(
        self,
        *,
        label_selector: str = INJECTED_LABEL,
        namespace: str | None = None,
        port: int = SIDECAR_PORT,
        api: Any = None,
    ) -> None:
        self.label_selector = label_selector
        self.namespace = namespace
        self.port = port
        self._api = api

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()  # type: ignore[no-untyped-call]
            self._api = client.CoreV1Api()
        return self._api

    def targets(self) -> list[Target]:
        from kubernetes.client.exceptions import ApiException

        api = self._client()
        try:
            if self.namespace:
                pods = api.list_namespaced_pod(self.namespace, label_selector=self.label_selector)
            else:
                pods = api.list_pod_for_all_namespaces(label_selector=self.label_selector)
        except ApiException as exc:
            raise TemporaryError(f"cannot list injected pods: HTTP {exc.status}") from None
        out = []
        for pod in pods.items:
            ip = getattr(pod.status, "pod_ip", None)
            if not ip or getattr(pod.status, "phase", "") != "Running":
                continue
            host = f"[{ip}]" if ":" in ip else ip
            out.append(
                Target(
                    url=f"http://{host}:{self.port}",
                    uid=str(pod.metadata.uid),
                    name=str(pod.metadata.name),
                    namespace=str(pod.metadata.namespace),
                )
            )
        return out
