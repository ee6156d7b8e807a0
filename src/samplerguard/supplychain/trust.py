"""Trusted roots (Sigstore ``trusted_root.json``): Fulcio CAs, Rekor keys, CT logs, TSAs.

Verification is offline: roots come from files (or ConfigMap keys, mounted as files) and
nothing is fetched. A policy's keyless authority names its root with ``trustedRoot``; unset
means the default root given to :class:`TrustedRoots` (usually the public-good production
root shipped with sigstore-python).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from samplerguard.errors import MalformedInputError, PolicyError

__all__ = ["MAX_TRUSTED_ROOT_BYTES", "TrustedRoots", "load_trusted_root"]

MAX_TRUSTED_ROOT_BYTES = 1 << 20

# sigstore.models.TrustedRoot; typed as object to keep sigstore's import lazy and untyped.
_TrustedRoot = object


def load_trusted_root(source: str | Path | bytes) -> _TrustedRoot:
    """Parse a ``trusted_root.json`` from a path or its bytes; :class:`MalformedInputError`
    when it is missing, oversized or not a trusted root."""
    from sigstore.models import TrustedRoot
    from sigstore_models.trustroot import v1 as trustroot_v1

    if isinstance(source, bytes):
        raw, where = source, "trusted root"
    else:
        where = f"trusted root {str(source)[:200]!r}"
        try:
            path = Path(source)
            if path.stat().st_size > MAX_TRUSTED_ROOT_BYTES:
                raise MalformedInputError(f"{where} is larger than {MAX_TRUSTED_ROOT_BYTES} bytes")
            raw = path.read_bytes()
        except OSError as exc:
            raise MalformedInputError(f"{where} cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_TRUSTED_ROOT_BYTES:
        raise MalformedInputError(f"{where} is larger than {MAX_TRUSTED_ROOT_BYTES} bytes")
    try:
        return TrustedRoot(trustroot_v1.TrustedRoot.from_json(raw))
    except Exception as exc:  # sigstore raises several unrelated types for bad input
        raise MalformedInputError(f"{where} is not a valid trusted root: {exc}") from None


class TrustedRoots:
    """Named trusted roots, loaded once and shared (parsing a root costs milliseconds).

    Args:
        default: the root for keyless authorities that name none. ``None``: such authorities
            use sigstore-python's embedded production root (loaded offline on first use).
        named: roots by the name a policy's ``trustedRoot`` uses (a ConfigMap key).
        allow_paths: whether a ``trustedRoot`` that is not a known name may be read as a
            file path (local mode and the CLI; off in the webhook).
    """

    def __init__(
        self,
        default: _TrustedRoot | None = None,
        named: Mapping[str, _TrustedRoot] | None = None,
        *,
        allow_paths: bool = False,
    ) -> None:
        self._default = default
        self._named = dict(named or {})
        self._allow_paths = allow_paths
        self._lock = threading.Lock()

    @classmethod
    def from_files(
        cls,
        default: str | Path | None = None,
        named: Mapping[str, str | Path] | None = None,
        *,
        allow_paths: bool = False,
    ) -> TrustedRoots:
        return cls(
            load_trusted_root(default) if default is not None else None,
            {k: load_trusted_root(v) for k, v in (named or {}).items()},
            allow_paths=allow_paths,
        )

    def get(self, name: str | None) -> _TrustedRoot:
        """The root for a policy's ``trustedRoot`` value; :class:`PolicyError` if unknown."""
        with self._lock:
            if name is None:
                if self._default is None:
                    self._default = _embedded_production_root()
                return self._default
            if name in self._named:
                return self._named[name]
            if self._allow_paths and Path(name).is_file():
                root = load_trusted_root(name)
                self._named[name] = root
                return root
        raise PolicyError(f"trusted root {name!r} is not configured")


def _embedded_production_root() -> _TrustedRoot:
    try:
        from sigstore.models import ClientTrustConfig

        return ClientTrustConfig.production(offline=True).trusted_root
    except Exception as exc:
        raise PolicyError(
            f"no default trusted root configured and the embedded one cannot load: {exc}"
        ) from None
