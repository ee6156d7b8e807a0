"""Cosign's formats on an OCI registry, and fetching them with as few round-trips as possible.

Legacy ("tag scheme") layout, as cosign writes it:

* signatures: the manifest tagged ``sha256-<hex>.sig`` in the image's repository; one layer
  per signature, media type ``application/vnd.dev.cosign.simplesigning.v1+json``, whose blob is
  the simple-signing payload and whose annotations carry the signature
  (``dev.cosignproject.cosign/signature``, base64), and for keyless signatures the Fulcio
  certificate (``dev.sigstore.cosign/certificate``), its chain (``…/chain``) and the Rekor
  inclusion promise (``…/bundle``);
* attestations: the manifest tagged ``sha256-<hex>.att``; one layer per attestation, media
  type ``application/vnd.dsse.envelope.v1+json``, whose blob is a DSSE envelope around an
  in-toto statement, with the same certificate/bundle annotations and ``predicateType``.

OCI 1.1 layout: the same manifests (or Sigstore bundles, artifact type
``application/vnd.dev.sigstore.bundle.v0.3+json``) listed by the referrers API under the
image digest. The referrers API is asked first; registries without it fall back to the tags.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.supplychain.reference import ImageReference
from samplerguard.supplychain.registry import Descriptor, Manifest, RegistryClient

__all__ = [
    "ATTESTATION_MEDIA_TYPE",
    "BUNDLE_ANNOTATION",
    "BUNDLE_ARTIFACT_TYPES",
    "CERTIFICATE_ANNOTATION",
    "CHAIN_ANNOTATION",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING_MEDIA_TYPE",
    "SIMPLE_SIGNING_TYPE",
    "Artifacts",
    "SignedLayer",
    "check_simple_signing",
    "fetch_artifacts",
    "simple_signing_payload",
    "tag_for",
]

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
ATTESTATION_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
SIMPLE_SIGNING_TYPE = "cosign container image signature"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
PREDICATE_TYPE_ANNOTATION = "predicateType"
BUNDLE_ARTIFACT_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    }
)
COSIGN_SIG_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_ATT_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.att.v1+json"
MAX_LAYERS = 64
T = TypeVar("T")
MAX_PAYLOAD_BYTES = 1 << 20
MAX_ANNOTATION_BYTES = 64 << 10


def tag_for(digest: str, suffix: str) -> str:
    """``sha256:abc…`` + ``sig`` → ``sha256-abc….sig``."""
    return digest.replace(":", "-") + "." + suffix


def simple_signing_payload(docker_reference: str, digest: str) -> bytes:
    """The payload cosign signs, byte for byte as Go's ``json.Marshal`` writes it."""
    doc = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIMPLE_SIGNING_TYPE,
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def check_simple_signing(payload: bytes, digest: str) -> str:
    """Check a simple-signing payload names ``digest``; returns its docker-reference.

    Raises :class:`VerificationError` for another digest, :class:`MalformedInputError` for a
    payload that is not simple signing.
    """
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        kind = critical["type"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        reference = critical.get("identity", {}).get("docker-reference", "")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise MalformedInputError(
            "signature payload is not a cosign simple-signing payload"
        ) from None
    if kind != SIMPLE_SIGNING_TYPE:
        raise MalformedInputError(
            f"signature payload type is {str(kind)[:80]!r} (expected {SIMPLE_SIGNING_TYPE!r})"
        )
    if signed_digest != digest:
        raise VerificationError(
            f"signed digest mismatch (got {str(signed_digest)[:80]}, expected {digest})"
        )
    return str(reference)


@dataclass(frozen=True)
class SignedLayer:
    """One cosign signature or attestation layer, with its blob and annotations decoded.

    ``payload`` is what was signed for simple signing, the DSSE envelope for attestations.
    ``signature`` is the annotation's value (empty for attestations, whose signatures live in
    the envelope). ``rekor_bundle`` is the parsed ``dev.sigstore.cosign/bundle`` JSON.
    """

    source: str
    media_type: str
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    certificate_pem: bytes | None = field(default=None, repr=False)
    chain_pem: bytes | None = field(default=None, repr=False)
    rekor_bundle: dict[str, Any] | None = field(default=None, repr=False)
    predicate_type: str | None = None


@dataclass(frozen=True)
class BundleArtifact:
    """A Sigstore bundle attached to the image as an OCI referrer."""

    source: str
    raw: bytes = field(repr=False)


@dataclass
class Artifacts:
    """Everything attached to one image digest that verification may use. ``problems`` lists
    layers that could not be read (they count as absent, and the verdict says so)."""

    signatures: list[SignedLayer] = field(default_factory=list)
    attestations: list[SignedLayer] = field(default_factory=list)
    bundles: list[BundleArtifact] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """A small shared pool: the independent fetches of one verification run side by side,
    so the critical path is three round-trips (resolve, manifests, blobs), not seven."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sg-fetch")
        return _POOL


def _gather(calls: list[Callable[[], T]]) -> list[T]:
    if len(calls) <= 1:
        return [c() for c in calls]
    # Copy the context so a verification deadline holds in the pool's threads too.
    futures = [_pool().submit(contextvars.copy_context().run, c) for c in calls[1:]]
    first = calls[0]()  # the calling thread works too
    return [first, *(f.result() for f in futures)]


def fetch_artifacts(
    client: RegistryClient,
    image: ImageReference,
    digest: str,
    *,
    signatures: bool = True,
    attestations: bool = True,
) -> Artifacts:
    """Collect the signatures, attestations and bundles of ``image@digest``.

    Registry unavailability propagates as :class:`TemporaryError`. Malformed or oversized
    signature material does not: it lands in :attr:`Artifacts.problems`, because a forged
    layer must not hide a valid one beside it.
    """
    out = Artifacts()
    suffixes = [s for s, wanted in (("sig", signatures), ("att", attestations)) if wanted]

    def tag_manifest(suffix: str) -> Callable[[], tuple[str, Manifest | str | None]]:
        def run() -> tuple[str, Manifest | str | None]:
            tag = tag_for(digest, suffix)
            ref = ImageReference(image.registry, image.repository, tag, None)
            try:
                return tag, client.get_manifest_if_exists(ref)
            except (MalformedInputError, VerificationError) as exc:
                return tag, str(exc)

        return run

    def referrers() -> tuple[str, list[Descriptor] | None]:
        try:
            return "referrers", client.referrers(image, digest)
        except (MalformedInputError, VerificationError) as exc:
            out.problems.append(f"referrers API: {exc}")
            return "referrers", None

    def referrers_tag() -> tuple[str, list[Descriptor] | None]:
        # The OCI 1.1 fallback for registries without the API: an index tagged sha256-<hex>.
        ref = ImageReference(image.registry, image.repository, digest.replace(":", "-"), None)
        try:
            index = client.get_manifest_if_exists(ref)
        except (MalformedInputError, VerificationError) as exc:
            out.problems.append(f"referrers tag: {exc}")
            return "referrers-tag", None
        return "referrers-tag", list(index.manifests) if index and index.is_index else None

    # (a): the referrers API, its fallback tag and cosign's tags, side by side.
    phase1: list[Callable[[], tuple[str, Any]]] = [referrers, referrers_tag]
    phase1 += [tag_manifest(s) for s in suffixes]
    results = _gather(phase1)
    manifests: list[tuple[str, Manifest]] = []
    bundle_manifests: list[Descriptor] = []
    listed = dict(results[:2])
    api, fallback = listed["referrers"], listed["referrers-tag"]
    for where, found in [("referrers", api if api is not None else fallback), *results[2:]]:
        if where == "referrers":
            if found is None:
                continue
            out.sources.append("referrers API" if api is not None else "referrers tag")
            for desc in found[:MAX_LAYERS]:
                kind = desc.artifact_type or ""
                if kind in BUNDLE_ARTIFACT_TYPES:
                    bundle_manifests.append(desc)
                elif (signatures and kind == COSIGN_SIG_ARTIFACT_TYPE) or (
                    attestations and kind == COSIGN_ATT_ARTIFACT_TYPE
                ):
                    manifest = _manifest_or_problem(client, image.with_digest(desc.digest), out)
                    if manifest is not None:
                        manifests.append((f"referrer {desc.digest[:19]}", manifest))
        elif isinstance(found, str):
            out.problems.append(f"tag {where}: {found}")
        elif found is not None:
            out.sources.append(f"tag {where}")
            manifests.append((f"tag {where}", found))
    for desc in bundle_manifests:
        _collect_bundle(client, image, desc, out)

    # (b): every layer's blob, side by side.
    jobs: list[tuple[list[SignedLayer], str, Descriptor]] = []
    for where, manifest in manifests:
        for i, layer in enumerate(manifest.layers[:MAX_LAYERS]):
            if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE and signatures:
                jobs.append((out.signatures, f"{where} layer {i}", layer))
            elif layer.media_type == ATTESTATION_MEDIA_TYPE and attestations:
                jobs.append((out.attestations, f"{where} layer {i}", layer))

    def read(layer: Descriptor, where: str) -> Callable[[], SignedLayer | str]:
        def run() -> SignedLayer | str:
            try:
                return _read_layer(client, image, layer, where, digest)
            except (MalformedInputError, VerificationError) as exc:
                return f"{where}: {exc}"

        return run

    for (target, _, _), got in zip(
        jobs, _gather([read(layer, where) for _, where, layer in jobs]), strict=True
    ):
        if isinstance(got, str):
            out.problems.append(got)
        else:
            target.append(got)
    return out


def _manifest_or_problem(
    client: RegistryClient, ref: ImageReference, out: Artifacts
) -> Manifest | None:
    try:
        return client.get_manifest(ref)
    except (MalformedInputError, VerificationError) as exc:
        out.problems.append(f"referrer {ref.digest}: {exc}")
        return None


def _collect_bundle(
    client: RegistryClient, image: ImageReference, desc: Descriptor, out: Artifacts
) -> None:
    manifest = _manifest_or_problem(client, image.with_digest(desc.digest), out)
    if manifest is None:
        return
    for layer in manifest.layers[:MAX_LAYERS]:
        if layer.media_type in BUNDLE_ARTIFACT_TYPES or layer.media_type.startswith(
            "application/vnd.dev.sigstore.bundle"
        ):
            try:
                raw = client.get_blob(image, layer.digest, max_bytes=MAX_PAYLOAD_BYTES)
            except (MalformedInputError, VerificationError) as exc:
                out.problems.append(f"bundle {desc.digest[:19]}: {exc}")
                continue
            out.bundles.append(BundleArtifact(f"bundle referrer {desc.digest[:19]}", raw))


def _known_payload(image: ImageReference, digest: str, layer: Descriptor) -> bytes | None:
    """The simple-signing payload cosign writes is a function of the repository and the
    digest. When one of the names cosign may have used hashes to the layer's digest, those
    are the blob's bytes (content addressing), and the round-trip is saved."""
    names = [image.name]
    if image.registry == "index.docker.io":
        names += [image.repository, f"docker.io/{image.repository}"]
    for name in names:
        payload = simple_signing_payload(name, digest)
        if len(payload) == layer.size and hashlib.sha256(payload).hexdigest() == layer.digest[7:]:
            return payload
    return None


def _read_layer(
    client: RegistryClient,
    image: ImageReference,
    layer: Descriptor,
    where: str,
    digest: str = "",
) -> SignedLayer:
    ann = layer.annotations
    for key in (SIGNATURE_ANNOTATION, CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, BUNDLE_ANNOTATION):
        if len(ann.get(key, "")) > MAX_ANNOTATION_BYTES:
            raise MalformedInputError(f"annotation {key} exceeds {MAX_ANNOTATION_BYTES} bytes")
    if layer.size > MAX_PAYLOAD_BYTES:
        raise MalformedInputError(f"payload is {layer.size} bytes (at most {MAX_PAYLOAD_BYTES})")
    signature = b""
    if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE:
        value = ann.get(SIGNATURE_ANNOTATION)
        if not value:
            raise MalformedInputError(f"layer has no {SIGNATURE_ANNOTATION} annotation")
        try:
            signature = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedInputError(f"{SIGNATURE_ANNOTATION} is not base64") from None
    rekor_bundle = None
    if BUNDLE_ANNOTATION in ann:
        try:
            rekor_bundle = json.loads(ann[BUNDLE_ANNOTATION])
        except ValueError:
            raise MalformedInputError(f"{BUNDLE_ANNOTATION} is not JSON") from None
        if not isinstance(rekor_bundle, dict):
            raise MalformedInputError(f"{BUNDLE_ANNOTATION} is not a JSON object")
    known = (
        _known_payload(image, digest, layer)
        if digest and layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE
        else None
    )
    payload = known or client.get_blob(image, layer.digest, max_bytes=MAX_PAYLOAD_BYTES)
    cert = ann.get(CERTIFICATE_ANNOTATION)
    chain = ann.get(CHAIN_ANNOTATION)
    return SignedLayer(
        source=where,
        media_type=layer.media_type,
        payload=payload,
        signature=signature,
        certificate_pem=cert.encode() if cert else None,
        chain_pem=chain.encode() if chain else None,
        rekor_bundle=rekor_bundle,
        predicate_type=ann.get(PREDICATE_TYPE_ANNOTATION),
    )
