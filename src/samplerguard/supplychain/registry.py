"""An OCI Distribution (registry API v2) client over httpx.

It does what admission needs and nothing more: tag → digest, manifests (image manifests and
indexes), blobs and the OCI 1.1 referrers API. It reads only; ``_request(..., push=True)`` asks
for a push-scoped token, which the test tooling's publisher uses to write.
Every call is bounded: a timeout per request, a size cap per body, a few retries with
exponential backoff for 429/5xx and network errors. Content is checked against its digest
before anyone sees it.

Authentication follows the registry's ``WWW-Authenticate`` challenge: ``Basic`` with the
pull-secret credentials, or ``Bearer`` (fetch a token from the realm, with the credentials
if there are any, and cache it per repository scope until it expires).

Errors, translated once here:

* :class:`RegistryUnavailableError` (a :class:`TemporaryError`): timeouts, refused
  connections, 429/5xx after the retries. Callers fail closed or fall back to a cache.
* :class:`ManifestNotFoundError` / :class:`RegistryAuthError` (both
  :class:`VerificationError`): the registry answered, and the answer is "no".
* :class:`MalformedInputError`: the registry sent something oversized or unparseable.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from samplerguard.errors import MalformedInputError, TemporaryError, VerificationError
from samplerguard.supplychain.auth import Credentials, DockerConfig, parse_challenge
from samplerguard.supplychain.reference import ImageReference, parse_reference

__all__ = [
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "Descriptor",
    "Manifest",
    "ManifestNotFoundError",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryUnavailableError",
    "deadline",
]

_log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

MAX_MANIFEST_BYTES = 4 << 20  # the limit distribution itself applies
MAX_BLOB_BYTES = 16 << 20  # signature payloads and attestations are kilobytes
MAX_TOKEN_BYTES = 64 << 10


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "samplerguard_registry_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Bound every registry call made inside the block (and in pools that copy the context)
    to finish within ``seconds`` in total: each request's timeout shrinks to what is left, and
    no retry starts after the deadline. Running out raises :class:`RegistryUnavailableError`.
    """
    if seconds is None:
        yield
        return
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _remaining() -> float | None:
    end = _DEADLINE.get()
    return None if end is None else end - time.monotonic()


class RegistryUnavailableError(TemporaryError):
    """The registry did not answer usefully in time (network error, timeout, 429 or 5xx)."""


class RegistryAuthError(VerificationError):
    """The registry refused the credentials (or their absence) for this repository."""


