"""An in-memory API server seam for the controller: it stores objects as the wire JSON the
real one would, enforces resourceVersion like it (409 on a stale write), and can be told to
lose races. The objects it holds are checked against the committed CRDs by the tests."""

from __future__ import annotations

import base64
import copy
import itertools
from typing import Any

import pytest

from samplerguard.kubeapi import Conflict, Forbidden
from samplerguard.operator.certs import CertState
from samplerguard.policy.report import ObjectReference


class MemoryKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.webhooks: dict[tuple[str, str], dict[str, Any]] = {}
        self.conflicts_left = 0
        self._rv = itertools.count(1)
        self.writes = 0
        self.status_patches: list[tuple[str | None, str, dict[str, Any]]] = []
        #: namespaces where writing a Secret is refused (no RoleBinding there)
        self.forbidden_namespaces: set[str] = set()

    # secrets
    def get_secret(self, namespace: str, name: str) -> tuple[CertState, str | None]:
        obj = self.objects.get(("Secret", namespace, name))
        if obj is None:
            return CertState(), None
        data = {k: base64.b64decode(v) for k, v in obj["data"].items()}
        return CertState(data), obj["metadata"]["resourceVersion"]

    def put_secret(
        self,
        namespace: str,
        name: str,
        state: CertState,
        rv: str | None,
        *,
        type_: str = "kubernetes.io/tls",
    ) -> None:
        if namespace in self.forbidden_namespaces:
            raise Forbidden(
                f"write Secret {namespace}/{name}",
                status=403,
                reason="Forbidden",
                message=f"secrets is forbidden in namespace {namespace}",
            )
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": type_,
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v).decode() for k, v in state.data.items()},
        }
        self._store(("Secret", namespace, name), body, rv)

    def _store(
        self, key: tuple[str, str | None, str], body: dict[str, Any], rv: str | None
    ) -> None:
        if self.conflicts_left:
            self.conflicts_left -= 1
            raise Conflict("injected", status=409)
        current = self.objects.get(key)
        if current is None and rv:
            raise Conflict("gone", status=409)
        if current is not None and current["metadata"]["resourceVersion"] != rv:
            raise Conflict("stale", status=409)
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[key] = body
        self.writes += 1

    # webhooks
    def add_webhook(self, kind: str, name: str, hooks: list[str]) -> None:
        self.webhooks[(kind, name)] = {
            "webhooks": [{"name": h, "clientConfig": {"url": "https://127.0.0.1:1"}} for h in hooks]
        }

    def patch_ca_bundle(self, kind: str, name: str, bundle: bytes) -> bool:
        cfg = self.webhooks.get((kind, name))
        if cfg is None:
            return False
        enc = base64.b64encode(bundle).decode()
        if all(h["clientConfig"].get("caBundle") == enc for h in cfg["webhooks"]):
            return False
        for h in cfg["webhooks"]:
            h["clientConfig"]["caBundle"] = enc
        return True

    # reports
    def get_report(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        kind = "ClusterPolicyReport" if namespace is None else "PolicyReport"
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def put_report(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self._store(
            (body["kind"], meta.get("namespace"), meta["name"]), body, meta.get("resourceVersion")
        )

    def list_reports(self, label_selector: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for k, o in self.objects.items() if k[0] == "PolicyReport"]

    def patch_policy_status(self, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        self.status_patches.append((namespace, name, status))

    def create_event(
        self, involved: ObjectReference, *, type_: str, reason: str, message: str
    ) -> None:
        self.events.append(
            {
                "involvedObject": involved.to_wire(),
                "type": type_,
                "reason": reason,
                "message": message,
            }
        )


@pytest.fixture
def kube() -> MemoryKube:
    return MemoryKube()
