"""Publishing images, signatures and attestations in cosign's exact formats.

This is the writing half of :mod:`samplerguard.supplychain.cosign`: the tests, the benchmarks
and the end-to-end suite use it to push images to a registry and sign and attest them the way
``cosign sign --key`` and ``cosign attest --key`` do (legacy tag scheme, one layer per signature,
appended to the existing ``.sig``/``.att`` manifest). Keyless material (certificate, chain,
Rekor bundle) is attached when the :class:`Signer` carries it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from samplerguard.commitment.dsse import IN_TOTO_PAYLOAD_TYPE, pae
from samplerguard.errors import MalformedInputError
from samplerguard.supplychain.cosign import (
    ATTESTATION_MEDIA_TYPE,
    BUNDLE_ANNOTATION,
    CERTIFICATE_ANNOTATION,
    CHAIN_ANNOTATION,
    PREDICATE_TYPE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    simple_signing_payload,
    tag_for,
)
from samplerguard.supplychain.provenance import ROLE_ANNOTATION
from samplerguard.supplychain.reference import ImageReference, parse_reference
from samplerguard.supplychain.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ManifestNotFoundError,
    RegistryClient,
    sha256_digest,
)

__all__ = [
    "KeyKind",
    "Signer",
    "attach_bundle",
    "attest_image",
    "make_envelope",
    "make_statement",
    "push_blob",
    "push_image",
    "push_manifest",
    "sign_image",
    "slsa_v02_predicate",
    "slsa_v1_predicate",
]

KeyKind = Literal["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
#: (rekor entry kind, signature, signed payload) → the ``dev.sigstore.cosign/bundle`` JSON
LogWitness = Callable[[str, bytes, bytes], Mapping[str, Any]]
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def push_blob(client: RegistryClient, ref: str | ImageReference, data: bytes) -> Descriptor:
    """Upload a blob (monolithic POST+PUT) with ``client``'s push credentials; returns its
    descriptor. Existing blobs are skipped."""
    image = parse_reference(ref) if isinstance(ref, str) else ref
    digest = sha256_digest(data)
    try:
        client._request("HEAD", image, f"/blobs/{digest}", push=True)
        return Descriptor("application/octet-stream", digest, len(data))
    except ManifestNotFoundError:
        pass
    resp = client._request("POST", image, "/blobs/uploads/", push=True)
    location = resp.headers.get("Location", "")
    if not location:
        raise MalformedInputError(f"registry gave no upload location for {image.name}")
    url = httpx.URL(client._base(image)).join(location)
    url = url.copy_merge_params({"digest": digest})
    client._request(
        "PUT",
        image,
        "",
        push=True,
        url=url,
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    return Descriptor("application/octet-stream", digest, len(data))


def push_manifest(
    client: RegistryClient,
    ref: str | ImageReference,
    raw: bytes,
    media_type: str,
    *,
    tag: str | None = None,
) -> str:
    """PUT a manifest under ``tag`` (or its digest); returns the digest."""
    image = parse_reference(ref) if isinstance(ref, str) else ref
    digest = sha256_digest(raw)
    client._request(
        "PUT",
        image,
        f"/manifests/{tag or digest}",
        push=True,
        content=raw,
        headers={"Content-Type": media_type},
    )
    return digest


@dataclass
class Signer:
    """A private key, and for keyless signing the Fulcio-style certificate and a log witness."""

    key: PrivateKey
    certificate_pem: bytes | None = None
    chain_pem: bytes | None = None
    witness: LogWitness | None = field(default=None, repr=False)

    @classmethod
    def generate(cls, kind: KeyKind = "ecdsa-p256") -> Signer:
        key: PrivateKey
        if kind == "ecdsa-p256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif kind == "ecdsa-p384":
            key = ec.generate_private_key(ec.SECP384R1())
        elif kind == "ed25519":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key)

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def hash_algorithm(self) -> Literal["sha256", "sha384"]:
        """What cosign pairs with the key (and what a policy's ``hashAlgorithm`` must say)."""
        if isinstance(self.key, ec.EllipticCurvePrivateKey) and self.key.curve.key_size == 384:
            return "sha384"
        return "sha256"

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        algo = hashes.SHA384() if self.hash_algorithm == "sha384" else hashes.SHA256()
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, ec.ECDSA(algo))
        return self.key.sign(data, padding.PKCS1v15(), algo)

    def keyless_annotations(self, kind: str, signature: bytes, payload: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.certificate_pem is not None:
            out[CERTIFICATE_ANNOTATION] = self.certificate_pem.decode()
        if self.chain_pem is not None:
            out[CHAIN_ANNOTATION] = self.chain_pem.decode()
        if self.witness is not None:
            bundle = self.witness(kind, signature, payload)
            out[BUNDLE_ANNOTATION] = json.dumps(bundle, separators=(",", ":"))
        return out


def _ref(ref: str | ImageReference) -> ImageReference:
    return parse_reference(ref) if isinstance(ref, str) else ref


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def push_image(
    client: RegistryClient,
    ref: str | ImageReference,
    *,
    layers: Sequence[bytes] = (b"samplerguard test layer",),
    labels: Mapping[str, str] | None = None,
    platforms: Sequence[str] = (),
) -> str:
    """Push a small OCI image (config + layers + manifest) under the reference's tag; returns
    the manifest digest. With ``platforms`` (``["linux/amd64", "linux/arm64"]``) one manifest
    per platform is pushed and the tag names an OCI image index, whose digest is returned."""
    image = _ref(ref)
    if platforms:
        entries = []
        for plat in platforms:
            os_name, _, arch = plat.partition("/")
            raw = _image_manifest(client, image, layers, labels, os_name, arch)
            digest = push_manifest(client, image, raw, OCI_MANIFEST)
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": len(raw),
                    "platform": {"os": os_name, "architecture": arch},
                }
            )
        index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
        return push_manifest(client, image, index, OCI_INDEX, tag=image.tag or "latest")
    raw = _image_manifest(client, image, layers, labels, "linux", "amd64")
    return push_manifest(client, image, raw, OCI_MANIFEST, tag=image.tag or "latest")


