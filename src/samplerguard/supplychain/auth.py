"""Registry credentials: pull secrets (``.dockerconfigjson``), docker's credential helpers, and
``WWW-Authenticate`` challenges.

Secrets never reach a log or an exception message: :class:`Credentials` hides its password
from ``repr`` and errors name only the registry.

A ``~/.docker/config.json`` may name credential helpers (``credHelpers`` per registry,
``credsStore`` for the rest); docker asks them before ``auths``, and so does
:meth:`DockerConfig.credentials_for` when the config was read with ``helpers=True``. Helpers
are programs, so only a config the operator chose (``verify-image --docker-config``) may run
them; a pull secret never does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from samplerguard.errors import MalformedInputError, TemporaryError

__all__ = ["Challenge", "Credentials", "DockerConfig", "parse_challenge"]

MAX_DOCKERCONFIG_BYTES = 1 << 20
HELPER_TIMEOUT = 10.0
_HELPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

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

    def __init__(
        self,
        auths: Mapping[str, Credentials] | None = None,
        *,
        cred_helpers: Mapping[str, str] | None = None,
        creds_store: str | None = None,
    ) -> None:
        self._auths: dict[str, Credentials] = {}
        for key, creds in (auths or {}).items():
            self._auths.setdefault(_host_of(key), creds)
        self._helpers = {_host_of(k): v for k, v in (cred_helpers or {}).items()}
        self._store = creds_store
        self._asked: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        helpers = sorted({*self._helpers.values(), *([self._store] if self._store else [])})
        return f"DockerConfig(registries={sorted(self._auths)}, helpers={helpers})"

    def __len__(self) -> int:
        return len(self._auths) + len(self._helpers) + (self._store is not None)

    @property
    def sources(self) -> list[str]:
        """Where credentials may come from, for messages: registries and helper names."""
        out = [f"auths[{h}]" for h in sorted(self._auths)]
        out += [f"credHelpers[{h}]=docker-credential-{v}" for h, v in sorted(self._helpers.items())]
        if self._store:
            out.append(f"credsStore=docker-credential-{self._store}")
        return out

    @classmethod
    def from_dockerconfigjson(cls, raw: bytes | str, *, helpers: bool = False) -> DockerConfig:
        """Parse a ``.dockerconfigjson`` (bytes as stored in the Secret's data, base64-decoded).

        Each entry carries ``auth`` (base64 ``user:password``) or ``username``/``password``;
        ``identitytoken`` is used as the password with the username ``<token>``, as docker does.
        With ``helpers``, ``credHelpers`` and ``credsStore`` are honoured as docker does
        (before ``auths``); without, they are ignored.
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
        if not helpers:
            return cls(out)
        cred_helpers = doc.get("credHelpers", {})
        store = doc.get("credsStore")
        if not isinstance(cred_helpers, dict) or not all(
            isinstance(v, str) and _HELPER_NAME.match(v) for v in cred_helpers.values()
        ):
            raise MalformedInputError("docker config 'credHelpers' must map registries to names")
        if store is not None and not (isinstance(store, str) and _HELPER_NAME.match(store)):
            raise MalformedInputError("docker config 'credsStore' must be a helper name")
        for host, name in [*cred_helpers.items(), *([("*", store)] if store else [])]:
            if shutil.which(f"docker-credential-{name}") is None:
                raise MalformedInputError(
                    f"credential helper docker-credential-{name} (for {host}) is not on PATH"
                )
        return cls(out, cred_helpers=cred_helpers, creds_store=store or None)

    @classmethod
    def merged(cls, configs: Iterable[DockerConfig]) -> DockerConfig:
        out = cls()
        for config in configs:
            for host, creds in config._auths.items():
                out._auths.setdefault(host, creds)
        return out

    def credentials_for(self, registry: str) -> Credentials | None:
        host = _host_of(registry)
        helper = self._helpers.get(host) or self._store
        if helper is not None:
            with self._lock:
                if host in self._asked:
                    return self._asked[host]
            found = _ask_helper(helper, host)
            with self._lock:
                self._asked[host] = found
            if found is not None or host in self._helpers:
                return found
        if host in self._auths:
            return self._auths[host]
        if host == "index.docker.io":
            for alias in _HUB_ALIASES:
                if _host_of(alias) in self._auths:
                    return self._auths[_host_of(alias)]
        return None


def _ask_helper(helper: str, host: str) -> Credentials | None:
    """``docker-credential-<helper> get`` with the server on stdin, as docker runs it. A helper
    that knows no credentials for ``host`` answers None; one that cannot run is an error
    that names it (never its output, which may hold a secret)."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise MalformedInputError(
            f"credential helper docker-credential-{helper} (for {host}) is not on PATH"
        )
    try:
        done = subprocess.run(  # the helper docker itself would run
            [program, "get"],
            # docker keys Docker Hub by its v1 URL, everything else by host[:port]
            input=(_HUB_ALIASES[3] if host == "index.docker.io" else host).encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TemporaryError(
            f"credential helper docker-credential-{helper} (for {host}) timed out"
        ) from None
    except OSError as exc:
        raise MalformedInputError(
            f"credential helper docker-credential-{helper} cannot run: {exc.strerror}"
        ) from None
    if done.returncode != 0:
        if b"credentials not found" in done.stdout + done.stderr:
            return None
        raise MalformedInputError(
            f"credential helper docker-credential-{helper} failed for {host} "
            f"(exit {done.returncode})"
        )
    try:
        doc = json.loads(done.stdout)
        user, secret = doc["Username"], doc["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise MalformedInputError(
            f"credential helper docker-credential-{helper} answered no Username/Secret for {host}"
        ) from None
    return Credentials(user or "<token>", secret)


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
