"""Find the pod spec inside an admitted object, with the JSON pointers a patch needs.

Pods carry it at ``/spec``; Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
ReplicationControllers at ``/spec/template/spec``; CronJobs one level deeper. The object stays
plain JSON (the API server's exact body), and this module checks the shape of only what
samplerguard reads: a malformed spec raises :class:`MalformedInputError`, which the webhook
answers with a clean denial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from samplerguard.errors import MalformedInputError

__all__ = [
    "CONTAINER_LISTS",
    "MAX_CONTAINERS",
    "ContainerRef",
    "PodTemplate",
    "escape_pointer",
    "find_pod_template",
    "handles",
]

ContainerList = Literal["initContainers", "containers", "ephemeralContainers"]
CONTAINER_LISTS: tuple[ContainerList, ...] = ("initContainers", "containers", "ephemeralContainers")
#: Far above anything real; bounds the work one request can cause.
MAX_CONTAINERS = 64
_MAX_IMAGE = 1024
#: Printable, no whitespace: what an image reference can be before the reference grammar.
_IMAGE_CHARS = re.compile(r"^[\x21-\x7e]+$")

_TEMPLATE = ("spec", "template")
#: (API group, kind) → path of the object holding ``metadata`` and ``spec`` of the pod.
_POD_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): (),
    ("", "ReplicationController"): _TEMPLATE,
    ("apps", "Deployment"): _TEMPLATE,
    ("apps", "StatefulSet"): _TEMPLATE,
    ("apps", "DaemonSet"): _TEMPLATE,
    ("apps", "ReplicaSet"): _TEMPLATE,
    ("batch", "Job"): _TEMPLATE,
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}


def handles(group: str, kind: str) -> bool:
    """Whether objects of this kind carry a pod spec samplerguard checks."""
    return (group, kind) in _POD_PATHS


def escape_pointer(token: str) -> str:
    """RFC 6901 escaping of one reference token."""
    return token.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class ContainerRef:
    list_name: ContainerList
    index: int
    name: str
    image: str
    #: JSON pointer to the container object.
    pointer: str


@dataclass(frozen=True)
class PodTemplate:
    kind: str
    #: JSON pointer to the object holding the pod's ``metadata`` and ``spec`` ("" for a Pod).
    pointer: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    containers: tuple[ContainerRef, ...]
    has_metadata: bool = True

    @property
    def is_pod(self) -> bool:
        return self.kind == "Pod"

    @property
    def spec_pointer(self) -> str:
        return f"{self.pointer}/spec"

    @property
    def metadata_pointer(self) -> str:
        return f"{self.pointer}/metadata"

    def images(self) -> list[str]:
        """Distinct images in first-seen order."""
        return list(dict.fromkeys(c.image for c in self.containers))


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedInputError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    mapping = _mapping(value, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise MalformedInputError(f"{where} must map strings to strings")
    return mapping


def find_pod_template(group: str, kind: str, obj: object) -> PodTemplate:
    """The pod template of ``obj`` (of API group ``group`` and ``kind``).

    Raises :class:`MalformedInputError` if the kind is not one samplerguard handles or the
    object's pod spec does not have the shape Kubernetes gives it.
    """
    path = _POD_PATHS.get((group, kind))
    if path is None:
        raise MalformedInputError(
            f"kind {group or 'core'}/{kind} carries no pod spec samplerguard checks "
            "(expected Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob "
            "or ReplicationController)"
        )
    node = _mapping(obj, "object")
    where = "object"
    for step in path:
        where = f"{where}.{step}"
        node = _mapping(node.get(step), where)
    raw_metadata = node.get("metadata")
    metadata = {} if raw_metadata is None else _mapping(raw_metadata, f"{where}.metadata")
    spec = _mapping(node.get("spec"), f"{where}.spec")
    pointer = "".join(f"/{step}" for step in path)

    refs: list[ContainerRef] = []
    for list_name in CONTAINER_LISTS:
        items = spec.get(list_name)
        if items is None:
            continue
        if not isinstance(items, list):
            raise MalformedInputError(f"{where}.spec.{list_name} must be a list")
        if len(refs) + len(items) > MAX_CONTAINERS:
            raise MalformedInputError(
                f"the pod has more than {MAX_CONTAINERS} containers; samplerguard refuses to "
                "check it"
            )
        for index, item in enumerate(items):
            at = f"{where}.spec.{list_name}[{index}]"
            container = _mapping(item, at)
            name, image = container.get("name"), container.get("image")
            if not isinstance(name, str) or not name:
                raise MalformedInputError(f"{at}.name must be a non-empty string")
            if not isinstance(image, str) or not image:
                raise MalformedInputError(f"{at}.image must be a non-empty string")
            if len(image) > _MAX_IMAGE or not _IMAGE_CHARS.match(image):
                raise MalformedInputError(
                    f"{at}.image is not an image reference (printable ASCII without spaces, "
                    f"at most {_MAX_IMAGE} characters)"
                )
            refs.append(
                ContainerRef(
                    list_name=list_name,
                    index=index,
                    name=name,
                    image=image,
                    pointer=f"{pointer}/spec/{list_name}/{index}",
                )
            )
    volumes = spec.get("volumes")
    if volumes is not None and not (
        isinstance(volumes, list) and all(isinstance(v, dict) for v in volumes)
    ):
        # the injection checks them (a hostPath reaches the sidecar's files): a shape
        # Kubernetes never gives them is refused here, not tripped over there
        raise MalformedInputError(f"{where}.spec.volumes must be a list of objects")
    if not any(ref.list_name == "containers" for ref in refs):
        # Kubernetes requires one; a pod spec without any would be admitted with nothing
        # checked (the API server refuses it later, after the webhook said yes)
        raise MalformedInputError(f"{where}.spec.containers must list at least one container")
    return PodTemplate(
        kind=kind,
        pointer=pointer,
        labels=_string_map(metadata.get("labels"), f"{where}.metadata.labels"),
        annotations=_string_map(metadata.get("annotations"), f"{where}.metadata.annotations"),
        spec=spec,
        containers=tuple(refs),
        has_metadata=raw_metadata is not None,
    )