def _image_manifest(
    client: RegistryClient,
    image: ImageReference,
    layers: Sequence[bytes],
    labels: Mapping[str, str] | None,
    os_name: str,
    arch: str,
) -> bytes:
    layer_descs = [
        {"mediaType": OCI_LAYER, "digest": push_blob(client, image, blob).digest, "size": len(blob)}
        for blob in layers
    ]
    config = _json(
        {
            "architecture": arch,
            "os": os_name,
            "config": {"Labels": dict(labels or {})},
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
        }
    )
    cfg = push_blob(client, image, config)
    return _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg.digest, "size": len(config)},
            "layers": layer_descs,
        }
    )


def _append_layer(
    client: RegistryClient,
    image: ImageReference,
    digest: str,
    suffix: str,
    blob: bytes,
    media_type: str,
    annotations: Mapping[str, str],
) -> str:
    """Add a layer to the ``sha256-<hex>.<suffix>`` manifest, as cosign does (existing
    signatures stay; an identical layer is not added twice)."""
    tag = tag_for(digest, suffix)
    existing = client.get_manifest_if_exists(ImageReference(image.registry, image.repository, tag))
    layers: list[Descriptor] = list(existing.layers) if existing is not None else []
    desc = Descriptor(media_type, push_blob(client, image, blob).digest, len(blob), annotations)
    if desc not in layers:
        layers.append(desc)
    # cosign's config for signature images: an empty image whose diff_ids are the layers.
    config = _json(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
            "config": {},
        }
    )
    cfg = push_blob(client, image, config)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": cfg.digest},
            "layers": [d.to_json() for d in layers],
        }
    )
    return push_manifest(client, image, manifest, OCI_MANIFEST, tag=tag)


def sign_image(
    client: RegistryClient,
    ref: str | ImageReference,
    digest: str,
    signer: Signer,
    *,
    payload: bytes | None = None,
    signature: bytes | None = None,
) -> str:
    """``cosign sign``: sign the simple-signing payload for ``digest`` and attach it under
    ``sha256-<hex>.sig``; returns the signature manifest's digest. ``payload`` and
    ``signature`` override what is pushed (for tampering tests)."""
    image = _ref(ref)
    body = payload if payload is not None else simple_signing_payload(image.name, digest)
    sig = signature if signature is not None else signer.sign(body)
    annotations = {SIGNATURE_ANNOTATION: base64.b64encode(sig).decode()}
    annotations.update(signer.keyless_annotations("hashedrekord", sig, body))
    return _append_layer(client, image, digest, "sig", body, SIMPLE_SIGNING_MEDIA_TYPE, annotations)


def attach_bundle(
    client: RegistryClient,
    ref: str | ImageReference,
    digest: str,
    bundle: bytes,
    *,
    artifact_type: str = "application/vnd.dev.sigstore.bundle.v0.3+json",
) -> str:
    """Attach a Sigstore bundle to ``digest`` as an OCI 1.1 referrer (an artifact manifest
    whose ``subject`` is the image), and list it in the ``sha256-<hex>`` fallback index that
    registries without the referrers API need, as cosign and oras do. Returns the artifact
    manifest's digest."""
    image = _ref(ref)
    empty = b"{}"
    cfg = push_blob(client, image, empty)
    layer = push_blob(client, image, bundle)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": cfg.digest,
                "size": len(empty),
            },
            "layers": [{"mediaType": artifact_type, "digest": layer.digest, "size": len(bundle)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 0},
        }
    )
    manifest_digest = push_manifest(client, image, manifest, OCI_MANIFEST)
    tag = digest.replace(":", "-")
    existing = client.get_manifest_if_exists(ImageReference(image.registry, image.repository, tag))
    entries = [d.to_json() for d in existing.manifests] if existing and existing.is_index else []
    entry = Descriptor(OCI_MANIFEST, manifest_digest, len(manifest), artifact_type=artifact_type)
    if entry.to_json() not in entries:
        entries.append(entry.to_json())
    index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    push_manifest(client, image, index, OCI_INDEX, tag=tag)
    return manifest_digest


