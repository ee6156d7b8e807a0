"""AdmissionReview ``admission.k8s.io/v1``: the typed wire format of both endpoints.

The models follow ``k8s.io/api/admission/v1`` field for field. Unknown fields are ignored (the
API server may add some), but every field samplerguard reads is typed and bounded, so a body
that does not parse is answered with HTTP 400 before any policy code runs.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from samplerguard.webhook.patch import patch_json

__all__ = [
    "API_VERSION",
    "AdmissionRequest",
    "AdmissionResponse",
    "AdmissionReview",
    "GroupVersionKind",
    "GroupVersionResource",
    "ResponseStatus",
    "UserInfo",
    "allow",
    "deny",
]

API_VERSION: Literal["admission.k8s.io/v1"] = "admission.k8s.io/v1"

#: A Kubernetes UID is a UUID; 128 characters leaves room for anything the API server sends.
Uid = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
Name = Annotated[str, StringConstraints(max_length=253)]
Short = Annotated[str, StringConstraints(max_length=256)]

#: The API server truncates longer warnings; keep every warning short and printable.
WARNING_MAX_CHARS = 256
WARNINGS_MAX = 16


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class GroupVersionKind(_Wire):
    group: Short = ""
    version: Short
    kind: Short


class GroupVersionResource(_Wire):
    group: Short = ""
    version: Short
    resource: Short


class UserInfo(_Wire):
    username: Short = ""
    uid: Short = ""
    groups: Annotated[list[Short], Field(max_length=256)] = []


class AdmissionRequest(_Wire):
    uid: Uid
    kind: GroupVersionKind
    resource: GroupVersionResource
    sub_resource: Short = ""
    request_kind: GroupVersionKind | None = None
    request_resource: GroupVersionResource | None = None
    request_sub_resource: Short = ""
    name: Name = ""
    namespace: Name = ""
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    user_info: UserInfo = UserInfo()
    #: The object as it will be stored (CREATE/UPDATE); kept as JSON so patches can address it.
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    dry_run: bool = False


class ResponseStatus(_Wire):
    """The ``metav1.Status`` the API server shows the user on a denial."""

    code: int
    message: str
    reason: str = ""


class AdmissionResponse(_Wire):
    uid: Uid
    allowed: bool
    status: ResponseStatus | None = None
    patch: str | None = None
    patch_type: Literal["JSONPatch"] | None = None
    warnings: list[str] | None = None
    #: Recorded in the API server's audit log, keyed ``<webhook name>/<key>``.
    audit_annotations: dict[str, str] | None = None


class AdmissionReview(_Wire):
    api_version: Literal["admission.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest | None = None
    response: AdmissionResponse | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


def _clip(text: str, limit: int) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def allow(
    uid: str,
    *,
    patch: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
    audit: dict[str, str] | None = None,
) -> AdmissionReview:
    """An admitting answer; ``patch`` is a JSONPatch (RFC 6902) list, sent base64-encoded."""
    return AdmissionReview(
        apiVersion=API_VERSION,
        kind="AdmissionReview",
        response=AdmissionResponse(
            uid=uid,
            allowed=True,
            patch=base64.b64encode(patch_json(patch).encode()).decode() if patch else None,
            patch_type="JSONPatch" if patch else None,
            warnings=[_clip(w, WARNING_MAX_CHARS) for w in warnings[:WARNINGS_MAX]]
            if warnings
            else None,
            audit_annotations=audit or None,
        ),
    )


def deny(
    uid: str,
    message: str,
    *,
    code: int = 403,
    reason: str = "Forbidden",
    warnings: list[str] | None = None,
) -> AdmissionReview:
    """A denial whose message the user sees verbatim in ``kubectl``'s error."""
    return AdmissionReview(
        apiVersion=API_VERSION,
        kind="AdmissionReview",
        response=AdmissionResponse(
            uid=uid,
            allowed=False,
            status=ResponseStatus(code=code, message=_clip(message, 4096), reason=reason),
            warnings=[_clip(w, WARNING_MAX_CHARS) for w in warnings[:WARNINGS_MAX]]
            if warnings
            else None,
        ),
    )
