"""Who is opted in, and who is never touched.

An AdmissionReview carries no namespace labels. In a cluster the webhook configuration does
the opt-in: one webhook entry selects namespaces labelled ``samplerguard.dev/enforce=true``
(``namespaceSelector``), a second selects pods labelled ``samplerguard.dev/inject=true``
(``objectSelector``) in other namespaces, and both exclude kube-system and samplerguard's own
namespace by ``kubernetes.io/metadata.name``. The webhook then double-checks:

* exempt namespaces are always admitted untouched, whatever the configuration sent;
* with API access it looks the namespace's labels up (:class:`NamespaceLabels`, cached), so a
  misconfigured selector cannot opt a namespace in, and ClusterSamplerPolicy
  ``namespaceSelector``\\ s can be evaluated;
* without an answer (no API access, lookup failed) the request is treated as opted in and every
  ClusterSamplerPolicy applies: the webhook was asked, and asking is the configuration's
  opt-in. Failing closed means checking more, never less.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from samplerguard.webhook.config import LABEL_ENFORCE, LABEL_INJECT

__all__ = ["NamespaceLabels", "StaticNamespaceLabels", "opted_in"]


class NamespaceLabels(Protocol):
    async def labels(self, namespace: str) -> Mapping[str, str] | None:
        """The namespace's labels, or None when they cannot be known."""
        ...


class StaticNamespaceLabels:
    """Fixed labels per namespace (local mode, tests). An unknown namespace has no labels."""

    def __init__(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        self._labels = {ns: dict(v) for ns, v in labels.items()}

    async def labels(self, namespace: str) -> Mapping[str, str] | None:
        return self._labels.get(namespace, {})


def opted_in(
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str] | None,
    enforce_label: str = LABEL_ENFORCE,
) -> bool:
    """The pod label ``samplerguard.dev/inject=true``, or its namespace labelled
    ``<enforce_label>=true`` (the chart's ``optInLabel``, which also selects the namespaces the
    API server sends)."""
    if pod_labels.get(LABEL_INJECT) == "true" or namespace_labels is None:
        return True
    return namespace_labels.get(enforce_label) == "true"