def make_statement(
    subject_name: str,
    subject_digest: str,
    predicate_type: str,
    predicate: Mapping[str, Any],
    *,
    statement_type: str = "https://in-toto.io/Statement/v0.1",
) -> bytes:
    algo, _, value = subject_digest.partition(":")
    return _json(
        {
            "_type": statement_type,
            "predicateType": predicate_type,
            "subject": [{"name": subject_name, "digest": {algo: value}}],
            "predicate": dict(predicate),
        }
    )


def make_envelope(statement: bytes, signers: Sequence[Signer]) -> tuple[bytes, list[bytes]]:
    signed = pae(IN_TOTO_PAYLOAD_TYPE, statement)
    sigs = [s.sign(signed) for s in signers]
    envelope = _json(
        {
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "payload": base64.b64encode(statement).decode(),
            "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()} for sig in sigs],
        }
    )
    return envelope, sigs


def attest_image(
    client: RegistryClient,
    ref: str | ImageReference,
    digest: str,
    signer: Signer,
    predicate_type: str,
    predicate: Mapping[str, Any],
    *,
    subject_digest: str | None = None,
    envelope: bytes | None = None,
) -> str:
    """``cosign attest``: wrap an in-toto statement about ``digest`` (or ``subject_digest``) in
    a signed DSSE envelope and attach it under ``sha256-<hex>.att``; returns the manifest
    digest. ``envelope`` overrides the pushed blob (for tampering tests)."""
    image = _ref(ref)
    statement = make_statement(image.name, subject_digest or digest, predicate_type, predicate)
    built, sigs = make_envelope(statement, [signer])
    blob = envelope if envelope is not None else built
    annotations = {SIGNATURE_ANNOTATION: "", PREDICATE_TYPE_ANNOTATION: predicate_type}
    annotations.update(signer.keyless_annotations("intoto", sigs[0], statement))
    return _append_layer(client, image, digest, "att", blob, ATTESTATION_MEDIA_TYPE, annotations)


def _ml_descriptors(artifacts: Mapping[str, tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "uri": f"samplerguard:{role}/{name}",
            "digest": {"sha256": digest.removeprefix("sha256:")},
            "annotations": {ROLE_ANNOTATION: role},
        }
        for role, (name, digest) in artifacts.items()
    ]


def slsa_v1_predicate(
    *,
    builder_id: str,
    repository: str,
    ref: str,
    commit: str = "0" * 40,
    ml_artifacts: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """A SLSA v1 predicate in the GitHub Actions build type's shape. ``ml_artifacts`` maps a
    role (``model-weights``, …) to ``(name, "sha256:…")``."""
    return {
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {
                "workflow": {
                    "ref": ref,
                    "repository": repository,
                    "path": ".github/workflows/release.yml",
                }
            },
            "internalParameters": {},
            "resolvedDependencies": [
                {"uri": f"git+{repository}@{ref}", "digest": {"gitCommit": commit}},
                *_ml_descriptors(ml_artifacts or {}),
            ],
        },
        "runDetails": {
            "builder": {"id": builder_id},
            "metadata": {"invocationId": f"{repository}/actions/runs/1/attempts/1"},
        },
    }


def slsa_v02_predicate(
    *,
    builder_id: str,
    repository: str,
    ref: str,
    commit: str = "0" * 40,
    ml_artifacts: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """A SLSA v0.2 predicate in slsa-github-generator's shape."""
    return {
        "builder": {"id": builder_id},
        "buildType": "https://github.com/slsa-framework/slsa-github-generator/generic@v1",
        "invocation": {
            "configSource": {
                "uri": f"git+{repository}@{ref}",
                "digest": {"sha1": commit},
                "entryPoint": ".github/workflows/release.yml",
            },
            "parameters": {},
        },
        "materials": [
            {"uri": f"git+{repository}@{ref}", "digest": {"sha1": commit}},
            *[
                {"uri": d["uri"], "digest": d["digest"]}
                for d in _ml_descriptors(ml_artifacts or {})
            ],
        ],
    }
