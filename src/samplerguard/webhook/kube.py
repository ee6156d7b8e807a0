"""The webhook's side of the cluster: policies by list+watch, namespace labels by lookup.

Both use the official ``kubernetes`` client (blocking) on worker threads, with bounded
request timeouts. The operator reconciles the CRDs and writes their status; the webhook only
reads them, so it needs ``get/list/watch`` on ``clustersamplerpolicies`` and
``samplerpolicies`` and ``get`` on ``namespaces`` (see the chart's ClusterRole).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from samplerguard.errors import MalformedInputError, PolicyError
from samplerguard.kubeapi import Forbidden, Gone, KubeApiError, call, kube_call
from samplerguard.policy import GROUP, VERSION, parse_policy
from samplerguard.supplychain.auth import DockerConfig
from samplerguard.supplychain.kube_secrets import KubernetesKeySecrets
from samplerguard.webhook.policies import AnyPolicy, PolicySnapshot, with_identity

__all__ = [
    "KubernetesKeySecrets",
    "KubernetesNamespaceLabels",
    "KubernetesPolicySource",
    "KubernetesPullSecrets",
]

log = logging.getLogger(__name__)

#: (plural, kind) of the two policy CRDs.
_PLURALS = (
    ("clustersamplerpolicies", "ClusterSamplerPolicy"),
    ("samplerpolicies", "SamplerPolicy"),
)


class KubernetesPolicySource:
    """ClusterSamplerPolicy and SamplerPolicy objects, kept current by list+watch.

    Each kind has a thread that lists (remembering the list's resourceVersion), then watches
    from there; on ``410 Gone`` or any error it relists after a short pause. A policy the
    models reject is left out and logged: the operator reports it in the policy's status, and
    the images it would have governed fall to the no-match rule (deny by default).

    ``ready`` turns true once both kinds have been listed once.
    """

    def __init__(
        self, api: Any = None, *, watch_timeout: int = 300, request_timeout: float = 10.0
    ) -> None:
        if api is None:
            from kubernetes import client

            api = client.CustomObjectsApi()
        self._api = api
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._objects: dict[str, dict[str, AnyPolicy]] = {plural: {} for plural, _ in _PLURALS}
        self._listed: set[str] = set()
        self._lock = threading.Lock()
        self._snapshot = PolicySnapshot()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def snapshot(self) -> PolicySnapshot:
        return self._snapshot

    @property
    def ready(self) -> bool:
        return len(self._listed) == len(_PLURALS)

    # -- event handling (pure: tests drive it with real watch events) --------------------------

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace') or ''}/{meta.get('name')}"

    def _parse(self, obj: Mapping[str, Any]) -> AnyPolicy | None:
        try:
            return with_identity(parse_policy(dict(obj)), "cluster")
        except PolicyError as exc:
            log.error("ignoring invalid policy %s: %s", self._key(obj), exc)
            return None

    def replace_all(self, plural: str, items: list[Mapping[str, Any]]) -> None:
        """The result of a list: replaces everything known of ``plural``."""
        parsed = {self._key(o): p for o in items if (p := self._parse(o)) is not None}
        with self._lock:
            self._objects[plural] = parsed
            self._listed.add(plural)
            self._publish()

    def apply_event(self, plural: str, event: Mapping[str, Any]) -> None:
        """One watch event (``ADDED``, ``MODIFIED``, ``DELETED``)."""
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            return
        key = self._key(obj)
        with self._lock:
            if kind == "DELETED":
                self._objects[plural].pop(key, None)
            elif kind in ("ADDED", "MODIFIED"):
                policy = self._parse(obj)
                if policy is None:
                    # A policy edited into an invalid state: the old version no longer stands.
                    self._objects[plural].pop(key, None)
                else:
                    self._objects[plural][key] = policy
            else:
                return
            self._publish()

    def _publish(self) -> None:
        policies = tuple(p for objs in self._objects.values() for p in objs.values())
        self._snapshot = PolicySnapshot(policies, self._snapshot.generation + 1)

    # -- the list+watch loops ------------------------------------------------------------------

    def _list(self, plural: str) -> str:
        body = self._api.list_cluster_custom_object(
            GROUP, VERSION, plural, _request_timeout=self._request_timeout
        )
        self.replace_all(plural, list(body.get("items") or []))
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _loop(self, plural: str) -> None:
        while not self._stop.is_set():
            try:
                self._list_and_watch(plural)
            except Gone:  # the resourceVersion expired: relist at once
                continue
            except Forbidden as exc:  # RBAC: no retry fixes it soon, so do not hammer
                log.error("watch of %s refused: %s; trying again in 30 s", plural, exc)
                self._stop.wait(30.0)
            except Exception as exc:
                log.warning("watch of %s failed (%s); relisting", plural, exc)
                self._stop.wait(2.0)

    def _list_and_watch(self, plural: str) -> None:
        from kubernetes import watch

        with kube_call(f"list and watch {plural}"):
            version = self._list(plural)
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            for event in stream.stream(  # type: ignore[no-untyped-call]
                self._api.list_cluster_custom_object,
                GROUP,
                VERSION,
                plural,
                resource_version=version,
                timeout_seconds=self._watch_timeout,
                _request_timeout=self._watch_timeout + 10,
            ):
                if self._stop.is_set():
                    stream.stop()  # type: ignore[no-untyped-call]
                    break
                self.apply_event(plural, event)

    def start(self) -> None:
        for plural, _ in _PLURALS:
            thread = threading.Thread(
                target=self._loop, args=(plural,), name=f"watch-{plural}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()


class KubernetesNamespaceLabels:
    """Namespace labels from the API server, cached for ``ttl`` seconds.

    A failed lookup answers None (unknown), which the webhook treats as opted in."""

    def __init__(self, api: Any = None, *, ttl: float = 30.0, timeout: float = 2.0) -> None:
        if api is None:
            from kubernetes import client

            api = client.CoreV1Api()
        self._api = api
        self._ttl = ttl
        self._timeout = timeout
        self._cache: dict[str, tuple[dict[str, str], float]] = {}

    async def labels(self, namespace: str) -> Mapping[str, str] | None:
        hit = self._cache.get(namespace)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        try:
            ns = await asyncio.to_thread(
                call,
                f"read Namespace {namespace}",
                lambda: self._api.read_namespace(namespace, _request_timeout=self._timeout),
            )
        except KubeApiError as exc:
            log.warning("%s; treating the namespace as opted in", exc)
            return None
        labels = dict(ns.metadata.labels or {})
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[namespace] = (labels, now)
        return labels


class KubernetesPullSecrets:
    """A pod's ``imagePullSecrets`` read from the API server (``kubernetes.io/dockerconfigjson``
    Secrets), cached for ``ttl`` seconds. Needs ``get`` on secrets (chart:
    ``webhook.readPullSecrets``). An unreadable or malformed Secret is skipped and logged,
    never its content."""

    def __init__(self, api: Any = None, *, ttl: float = 60.0, timeout: float = 2.0) -> None:
        if api is None:
            from kubernetes import client

            api = client.CoreV1Api()
        self._api = api
        self._ttl = ttl
        self._timeout = timeout
        self._cache: dict[tuple[str, str], tuple[DockerConfig | None, float]] = {}

    def _read(self, namespace: str, name: str) -> DockerConfig | None:
        try:
            secret = call(
                f"read pull secret {namespace}/{name}",
                lambda: self._api.read_namespaced_secret(
                    name, namespace, _request_timeout=self._timeout
                ),
            )
        except KubeApiError as exc:  # its status and reason: never the Secret's content
            log.warning(
                "pull secret %s/%s unusable: %s %s", namespace, name, exc.status, exc.reason
            )
            return None
        raw = (secret.data or {}).get(".dockerconfigjson")
        if secret.type != "kubernetes.io/dockerconfigjson" or not raw:
            log.warning("pull secret %s/%s is not a dockerconfigjson Secret", namespace, name)
            return None
        try:
            return DockerConfig.from_dockerconfigjson(base64.b64decode(raw))
        except (ValueError, MalformedInputError) as exc:  # bad base64 or JSON: not its content
            log.warning("pull secret %s/%s unusable: %s", namespace, name, type(exc).__name__)
            return None

    async def credentials(self, namespace: str, names: Sequence[str]) -> DockerConfig | None:
        now = time.monotonic()
        configs: list[DockerConfig] = []
        for name in names:
            hit = self._cache.get((namespace, name))
            if hit is None or now - hit[1] >= self._ttl:
                config = await asyncio.to_thread(self._read, namespace, name)
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[(namespace, name)] = (config, now)
            else:
                config = hit[0]
            if config is not None:
                configs.append(config)
        return DockerConfig.merged(configs) if configs else None
