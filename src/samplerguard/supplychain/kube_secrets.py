"""Public keys that policies reference with ``secretRef``, read from the Kubernetes API.

One reader for both consumers: the admission webhook and the operator's background audit
verify the same policies, so they read their Secret-held keys the same way.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

from samplerguard.errors import VerificationError
from samplerguard.kubeapi import KubeApiError, Unavailable, call
from samplerguard.policy import SecretKeyRef

__all__ = ["KubernetesKeySecrets"]


class KubernetesKeySecrets:
    """Public keys that policies reference with ``secretRef``, read from the API server and
    cached for ``ttl`` seconds (a rotated key is seen within it). A ``secretRef`` without a
    namespace is read from the policy's namespace, or, for a ClusterSamplerPolicy, from
    samplerguard's own. Needs ``get`` on those Secrets.

    Blocking (the verifier calls it from its worker thread). A Secret or data key that does
    not exist raises :class:`VerificationError` (the authority fails, naming the Secret); an
    API server that cannot be reached raises :class:`TemporaryError`."""

    def __init__(
        self, own_namespace: str, api: Any = None, *, ttl: float = 60.0, timeout: float = 2.0
    ) -> None:
        if api is None:
            from kubernetes import client

            api = client.CoreV1Api()
        self._api = api
        self._own = own_namespace
        self._ttl = ttl
        self._timeout = timeout
        self._cache: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, ref: SecretKeyRef, policy_namespace: str | None) -> str:
        namespace = ref.namespace or policy_namespace or self._own
        key = (namespace, ref.name, ref.key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        where = f"Secret {namespace}/{ref.name}"
        try:
            secret = call(
                f"public key {where}",
                lambda: self._api.read_namespaced_secret(
                    ref.name, namespace, _request_timeout=self._timeout
                ),
            )
        except Unavailable:
            raise  # a TemporaryError: the API server may answer on a retry
        except KubeApiError as exc:  # absent, forbidden, refused: permanent, the key is unusable
            raise VerificationError(
                f"public key {where} cannot be read (HTTP {exc.status})"
            ) from None
        raw = (secret.data or {}).get(ref.key)
        if not raw:
            raise VerificationError(
                f"public key {where} has no data key {ref.key!r} "
                f"(got keys {sorted(secret.data or {})})"
            )
        try:
            pem = base64.b64decode(raw).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise VerificationError(f"public key {where}[{ref.key}] is not a PEM") from None
        with self._lock:
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[key] = (pem, now)
        return pem
