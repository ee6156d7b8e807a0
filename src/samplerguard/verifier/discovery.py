"""Which sidecars this verifier audits: a static list (local mode) or the pods the webhook
injected (cluster), split into shards by a stable hash of the pod UID."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from samplerguard.errors import MalformedInputError
from samplerguard.kubeapi import kube_call
from samplerguard.supplychain.reference import parse_reference

__all__ = [
    "INJECTED_ANNOTATION",
    "INJECTED_LABEL",
    "Discovery",
    "KubernetesDiscovery",
    "StaticDiscovery",
    "Target",
    "in_shard",
]

#: Pods the webhook injected carry this annotation, whichever way they opted in (a pod label or
#: their namespace's label); only the pod-label way leaves a label to select on.
INJECTED_ANNOTATION = "samplerguard.dev/injected"
INJECTED_LABEL = "samplerguard.dev/inject=true"
#: The injected sidecar's container name (a native sidecar is an init container).
SIDECAR_CONTAINER = "samplerguard-sidecar"
SIDECAR_PORT = 9471


@dataclass(frozen=True)
class Target:
    url: str
    uid: str
    name: str = ""
    namespace: str = ""
    #: Why this pod's sidecar is not one to audit (it runs another image than the sidecar's):
    #: the verifier records that as the pod's failure and never asks it for openings.
    refusal: str = ""

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
    """Running pods the webhook injected (the ``samplerguard.dev/injected`` annotation) whose
    sidecar container is Ready, reached by pod IP.

    Pods opt in by their own label or by their namespace's, so the selection goes by the
    annotation the injection leaves on every one of them. The sidecar's readiness probe passes
    only once its API answers, so a pod that runs but whose sidecar does not listen yet is left
    for a later round instead of being challenged into a connection error."""

    def __init__(
        self,
        *,
        label_selector: str | None = None,
        namespace: str | None = None,
        port: int = SIDECAR_PORT,
        api: Any = None,
        sidecar_image: str | None = None,
        excluded_namespaces: tuple[str, ...] = (),
    ) -> None:
        """``sidecar_image``: the image the webhook injects (a tag or a digest reference). A
        pod whose ``samplerguard-sidecar`` runs another repository, or another digest when
        this one names a digest, is returned with a :attr:`Target.refusal`: whatever answers
        on its port is not the sidecar, and its openings prove nothing."""
        self.label_selector = label_selector or None
        self.sidecar_image = parse_reference(sidecar_image) if sidecar_image else None
        #: namespaces the webhook never admits pods in (the chart's exemptions): a pod there
        #: carrying the injection was not injected, and is refused like an impostor
        self.excluded_namespaces = frozenset(excluded_namespaces)
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
        """The ready injected pods. Raises :class:`~samplerguard.kubeapi.Unavailable` (a
        :class:`~samplerguard.errors.TemporaryError`) when the API server does not answer,
        and :class:`~samplerguard.kubeapi.Forbidden` when the verifier may not list pods."""
        api = self._client()
        query: dict[str, str] = {"field_selector": "status.phase=Running"}
        if self.label_selector:
            query["label_selector"] = self.label_selector
        with kube_call("list injected pods"):
            if self.namespace:
                pods = api.list_namespaced_pod(self.namespace, **query)
            else:
                pods = api.list_pod_for_all_namespaces(**query)
        out = []
        for pod in pods.items:
            annotations = getattr(pod.metadata, "annotations", None) or {}
            if annotations.get(INJECTED_ANNOTATION) != "true":
                continue
            ip = getattr(pod.status, "pod_ip", None)
            if not ip or getattr(pod.status, "phase", "") != "Running" or not _sidecar_ready(pod):
                continue
            host = f"[{ip}]" if ":" in ip else ip
            out.append(
                Target(
                    url=f"http://{host}:{self.port}",
                    uid=str(pod.metadata.uid),
                    name=str(pod.metadata.name),
                    namespace=str(pod.metadata.namespace),
                    refusal=self._refusal(pod),
                )
            )
        return out

    def _refusal(self, pod: Any) -> str:
        namespace = str(getattr(pod.metadata, "namespace", ""))
        if namespace in self.excluded_namespaces:
            return (
                f"the pod carries a samplerguard sidecar in namespace {namespace}, where the "
                "webhook admits pods unchecked: it was not injected"
            )
        expected = self.sidecar_image
        if expected is None:
            return ""
        spec = getattr(pod, "spec", None)
        containers = [
            *(getattr(spec, "init_containers", None) or []),
            *(getattr(spec, "containers", None) or []),
        ]
        found_containers = [c for c in containers if c.name == SIDECAR_CONTAINER]
        images = [str(c.image) for c in found_containers]
        if len(images) != 1:
            return f"the pod has {len(images)} containers named {SIDECAR_CONTAINER}"
        sidecar = found_containers[0]
        if getattr(sidecar, "command", None) or list(getattr(sidecar, "args", None) or []) != [
            "sidecar"
        ]:
            return (
                f"its {SIDECAR_CONTAINER} container runs another command than the sidecar's: "
                "what answers on its port is not a samplerguard sidecar"
            )
        try:
            found = parse_reference(images[0])
        except MalformedInputError as exc:
            return f"its {SIDECAR_CONTAINER} image is malformed: {exc}"
        if found.name != expected.name or (
            expected.digest is not None and found.digest != expected.digest
        ):
            return (
                f"its {SIDECAR_CONTAINER} container runs {images[0][:200]!r}, not the sidecar "
                f"image {expected}: what answers on its port is not a samplerguard sidecar"
            )
        return ""


def _sidecar_ready(pod: Any) -> bool:
    statuses = [
        *(getattr(pod.status, "init_container_statuses", None) or []),
        *(getattr(pod.status, "container_statuses", None) or []),
    ]
    return any(s.name == SIDECAR_CONTAINER and bool(s.ready) for s in statuses)