class ManifestNotFoundError(VerificationError):
    """The registry has no manifest for this tag or digest."""


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    platform: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, doc: object, where: str) -> Descriptor:
        if not isinstance(doc, dict):
            raise MalformedInputError(f"{where}: a descriptor must be an object")
        media_type, digest, size = doc.get("mediaType"), doc.get("digest"), doc.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise MalformedInputError(f"{where}: descriptor lacks mediaType or digest")
        if not _valid_digest(digest):
            raise MalformedInputError(f"{where}: descriptor digest {digest[:80]!r} is not sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MalformedInputError(f"{where}: descriptor size {size!r} is not a natural number")
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise MalformedInputError(f"{where}: annotations must map strings to strings")
        artifact_type = doc.get("artifactType")
        platform = doc.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=annotations,
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            platform=platform if isinstance(platform, dict) else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out


def _valid_digest(digest: str) -> bool:
    return (
        len(digest) == 71
        and digest.startswith("sha256:")
        and all(c in "0123456789abcdef" for c in digest[7:])
    )


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A manifest or index, parsed once. ``raw`` hashes to ``digest``."""

    digest: str
    media_type: str
    raw: bytes = field(repr=False)
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str]
    artifact_type: str | None = None
    subject: Descriptor | None = None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    @classmethod
    def parse(cls, raw: bytes, *, content_type: str | None = None) -> Manifest:
        """Parse ``raw`` (an image manifest or an index); the digest is computed, not trusted."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise MalformedInputError(
                f"manifest is {len(raw)} bytes (at most {MAX_MANIFEST_BYTES})"
            )
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedInputError(f"manifest is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise MalformedInputError("manifest must be a JSON object")
        if doc.get("schemaVersion") != 2:
            raise MalformedInputError(
                f"manifest schemaVersion is {doc.get('schemaVersion')!r} (expected 2)"
            )
        media_type = doc.get("mediaType")
        if not isinstance(media_type, str):
            ct = (content_type or "").split(";")[0].strip()
            media_type = ct or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
        if media_type not in INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES:
            raise MalformedInputError(f"manifest media type {media_type[:100]!r} is not supported")
        config = None
        layers: tuple[Descriptor, ...] = ()
        manifests: tuple[Descriptor, ...] = ()
        if media_type in INDEX_MEDIA_TYPES:
            entries = doc.get("manifests", [])
            if not isinstance(entries, list) or len(entries) > 1024:
                raise MalformedInputError("index 'manifests' must be a list of ≤ 1024 entries")
            manifests = tuple(
                Descriptor.from_json(m, f"manifests[{i}]") for i, m in enumerate(entries)
            )
        else:
            config = Descriptor.from_json(doc.get("config"), "config")
            entries = doc.get("layers", [])
            if not isinstance(entries, list) or len(entries) > 1024:
                raise MalformedInputError("manifest 'layers' must be a list of ≤ 1024 entries")
            layers = tuple(Descriptor.from_json(m, f"layers[{i}]") for i, m in enumerate(entries))
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise MalformedInputError("manifest annotations must map strings to strings")
        subject = doc.get("subject")
        artifact_type = doc.get("artifactType")
        return cls(
            digest=sha256_digest(raw),
            media_type=media_type,
            raw=raw,
            config=config,
            layers=layers,
            manifests=manifests,
            annotations=annotations,
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            subject=Descriptor.from_json(subject, "subject") if subject is not None else None,
        )


_SSL_CONTEXT: ssl.SSLContext | None = None
_SSL_LOCK = threading.Lock()


def _default_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process: loading the CA bundle costs tens of
    milliseconds (160 ms on a loaded 2-core VM), too much to pay per client."""
    global _SSL_CONTEXT
    with _SSL_LOCK:
        if _SSL_CONTEXT is None:
            _SSL_CONTEXT = httpx.create_ssl_context()
        return _SSL_CONTEXT


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float


class RegistryClient:
    """A thread-safe OCI registry client; one instance per process, connections are reused.

    Args:
        credentials: pull-secret credentials, looked up by registry host.
        timeout: seconds per request (connect, read, write, pool each).
        plain_http: registry hosts (``host:port``) spoken to over plain HTTP. Meant for
            loopback test registries; everything else uses HTTPS.
        verify: TLS verification for httpx (``True``, a CA bundle path or an SSLContext).
        retries: extra attempts after a network error, 429 or 5xx.
        backoff: base of the exponential backoff between attempts, in seconds.
        max_blob_bytes: size cap for blobs read through :meth:`get_blob`.
        transport: an httpx transport (tests use ``httpx.MockTransport`` as a seam).
    """

    def __init__(
        self,
        *,
        credentials: DockerConfig | None = None,
        timeout: float = 5.0,
        plain_http: Collection[str] = (),
        verify: Any = True,
        retries: int = 2,
        backoff: float = 0.05,
        max_blob_bytes: int = MAX_BLOB_BYTES,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "samplerguard/0.1",
    ) -> None:
        self._credentials = credentials or DockerConfig()
        self._plain_http = frozenset(h.lower() for h in plain_http)
        self._retries = max(0, retries)
        self._timeout = timeout
        self._backoff = max(0.0, backoff)
        self._max_blob = max_blob_bytes
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        if verify is True:
            verify = _default_ssl_context()
        if transport is None:
            # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus
            # delayed ACKs add ~40 ms to every upload.
            transport = httpx.HTTPTransport(
                verify=verify,
                limits=limits,
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": user_agent},
        )
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._basic_hosts: set[str] = set()
        self._no_referrers: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_credentials(self, credentials: DockerConfig) -> RegistryClient:
        """A client sharing this one's connection pool but using other credentials (for a pod's
        pull secrets)."""
        clone = object.__new__(RegistryClient)
        clone.__dict__.update(self.__dict__)
        clone._credentials = credentials
        clone._tokens = {}
        clone._basic_hosts = set()
        clone._lock = threading.Lock()
        return clone

    # -- reads -----------------------------------------------------------------------------

    def resolve(self, ref: str | ImageReference) -> str:
        """Tag → manifest digest (``sha256:…``). A digest reference is returned as is, after
        checking the registry has it. For an image index this is the index's digest, which is
        what cosign signs."""
        image = parse_reference(ref) if isinstance(ref, str) else ref
        try:
            resp = self._request("HEAD", image, f"/manifests/{image.reference}", accept=_ACCEPT)
        except (ManifestNotFoundError, RegistryAuthError):
            raise
        except VerificationError:
            # Some registries refuse HEAD (405 and the like): fetch and hash instead.
            return self.get_manifest(image).digest
        digest = str(resp.headers.get("Docker-Content-Digest", ""))
        if image.digest:
            return image.digest
        if _valid_digest(digest):
            return digest
        # Some registries omit the header on HEAD: fetch and hash.
        return self.get_manifest(image).digest

    def get_manifest(self, ref: str | ImageReference) -> Manifest:
        """Fetch and parse a manifest or index. When the reference carries a digest, the bytes
        must hash to it."""
        image = parse_reference(ref) if isinstance(ref, str) else ref
        resp = self._request(
            "GET", image, f"/manifests/{image.reference}", accept=_ACCEPT, limit=MAX_MANIFEST_BYTES
        )
        manifest = Manifest.parse(resp.content, content_type=resp.headers.get("Content-Type"))
        if image.digest and manifest.digest != image.digest:
            raise VerificationError(
                f"registry served manifest {manifest.digest} for {image} "
                f"(digest mismatch: expected {image.digest})"
            )
        return manifest

    def get_blob(
        self, ref: str | ImageReference, digest: str, *, max_bytes: int | None = None
    ) -> bytes:
        """Fetch a blob and check it hashes to ``digest``."""
        image = parse_reference(ref) if isinstance(ref, str) else ref
        if not _valid_digest(digest):
            raise MalformedInputError(f"blob digest {digest[:80]!r} is not sha256:<64 hex>")
        limit = min(max_bytes or self._max_blob, self._max_blob)
        resp = self._request("GET", image, f"/blobs/{digest}", limit=limit, follow=True)
        data = resp.content
        if sha256_digest(data) != digest:
            raise VerificationError(
                f"blob of {image.name} hashes to {sha256_digest(data)} "
                f"(digest mismatch: expected {digest})"
            )
        return data

    def referrers(
        self, ref: str | ImageReference, digest: str, *, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """The OCI 1.1 referrers of ``digest``, or ``None`` when the registry lacks the API
        (then callers fall back to the ``sha256-<hex>.sig``/``.att`` tag scheme). A registry
        found without the API is remembered for five minutes, saving a round-trip."""
        image = parse_reference(ref) if isinstance(ref, str) else ref
        now = time.monotonic()
        if self._no_referrers.get(image.registry, 0.0) > now:
            return None
        path = f"/referrers/{digest}"
        params = {"artifactType": artifact_type} if artifact_type else None
        try:
            resp = self._request(
                "GET", image, path, accept=OCI_INDEX, limit=MAX_MANIFEST_BYTES, params=params
            )
        except ManifestNotFoundError:
            self._no_referrers[image.registry] = now + 300.0
            return None
        ct = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if ct != OCI_INDEX:
            self._no_referrers[image.registry] = now + 300.0
            return None
        index = Manifest.parse(resp.content, content_type=ct)
        out = list(index.manifests)
        if artifact_type:
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    def get_manifest_if_exists(self, ref: str | ImageReference) -> Manifest | None:
        """Like :meth:`get_manifest`, but ``None`` for a tag the registry does not have."""
        try:
            return self.get_manifest(ref)
        except ManifestNotFoundError:
            return None

    # -- the engine ------------------------------------------------------------------------

    def _base(self, image: ImageReference) -> str:
        scheme = "http" if image.registry.lower() in self._plain_http else "https"
        host = "registry-1.docker.io" if image.registry == "index.docker.io" else image.registry
        return f"{scheme}://{host}"

    def _request(
        self,
        method: str,
        image: ImageReference,
        path: str,
        *,
        accept: str | None = None,
        limit: int = MAX_MANIFEST_BYTES,
        params: Mapping[str, str] | None = None,
        push: bool = False,
        url: httpx.URL | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        follow: bool = False,
    ) -> httpx.Response:
        target = url or httpx.URL(f"{self._base(image)}/v2/{image.repository}{path}")
        scope = f"repository:{image.repository}:{'pull,push' if push else 'pull'}"
        hdrs = dict(headers or {})
        if accept:
            hdrs["Accept"] = accept
        authed_retry = False
        attempt = 0
        redirects = 0
        while True:
            auth = self._auth_header(image.registry, scope)
            if auth:
                hdrs["Authorization"] = auth
            else:
                hdrs.pop("Authorization", None)
            try:
                resp = self._send(method, target, hdrs, params, content, limit)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if attempt < self._retries:
                    self._sleep(attempt)
                    attempt += 1
                    continue
                raise RegistryUnavailableError(
                    f"registry {image.registry} unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            status = resp.status_code
            if status == 401 and not authed_retry:
                authed_retry = True
                self._authenticate(image, resp.headers.get("WWW-Authenticate", ""), scope)
                continue
            if status in (429, 500, 502, 503, 504):
                if attempt < self._retries:
                    self._sleep(attempt, resp.headers.get("Retry-After"))
                    attempt += 1
                    continue
                raise RegistryUnavailableError(
                    f"registry {image.registry} answered {status} for {image.name}{path}",
                    delay=5.0,
                )
            if follow and status in (301, 302, 303, 307, 308) and redirects < 3:
                location = resp.headers.get("Location")
                if not location:
                    raise MalformedInputError(f"registry redirect without Location for {path}")
                target = target.join(location)
                # Blob storage backends authenticate with the signed URL, not our token.
                hdrs.pop("Authorization", None)
                redirects += 1
                continue
            if status in (401, 403):
                raise RegistryAuthError(
                    f"registry {image.registry} denied access to {image.name} ({status})"
                )
            if status == 404:
                raise ManifestNotFoundError(
                    f"{image.name}{path.replace('/manifests/', ':')} not found"
                )
            if status >= 400:
                raise VerificationError(
                    f"registry {image.registry} answered {status} for {image.name}{path}"
                )
            return resp

    def _send(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        content: bytes | None,
        limit: int,
    ) -> httpx.Response:
        left = _remaining()
        if left is not None and left <= 0:
            raise httpx.TimeoutException("verification deadline exceeded")
        request = self._http.build_request(
            method, url, headers=headers, params=params, content=content
        )
        if left is not None:
            request.extensions["timeout"] = httpx.Timeout(min(left, self._timeout)).as_dict()
        resp = self._http.send(request, stream=True)
        try:
            declared = resp.headers.get("Content-Length")
            if (
                declared is not None
                and declared.isascii()
                and declared.isdigit()
                and int(declared) > limit
                and resp.status_code < 300
                and method != "HEAD"
            ):
                raise MalformedInputError(f"{url.path} is {declared} bytes (at most {limit})")
            if method == "HEAD":
                body = b""
            else:
                chunks: list[bytes] = []
                total = 0
                for chunk in resp.iter_bytes():
                    total += len(chunk)
                    if total > limit:
                        raise MalformedInputError(f"{url.path} exceeds {limit} bytes")
                    chunks.append(chunk)
                body = b"".join(chunks)
        finally:
            resp.close()
        return httpx.Response(resp.status_code, headers=resp.headers, content=body, request=request)

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self._backoff * (2**attempt) * (0.5 + random.random())  # noqa: S311
        if retry_after and retry_after.isascii() and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), 2.0))
        left = _remaining()
        if left is not None:
            delay = max(0.0, min(delay, left))
        time.sleep(delay)

    def _auth_header(self, registry: str, scope: str) -> str | None:
        with self._lock:
            token = self._tokens.get((registry, scope))
            if token is not None and token.expires > time.monotonic():
                return f"Bearer {token.value}"
            if registry in self._basic_hosts:
                creds = self._credentials.credentials_for(registry)
                return creds.basic_header() if creds else None
        return None

    def _authenticate(self, image: ImageReference, header: str, scope: str) -> None:
        challenge = parse_challenge(header)
        creds = self._credentials.credentials_for(image.registry)
        if challenge is None:
            raise RegistryAuthError(
                f"registry {image.registry} answered 401 without a usable challenge"
            )
        if challenge.scheme == "basic":
            if creds is None:
                raise RegistryAuthError(
                    f"registry {image.registry} requires credentials for {image.name} "
                    "and no pull secret names it"
                )
            with self._lock:
                self._basic_hosts.add(image.registry)
            return
        if challenge.scheme != "bearer":
            raise RegistryAuthError(
                f"registry {image.registry} asks for unsupported auth scheme {challenge.scheme!r}"
            )
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryAuthError(f"registry {image.registry} sent bearer realm {realm[:100]!r}")
        token = self._fetch_token(image, realm, challenge.params.get("service"), scope, creds)
        with self._lock:
            if len(self._tokens) >= 1024:  # one per repository scope; bound the memory
                self._tokens.clear()
            self._tokens[(image.registry, scope)] = token

    def _fetch_token(
        self,
        image: ImageReference,
        realm: str,
        service: str | None,
        scope: str,
        creds: Credentials | None,
    ) -> _Token:
        params = {"scope": scope}
        if service:
            params["service"] = service
        headers = {"Authorization": creds.basic_header()} if creds else {}
        attempt = 0
        while True:
            try:
                resp = self._send("GET", httpx.URL(realm), headers, params, None, MAX_TOKEN_BYTES)
            except (httpx.TimeoutException, httpx.NetworkError) as exc:
                if attempt < self._retries:
                    self._sleep(attempt)
                    attempt += 1
                    continue
                raise RegistryUnavailableError(
                    f"token service of {image.registry} unreachable: {type(exc).__name__}"
                ) from exc
            if resp.status_code >= 500 and attempt < self._retries:
                self._sleep(attempt)
                attempt += 1
                continue
            break
        if resp.status_code >= 500:
            raise RegistryUnavailableError(
                f"token service of {image.registry} answered {resp.status_code}"
            )
        if resp.status_code != 200:
            raise RegistryAuthError(
                f"token service of {image.registry} refused a token for {image.name} "
                f"({resp.status_code})"
            )
        try:
            doc = json.loads(resp.content)
        except ValueError:
            raise MalformedInputError(
                f"token service of {image.registry} sent a non-JSON answer"
            ) from None
        value = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryAuthError(f"token service of {image.registry} sent no token")
        expires_in = doc.get("expires_in", 60)
        if not isinstance(expires_in, int) or expires_in <= 0:
            expires_in = 60
        # Refresh a little early: the token must not expire between check and use.
        return _Token(value, time.monotonic() + max(1.0, expires_in - 10.0))


def iter_platform_manifests(index: Manifest) -> Iterator[Descriptor]:
    """The image manifests an index lists (nested indexes are not followed)."""
    for desc in index.manifests:
        if desc.media_type in MANIFEST_MEDIA_TYPES:
            yield desc
