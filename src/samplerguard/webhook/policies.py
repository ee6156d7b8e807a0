"""Where the webhook's policies come from: the :class:`PolicySource` interface.

A source hands out immutable :class:`PolicySnapshot` objects; a request reads one snapshot from
start to finish, so a policy update never tears a decision in half. Two sources exist:

* :class:`FilePolicySource` (local mode and tests): YAML/JSON files, re-read when they change;
* :class:`~samplerguard.webhook.kube.KubernetesPolicySource` (in a cluster): a list+watch on
  ``ClusterSamplerPolicy`` and ``SamplerPolicy`` through the API server.

Every policy in a snapshot has a ``uid`` and a ``resourceVersion``, the verdict cache's key.
File policies that name neither get a uid derived from their identity and a resourceVersion
derived from their content, so editing a file invalidates its cached verdicts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from samplerguard.errors import PolicyError
from samplerguard.policy import ClusterSamplerPolicy, SamplerPolicy, parse_policy
from samplerguard.policy.load import read_documents

__all__ = [
    "AnyPolicy",
    "FilePolicySource",
    "PolicySnapshot",
    "PolicySource",
    "StaticPolicySource",
    "policy_name",
    "spec_version",
    "with_identity",
]

log = logging.getLogger(__name__)

AnyPolicy = ClusterSamplerPolicy | SamplerPolicy

MAX_POLICY_FILES = 256
MAX_POLICIES = 1024


def policy_name(policy: AnyPolicy) -> str:
    """How denials and the sidecar name a policy: ``ClusterSamplerPolicy/x`` or
    ``SamplerPolicy/ns/x``."""
    if isinstance(policy, SamplerPolicy):
        return f"SamplerPolicy/{policy.metadata.namespace}/{policy.metadata.name}"
    return f"ClusterSamplerPolicy/{policy.metadata.name}"


def spec_version(policy: AnyPolicy) -> str:
    """The version of the policy's *spec*, for cache keys.

    In a cluster this is ``metadata.generation``: with the status subresource the API server
    bumps it on spec changes only, whereas ``resourceVersion`` also moves on every status
    write by the operator, which would throw cached verdicts away for nothing. Policies
    without a generation (files) use their content-derived resourceVersion."""
    meta = policy.metadata
    return f"generation-{meta.generation}" if meta.generation else meta.resource_version


def with_identity(policy: AnyPolicy, origin: str) -> AnyPolicy:
    """Fill in a missing uid (from kind, namespace, name and ``origin``) and resourceVersion
    (from the spec's content)."""
    meta = policy.metadata
    update: dict[str, str] = {}
    if not meta.uid:
        ident = f"{origin}|{policy.kind}|{meta.namespace or ''}|{meta.name}"
        update["uid"] = "local-" + hashlib.sha256(ident.encode()).hexdigest()[:32]
    if not meta.resource_version:
        body = json.dumps(policy.spec.to_wire(), sort_keys=True, separators=(",", ":"))
        update["resource_version"] = "sha256-" + hashlib.sha256(body.encode()).hexdigest()[:32]
    if not update:
        return policy
    return policy.model_copy(update={"metadata": meta.model_copy(update=update)})


@dataclass(frozen=True)
class PolicySnapshot:
    """The policies in force at one moment."""

    policies: tuple[AnyPolicy, ...] = ()
    #: Increases with every change the source sees.
    generation: int = 0

    def for_namespace(
        self, namespace: str, namespace_labels: Mapping[str, str] | None
    ) -> list[AnyPolicy]:
        """The policies governing ``namespace``: its own SamplerPolicies and every
        ClusterSamplerPolicy whose namespaceSelector matches. Labels ``None`` (unknown) make
        every selector match: failing closed means more policies apply, never fewer."""
        chosen: list[AnyPolicy] = []
        for policy in self.policies:
            if isinstance(policy, SamplerPolicy):
                if policy.metadata.namespace == namespace:
                    chosen.append(policy)
                continue
            selector = policy.spec.namespace_selector
            if (
                selector is None
                or namespace_labels is None
                or selector.matches(dict(namespace_labels))
            ):
                chosen.append(policy)
        # Namespaced policies first: the most specific policy names the pod's policy.
        chosen.sort(key=lambda p: 0 if isinstance(p, SamplerPolicy) else 1)
        return chosen


class PolicySource(Protocol):
    """Hands out the current policies. ``start``/``stop`` run its background refresh."""

    def snapshot(self) -> PolicySnapshot: ...

    @property
    def ready(self) -> bool:
        """True once the first complete set of policies has been loaded."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class StaticPolicySource:
    """A fixed set of policies (tests, embedding)."""

    def __init__(self, policies: Iterable[AnyPolicy]) -> None:
        loaded = tuple(with_identity(p, "static") for p in policies)
        self._snapshot = PolicySnapshot(loaded, 1)

    def snapshot(self) -> PolicySnapshot:
        return self._snapshot

    @property
    def ready(self) -> bool:
        return True

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


def _policy_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PolicyError(f"policy path {path} is neither a file nor a directory")
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".json"}
    )
    if len(files) > MAX_POLICY_FILES:
        raise PolicyError(f"{path} holds {len(files)} policy files, more than {MAX_POLICY_FILES}")
    return files


def load_policy_files(path: Path) -> tuple[AnyPolicy, ...]:
    """Every samplerguard policy in ``path`` (a file, or a directory searched recursively).

    Documents of other kinds are skipped, so a directory may hold whole manifests. Raises
    :class:`PolicyError` naming the file for anything unreadable or invalid.
    """
    policies: list[AnyPolicy] = []
    for file in _policy_files(path):
        for doc in read_documents(file):
            if not isinstance(doc, dict):
                raise PolicyError(f"{file}: a document is a {type(doc).__name__}, not a mapping")
            if doc.get("kind") not in ("ClusterSamplerPolicy", "SamplerPolicy"):
                continue
            try:
                policy = parse_policy(doc)
            except PolicyError as exc:
                raise PolicyError(f"{file}: {exc}") from None
            if isinstance(policy, SamplerPolicy) and not policy.metadata.namespace:
                raise PolicyError(
                    f"{file}: SamplerPolicy {policy.metadata.name!r} needs a namespace"
                )
            policies.append(with_identity(policy, str(file.resolve())))
    if len(policies) > MAX_POLICIES:
        raise PolicyError(f"{path} holds {len(policies)} policies, more than {MAX_POLICIES}")
    seen: set[str] = set()
    for policy in policies:
        name = policy_name(policy)
        if name in seen:
            raise PolicyError(f"{path}: {name} is defined twice")
        seen.add(name)
    return tuple(policies)


class FilePolicySource:
    """Policies from a file or directory, re-read when any file changes.

    The first load must succeed (:class:`PolicyError` otherwise). A later change that does not
    load leaves the last good set in force and is logged: a typo must not switch enforcement
    off.
    """

    def __init__(self, path: str | Path, *, interval: float = 1.0) -> None:
        self._path = Path(path)
        self._interval = interval
        self._stamp = self._fingerprint()
        self._snapshot = PolicySnapshot(load_policy_files(self._path), 1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        try:
            files = _policy_files(self._path)
            return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        except (OSError, PolicyError):
            return ()

    def snapshot(self) -> PolicySnapshot:
        return self._snapshot

    @property
    def ready(self) -> bool:
        return True

    def refresh(self) -> bool:
        """Re-read the files if they changed. True if a new snapshot is in force."""
        stamp = self._fingerprint()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            policies = load_policy_files(self._path)
        except PolicyError as exc:
            self.last_error = str(exc)
            log.error("policy files changed but do not load; keeping the previous set: %s", exc)
            return False
        self.last_error = None
        self._snapshot = PolicySnapshot(policies, self._snapshot.generation + 1)
        log.info("policies reloaded from %s: %d in force", self._path, len(policies))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception:  # the watcher must outlive any surprise
                log.exception("policy refresh failed")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="samplerguard-policy-files", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
