"""Test infrastructure with real parts: a real OCI registry on loopback, and a private
Sigstore-style instance (Fulcio-like CA, Rekor-like log key, ``trusted_root.json``).

:class:`LocalRegistry` runs Debian's ``docker-registry`` (distribution 2.8) on a free
loopback port with a temporary storage directory, optionally behind htpasswd basic auth or
token auth (a tiny token server in this process issues ES256 JWTs the registry verifies
against a CA bundle it was given). The registry process is the real one; only the token
issuer is ours, because a registry needs *some* token service.

:class:`PrivateSigstore` issues Fulcio-profile certificates and Rekor inclusion promises
(SETs) so keyless verification can be tested offline, end to end, against a trusted root
that lists only its keys.

Used by the test suites and the benchmark::

    with LocalRegistry() as reg:
        client = reg.client()
        digest = push_image(client, f"{reg.host}/acme/sampler:1.0")
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

import httpx
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samplerguard.supplychain.auth import Credentials, DockerConfig
from samplerguard.supplychain.registry import RegistryClient
from tests.support.publish import Signer, make_envelope

__all__ = ["LocalRegistry", "PrivateSigstore", "registry_binary"]

AuthMode = Literal["none", "basic", "token"]


def registry_binary() -> str | None:
    """Path of the ``docker-registry`` binary, or ``None`` (tests then skip)."""
    return shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _TokenIssuer:
    """Issues registry tokens (JWT, ES256, ``x5c`` header) to clients with the right password."""

    def __init__(self, service: str, issuer: str, username: str, password: str) -> None:
        self.service, self.issuer = service, issuer
        self.username, self.password = username, password
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sg-token-ca")])
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sg-token")]))
            .issuer_name(ca_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.ca_key, hashes.SHA256())
        )
        self.issued = 0
        self.server: ThreadingHTTPServer | None = None

    def token(self, scope: str) -> str:
        access = []
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) == 3:
                access.append({"type": parts[0], "name": parts[1], "actions": parts[2].split(",")})
        now = int(time.time())
        header = {
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": self.username,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        self.issued += 1
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def start(self) -> str:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                expected = Credentials(issuer.username, issuer.password).basic_header()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(
                    {"token": issuer.token(" ".join(query.get("scope", []))), "expires_in": 300}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class LocalRegistry:
    """A real ``docker-registry`` on ``127.0.0.1:<free port>``.

    Args:
        auth: ``none``; ``basic`` (htpasswd, bcrypt); or ``token`` (bearer challenge; the
            token service wants basic credentials).
        username/password: the credentials for ``basic`` and ``token``.
    """

    def __init__(
        self, *, auth: AuthMode = "none", username: str = "sampler", password: str | None = None
    ) -> None:
        self.auth = auth
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._issuer: _TokenIssuer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def token_issuer(self) -> _TokenIssuer | None:
        return self._issuer

    def docker_config(self) -> DockerConfig:
        return DockerConfig({self.host: Credentials(self.username, self.password)})

    def dockerconfigjson(self) -> bytes:
        """A pull secret's ``.dockerconfigjson`` for this registry."""
        auth = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return json.dumps({"auths": {self.host: {"auth": auth}}}).encode()

    def client(self, *, authenticated: bool = True, **kwargs: Any) -> RegistryClient:
        """A client that speaks plain HTTP to this registry (with credentials unless
        ``authenticated=False``)."""
        creds = self.docker_config() if authenticated and self.auth != "none" else None
        return RegistryClient(credentials=creds, plain_http=[self.host], **kwargs)

    def start(self, timeout: float = 15.0) -> LocalRegistry:
        binary = registry_binary()
        if binary is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        # tmpfs when there is one: the registry fsyncs, and disks under load make that slow.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._dir = Path(tempfile.mkdtemp(prefix="sg-registry-", dir=shm))
        self.port = _free_port()
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self._dir / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.auth == "basic":
            import bcrypt

            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (self._dir / "htpasswd").write_text(f"{self.username}:{hashed}\n")
            config["auth"] = {
                "htpasswd": {"realm": "samplerguard-test", "path": str(self._dir / "htpasswd")}
            }
        elif self.auth == "token":
            self._issuer = _TokenIssuer(
                "sg-registry", "sg-token-issuer", self.username, self.password
            )
            realm = self._issuer.start()
            bundle = self._dir / "token-ca.pem"
            bundle.write_bytes(self._issuer.ca_cert.public_bytes(serialization.Encoding.PEM))
            config["auth"] = {
                "token": {
                    "realm": realm,
                    "service": "sg-registry",
                    "issuer": "sg-token-issuer",
                    "rootcertbundle": str(bundle),
                }
            }
        (self._dir / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        log = (self._dir / "registry.log").open("wb")
        self._proc = subprocess.Popen(
            [binary, "serve", str(self._dir / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = httpx.get(f"{self.url}/v2/", timeout=1.0).status_code
                if status in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                out = (self._dir / "registry.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"docker-registry did not start: {out}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is not None:
            # The storage is thrown away: no need to wait for a graceful drain.
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
        if self._issuer is not None:
            self._issuer.stop()
            self._issuer = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a private Sigstore instance ----------------------------------------------------------------

_ISSUER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


def _der_utf8string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) < 128:
        return bytes([0x0C, len(raw)]) + raw
    n = (len(raw).bit_length() + 7) // 8
    return bytes([0x0C, 0x80 | n]) + len(raw).to_bytes(n, "big") + raw


class PrivateSigstore:
    """A Fulcio-like CA (root + intermediate) and a Rekor-like log key, with the
    ``trusted_root.json`` that trusts exactly them. No CT log: SCTs are not checked for
    roots without CT logs."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "samplerguard.test"),
                x509.NameAttribute(NameOID.COMMON_NAME, "sg-fulcio-root"),
            ]
        )
        self.root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=365))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.root_key.public_key()),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA384())
        )
        self.intermediate_key = ec.generate_private_key(ec.SECP384R1())
        inter_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "samplerguard.test"),
                x509.NameAttribute(NameOID.COMMON_NAME, "sg-fulcio-intermediate"),
            ]
        )
        self.intermediate = (
            x509.CertificateBuilder()
            .subject_name(inter_name)
            .issuer_name(root_name)
            .public_key(self.intermediate_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=365))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.intermediate_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA384())
        )
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        spki = self.rekor_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.log_id = hashlib.sha256(spki).digest()
        self._spki = spki
        self._log_index = 0

    def trusted_root_json(self) -> bytes:
        def der(cert: x509.Certificate) -> str:
            return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

        start = (datetime.now(UTC) - timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [
                {
                    "baseUrl": "https://rekor.samplerguard.test",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": {
                        "rawBytes": base64.b64encode(self._spki).decode(),
                        "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                        "validFor": {"start": start},
                    },
                    "logId": {"keyId": base64.b64encode(self.log_id).decode()},
                }
            ],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "samplerguard.test", "commonName": "sg-fulcio"},
                    "uri": "https://fulcio.samplerguard.test",
                    "certChain": {
                        "certificates": [
                            {"rawBytes": der(self.intermediate)},
                            {"rawBytes": der(self.root)},
                        ]
                    },
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [],
            "timestampAuthorities": [],
        }
        return json.dumps(doc).encode()

    def keyless_signer(
        self,
        subject: str,
        issuer: str,
        *,
        not_before: datetime | None = None,
        lifetime: timedelta = timedelta(minutes=10),
        integrated_time: datetime | None = None,
    ) -> Signer:
        """A :class:`Signer` with a fresh key, a certificate for ``subject`` (email or URI
        SAN) from ``issuer``, the chain, and a log witness that stamps entries at
        ``integrated_time`` (default: now)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.now(UTC) - timedelta(minutes=1)
        san: x509.GeneralName = (
            x509.UniformResourceIdentifier(subject)
            if "://" in subject
            else x509.RFC822Name(subject)
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()
                ),
                critical=False,
            )
            .add_extension(
                x509.UnrecognizedExtension(_ISSUER_OID, _der_utf8string(issuer)), critical=False
            )
            .sign(self.intermediate_key, hashes.SHA384())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        chain_pem = self.intermediate.public_bytes(
            serialization.Encoding.PEM
        ) + self.root.public_bytes(serialization.Encoding.PEM)
        when = integrated_time or datetime.now(UTC)

        def witness(kind: str, signature: bytes, payload: bytes) -> Mapping[str, Any]:
            return self.rekor_bundle(kind, cert_pem, signature, payload, when)

        return Signer(key, certificate_pem=cert_pem, chain_pem=chain_pem, witness=witness)

    def rekor_bundle(
        self, kind: str, cert_pem: bytes, signature: bytes, payload: bytes, when: datetime
    ) -> dict[str, Any]:
        """The ``dev.sigstore.cosign/bundle`` annotation for a log entry of ``kind``
        (``hashedrekord`` or ``intoto``), with a SET from this instance's log key."""
        payload_hash = hashlib.sha256(payload).hexdigest()
        cert_b64 = base64.b64encode(cert_pem).decode()
        if kind == "hashedrekord":
            body: dict[str, Any] = {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": payload_hash}},
                    "signature": {
                        "content": base64.b64encode(signature).decode(),
                        "publicKey": {"content": cert_b64},
                    },
                },
            }
        else:
            double = base64.b64encode(base64.b64encode(signature)).decode()
            body = {
                "apiVersion": "0.0.2",
                "kind": "intoto",
                "spec": {
                    "content": {
                        "envelope": {
                            "payloadType": "application/vnd.in-toto+json",
                            "signatures": [{"sig": double, "publicKey": cert_b64}],
                        },
                        "payloadHash": {"algorithm": "sha256", "value": payload_hash},
                    }
                },
            }
        self._log_index += 1
        entry: dict[str, Any] = {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "integratedTime": int(when.timestamp()),
            "logID": self.log_id.hex(),
            "logIndex": self._log_index,
        }
        set_sig = self.rekor_key.sign(rfc8785.dumps(entry), ec.ECDSA(hashes.SHA256()))
        return {"SignedEntryTimestamp": base64.b64encode(set_sig).decode(), "Payload": entry}

    def key_bundle(self, signer: Signer, statement: bytes) -> bytes:
        """A managed-key Sigstore bundle (v0.1: ``publicKey`` hint, inclusion promise, no
        proof) of ``statement`` in a DSSE envelope signed by ``signer``'s key, logged as an
        ``intoto`` 0.0.2 entry of this instance's log, as npm's publish attestations are."""
        envelope, [signature] = make_envelope(statement, [signer])
        promised = self.rekor_bundle(
            "intoto", signer.public_pem.encode(), signature, statement, datetime.now(UTC)
        )
        entry = promised["Payload"]
        bundle = {
            "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1",
            "verificationMaterial": {
                "publicKey": {"hint": "samplerguard-test"},
                "tlogEntries": [
                    {
                        "logIndex": str(entry["logIndex"]),
                        "logId": {"keyId": base64.b64encode(self.log_id).decode()},
                        "kindVersion": {"kind": "intoto", "version": "0.0.2"},
                        "integratedTime": str(entry["integratedTime"]),
                        "inclusionPromise": {
                            "signedEntryTimestamp": promised["SignedEntryTimestamp"]
                        },
                        "canonicalizedBody": entry["body"],
                    }
                ],
            },
            "dsseEnvelope": json.loads(envelope),
        }
        return json.dumps(bundle).encode()
