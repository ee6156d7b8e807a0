"""Reading policy files, and the one policy a data-plane service runs under.

:func:`read_documents` is how every policy file is read (the webhook's policy directory, the
data plane's one policy, ``verify-image`` and ``adapt-policy``): at most
:data:`MAX_POLICY_BYTES`, UTF-8 YAML or JSON, empty documents dropped, a kubectl ``List``
expanded into its items.

The sidecar and the verifier are each told one policy (``SAMPLERGUARD_POLICY``, set by the
webhook; or ``--policy``):

* a path to a YAML/JSON file holding one ``ClusterSamplerPolicy`` or ``SamplerPolicy``;
* ``ClusterSamplerPolicy/<name>`` or ``SamplerPolicy/<namespace>/<name>``, read through the
  Kubernetes API (in-cluster configuration).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from samplerguard.errors import MalformedInputError, PolicyError
from samplerguard.kubeapi import KubeApiError, NotFound, Unavailable, kube_call
from samplerguard.policy.spec import (
    GROUP,
    VERSION,
    ClusterSamplerPolicy,
    SamplerPolicy,
    parse_policy,
)

__all__ = ["MAX_POLICY_BYTES", "load_policy", "read_documents", "report_policy_name"]

#: The largest policy (or manifest) file read.
MAX_POLICY_BYTES = 1 << 20


def read_documents(
    path: Path,
    *,
    what: str = "policy file",
    error: type[MalformedInputError] = PolicyError,
) -> list[Any]:
    """The documents of one YAML/JSON file: at most :data:`MAX_POLICY_BYTES`, empty documents
    dropped, the items of a kubectl ``List`` in its place. Raises ``error`` (a
    :class:`PolicyError` unless told otherwise) naming ``what`` and the file."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise error(f"{what} {path} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        docs = [d for d in yaml.safe_load_all(raw.decode("utf-8")) if d is not None]
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not YAML: {exc}") from None
    out: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise error(f"{what} {path}: a List's items are not a list")
            out += [item for item in items if item is not None]
        else:
            out.append(doc)
    return out


def report_policy_name(policy: ClusterSamplerPolicy | SamplerPolicy) -> str:
    """The ``policy`` field of a PolicyReport result: ``name`` or ``namespace/name``."""
    if isinstance(policy, SamplerPolicy):
        return f"{policy.metadata.namespace}/{policy.metadata.name}"
    return policy.metadata.name


def load_policy(ref: str, *, api: Any = None) -> ClusterSamplerPolicy | SamplerPolicy:
    """Raises :class:`PolicyError` (invalid, missing or forbidden) or
    :class:`~samplerguard.errors.TemporaryError` (API server away)."""
    parts = ref.split("/")
    if parts[0] in ("ClusterSamplerPolicy", "SamplerPolicy") and not Path(ref).exists():
        return _from_api(parts, api)
    path = Path(ref)
    docs = read_documents(path)
    if len(docs) != 1:
        raise PolicyError(f"policy file {path} holds {len(docs)} documents, expected one policy")
    return parse_policy(docs[0])


def _from_api(parts: list[str], api: Any) -> ClusterSamplerPolicy | SamplerPolicy:
    from kubernetes import client, config

    if api is None:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = client.CustomObjectsApi()
    ref = "/".join(parts)
    try:
        with kube_call(f"read policy {ref}"):
            if parts[0] == "ClusterSamplerPolicy" and len(parts) == 2:
                body = api.get_cluster_custom_object(
                    GROUP, VERSION, "clustersamplerpolicies", parts[1]
                )
            elif parts[0] == "SamplerPolicy" and len(parts) == 3:
                body = api.get_namespaced_custom_object(
                    GROUP, VERSION, parts[1], "samplerpolicies", parts[2]
                )
            else:
                raise PolicyError(
                    f"policy reference {ref!r} is not ClusterSamplerPolicy/<name> "
                    "or SamplerPolicy/<namespace>/<name>"
                )
    except NotFound:
        raise PolicyError(f"policy {ref} does not exist") from None
    except Unavailable:
        raise  # a TemporaryError: the API server may answer on a retry
    except KubeApiError as exc:  # forbidden or refused: no retry makes this policy readable
        raise PolicyError(f"policy {ref} cannot be read: {exc}") from None
    return parse_policy(body)
