"""An in-memory OCI registry behind ``httpx.MockTransport``: the seam for failure modes a real
registry will not produce on demand (5xx storms, oversize bodies, lying digests, referrers)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx

from samplerguard.supplychain import RegistryClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
HOST = "registry.test"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.referrers: dict[str, list[dict[str, Any]]] | None = None
        self.calls: list[str] = []
        self.hook: Callable[[httpx.Request], httpx.Response | None] | None = None

    def client(self, **kwargs: Any) -> RegistryClient:
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("backoff", 0.001)
        return RegistryClient(transport=httpx.MockTransport(self.handle), **kwargs)

    def put_blob(self, data: bytes) -> dict[str, Any]:
        d = digest_of(data)
        self.blobs[d] = data
        return {"mediaType": "application/octet-stream", "digest": d, "size": len(data)}

    def put_manifest(
        self, repo: str, raw: bytes, tag: str | None = None, media_type: str = OCI_MANIFEST
    ) -> str:
        d = digest_of(raw)
        self.manifests[(repo, d)] = (raw, media_type)
        if tag:
            self.manifests[(repo, tag)] = (raw, media_type)
        return d

    def image(self, repo: str = "acme/x", tag: str = "1.0") -> str:
        config = self.put_blob(b"{}")
        layer = self.put_blob(b"layer")
        raw = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
        ).encode()
        return self.put_manifest(repo, raw, tag)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {request.url.path}")
        if self.hook is not None:
            answer = self.hook(request)
            if answer is not None:
                return answer
        path = request.url.path
        if not path.startswith("/v2/"):
            return httpx.Response(404)
        rest = path[4:]
        for kind in ("/manifests/", "/blobs/", "/referrers/"):
            if kind in rest:
                repo, ref = rest.split(kind, 1)
                break
        else:
            return httpx.Response(404)
        if kind == "/manifests/":
            found = self.manifests.get((repo, ref))
            if found is None:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            raw, media_type = found
            headers = {"Content-Type": media_type, "Docker-Content-Digest": digest_of(raw)}
            return httpx.Response(
                200, content=b"" if request.method == "HEAD" else raw, headers=headers
            )
        if kind == "/blobs/":
            data = self.blobs.get(ref)
            if data is None:
                return httpx.Response(404)
            return httpx.Response(200, content=data)
        if self.referrers is None:
            return httpx.Response(404, text="404 page not found")
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": self.referrers.get(ref, []),
        }
        return httpx.Response(200, json=index, headers={"Content-Type": OCI_INDEX})
