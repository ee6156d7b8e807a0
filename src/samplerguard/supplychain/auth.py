"""Registry credentials: pull secrets (``.dockerconfigjson``) and ``WWW-Authenticate`` challenges.

Secrets never reach a log or an exception message: :class:`Credentials` hides its password
from ``repr`` and errors name only the registry.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from samplerguard.errors import MalformedInputError

__all__ = ["Challenge", "Credentials", "DockerConfig", "parse_challenge"]

MAX_DOCKERCONFIG_BYTES = 1 << 20

_HUB_ALIASES = (
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
    "https://index.docker.io/v1/",
)


@dataclass(frozen=True)
class Credentials:
    """A username and password (or identity token) for one registry."""

    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _host_of(key: str) -> str:
    """``https://reg.example.com/v1/`` → ``reg.example.com``; ``reg:5000`` stays as is."""
    key = key.strip()
    key = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", key)
    host = key.split("/", 1)[0].lower()
    return "index.docker.io" if host in ("docker.io", "registry-1.docker.io") else host


class DockerConfig:
    """The ``auths`` of a ``~/.docker/config.json`` or a ``kubernetes.io/dockerconfigjson``
    secret. Several configs (one per pull secret) merge with :meth:`merged`, first one wins."""

    def __init__(self, auths: Mapping[str, Credentials] | None = None) -> None:
        self._auths: dict[str, Credentials] = {}
        for key, creds in (auths or {}).items():
            self._auths.setdefault(_host_of(key), creds)

    def __repr__(self) -> str:
        return f"DockerConfig(registries={sorted(self._auths)})"

    def __len__(self) -> int:
        return len(self._auths)

    @classmethod
    def from_dockerconfigjson(cls, raw: bytes | str) -> DockerConfig:
        """Parse a ``.dockerconfigjson`` (bytes as stored in the Secret's data, base64-decoded).

        Each entry carries ``auth`` (base64 ``user:password``) or ``username``/``password``;
        ``identitytoken`` is used as the password with the username ``<token>``, as docker does.
        """
        if isinstance(raw, str):
            raw = raw.encode()
        if len(raw) > MAX_DOCKERCONFIG_BYTES:
            raise MalformedInputError(
                f"dockerconfigjson is {len(raw)} bytes (at most {MAX_DOCKERCONFIG_BYTES})"
            )
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedInputError(f"dockerconfigjson is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise MalformedInputError("dockerconfigjson must be a JSON object")
        auths = doc.get("auths", {})
        if not isinstance(auths, dict):
            raise MalformedInputError("dockerconfigjson 'auths' must be an object")
        out: dict[str, Credentials] = {}
        for key, entry in auths.items():
            if not isinstance(entry, dict):
                raise MalformedInputError(f"dockerconfigjson entry for {key!r} is not an object")
            out[key] = _entry_credentials(key, entry)
        return cls(out)

    @classmethod
    def merged(cls, configs: Iterable[DockerConfig]) -> DockerConfig:
        out = cls()
        for config in configs:
            for host, creds in config._auths.items():
                out._auths.setdefault(host, creds)
        return out

    def credentials_for(self, registry: str) -> Credentials | None:
        host = _host_of(registry)
        if host in self._auths:
            return self._auths[host]
        if host == "index.docker.io":
            for alias in _HUB_ALIASES:
                if _host_of(alias) in self._auths:
                    return self._auths[_host_of(alias)]
        return None


def _entry_credentials(key: str, entry: dict[str, object]) -> Credentials:
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    user = entry.get("username")
    password = entry.get("password")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise MalformedInputError(
                f"dockerconfigjson 'auth' for {key!r} is not base64 of user:password"
            ) from None
        if ":" not in decoded:
            raise MalformedInputError(
                f"dockerconfigjson 'auth' for {key!r} is not base64 of user:password"
            )
        user, password = decoded.split(":", 1)
    if isinstance(token, str) and token:
        return Credentials(user if isinstance(user, str) and user else "<token>", token)
    if isinstance(user, str) and isinstance(password, str):
        return Credentials(user, password)
    raise MalformedInputError(f"dockerconfigjson entry for {key!r} has no usable credentials")


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: scheme ``basic`` or ``bearer`` and its params."""

    scheme: str
    params: Mapping[str, str]


_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``Bearer realm="…",service="…",scope="…"`` or ``Basic realm="…"``."""
    header = header.strip()
    if not header or len(header) > 4096:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3) or ""
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return Challenge(scheme.lower(), params)
