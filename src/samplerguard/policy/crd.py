"""Generate the CustomResourceDefinitions from the pydantic models.

The models in :mod:`samplerguard.policy.spec` and :mod:`samplerguard.policy.report` are the one
source. This module turns their JSON Schema (draft 2020-12, as pydantic writes it) into the
*structural* OpenAPI v3 schema the API server demands:

* ``$ref``/``$defs`` are inlined (structural schemas allow no references);
* ``Optional[X]`` (``anyOf: [X, null]``) becomes ``X``: unset fields are omitted, never null;
* ``title``, ``default`` and ``additionalProperties: false`` go (pydantic applies defaults; the
  API server prunes or, under ``kubectl``'s strict field validation, refuses unknown fields);
* ``const`` becomes a one-value ``enum``; numeric ``exclusiveMinimum`` becomes OpenAPI v3.0's
  boolean form;
* ``x-kubernetes-validations`` (CEL) and list-map markers attached with ``json_schema_extra``
  in the models are kept as they are.

``samplerguard crds --out charts/samplerguard/crds/`` writes the files; a unit test fails when
the committed files differ from :func:`render_all`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from samplerguard.policy.report import REPORT_GROUP, REPORT_VERSION, ClusterPolicyReport
from samplerguard.policy.spec import GROUP, VERSION, PolicyStatus, SamplerPolicySpec

__all__ = ["all_crds", "crd_filenames", "render_all", "structural_schema"]

_DROP = {"title", "default", "$defs", "examples"}

Schema = dict[str, Any]


def structural_schema(json_schema: Schema) -> Schema:
    """Turn one pydantic JSON Schema (with its ``$defs``) into a structural OpenAPI v3 schema."""
    defs: dict[str, Schema] = json_schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
            return resolve(merged)
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o != {"type": "null"}]
            if len(options) != 1:
                raise ValueError(f"cannot express a union of {len(options)} types: {node}")
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            return resolve({**options[0], **rest})
        out: Schema = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "additionalProperties" and value is False:
                continue
            if key == "const":
                out["enum"] = [value]
                continue
            if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                out[bound] = value
                out[key] = True
                continue
            if key == "properties":
                out[key] = {k: resolve(v) for k, v in value.items()}
                continue
            out[key] = resolve(value)
        # A list whose items carry an enum from json_schema_extra: pydantic puts the extra
        # "items" over its own, which is what we want; nothing to merge.
        return out

    result: Schema = resolve({k: v for k, v in json_schema.items() if k != "$defs"})
    return result


def _schema_of(model: Any) -> Schema:
    return structural_schema(model.model_json_schema(by_alias=True, mode="validation"))


#: the fields every Kubernetes object has, described as ``kubectl explain`` describes them
_OBJECT_FIELDS: Schema = {
    "apiVersion": {
        "type": "string",
        "description": "The versioned schema of this representation of an object.",
    },
    "kind": {"type": "string", "description": "The REST resource this object represents."},
    # The API server describes metadata itself and refuses a CRD that specifies anything
    # about it but name and generateName (a description included).
    "metadata": {"type": "object"},
}


def _object_schema(spec: Schema, status: Schema | None, description: str) -> Schema:
    props: Schema = {**copy.deepcopy(_OBJECT_FIELDS), "spec": spec}
    if status is not None:
        props["status"] = {**status, "description": "Written by the operator."}
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": props,
    }


_POLICY_COLUMNS = [
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
    {"name": "Images", "type": "string", "jsonPath": ".spec.images[*].glob"},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Verdict", "type": "string", "jsonPath": ".status.lastVerdict"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Reason",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
    },
]


def _policy_status_schema() -> Schema:
    status = _schema_of(PolicyStatus)
    conditions = status["properties"]["conditions"]
    # -> the same merge semantics as metav1.Condition lists
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["maxItems"] = 16
    return status


def _policy_crd(kind: str, scope: str, short_names: list[str], description: str) -> Schema:
    spec = _schema_of(SamplerPolicySpec)
    spec["description"] = description
    if kind == "SamplerPolicy":
        # Mirrors SamplerPolicy._no_namespace_selector.
        spec.setdefault("x-kubernetes-validations", []).append(
            {
                "rule": "!has(self.namespaceSelector)",
                "message": "spec.namespaceSelector is only allowed on ClusterSamplerPolicy; "
                "a SamplerPolicy governs its own namespace",
            }
        )
    plural = kind.lower().removesuffix("y") + "ies"  # both kinds end in "Policy"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "samplerguard"},
            "annotations": {"samplerguard.dev/generated-from": "samplerguard.policy.spec"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["samplerguard"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _POLICY_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": _object_schema(
                            spec, _policy_status_schema(), f"{kind}: {description}"
                        )
                    },
                }
            ],
        },
    }


def _loosen(node: Any) -> Any:
    """The report CRDs are shared with other policy engines (Kyverno, Falco, Trivy): keep the
    upstream schema's looseness, without our producer-side limits and rule enum."""
    if isinstance(node, list):
        return [_loosen(n) for n in node]
    if not isinstance(node, dict):
        return node
    return {
        k: _loosen(v)
        for k, v in node.items()
        if k not in ("maxLength", "maxItems", "maxProperties", "minLength", "pattern")
    }


_REPORT_COLUMNS = [
    {"name": "Kind", "type": "string", "priority": 1, "jsonPath": ".scope.kind"},
    {"name": "Name", "type": "string", "priority": 1, "jsonPath": ".scope.name"},
    {"name": "Pass", "type": "integer", "jsonPath": ".summary.pass"},
    {"name": "Fail", "type": "integer", "jsonPath": ".summary.fail"},
    {"name": "Warn", "type": "integer", "jsonPath": ".summary.warn"},
    {"name": "Error", "type": "integer", "jsonPath": ".summary.error"},
    {"name": "Skip", "type": "integer", "jsonPath": ".summary.skip"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _report_crd(kind: str, scope: str, short: str) -> Schema:
    body = _loosen(_schema_of(ClusterPolicyReport))
    props = body["properties"]
    props.update(copy.deepcopy(_OBJECT_FIELDS))
    results = props["results"]["items"]
    # any producer's rule names, not only samplerguard's
    results["properties"]["rule"] = {
        "type": "string",
        "description": results["properties"]["rule"]["description"],
    }
    results["properties"]["result"]["enum"] = ["pass", "fail", "warn", "error", "skip"]
    body.pop("required", None)
    body["description"] = (
        f"{kind} (wgpolicyk8s.io/v1alpha2, the Policy WG's report format), "
        "installed by samplerguard when absent."
    )
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{REPORT_GROUP}",
            "annotations": {"samplerguard.dev/generated-from": "samplerguard.policy.report"},
        },
        "spec": {
            "group": REPORT_GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
            },
            "versions": [
                {
                    "name": REPORT_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {},
                    "additionalPrinterColumns": _REPORT_COLUMNS,
                    "schema": {"openAPIV3Schema": body},
                }
            ],
        },
    }


def all_crds() -> list[Schema]:
    """The four CRDs the chart installs, as dicts."""
    return [
        _policy_crd(
            "ClusterSamplerPolicy",
            "Cluster",
            ["csp", "csamplerpol"],
            "which sampler images may run in opted-in namespaces, and how their sampling is "
            "constrained and verified",
        ),
        _policy_crd(
            "SamplerPolicy",
            "Namespaced",
            ["sp", "samplerpol"],
            "which sampler images may run in this namespace, and how their sampling is "
            "constrained and verified",
        ),
        _report_crd("PolicyReport", "Namespaced", "polr"),
        _report_crd("ClusterPolicyReport", "Cluster", "cpolr"),
    ]


def crd_filenames() -> list[str]:
    return [f"{c['spec']['group']}_{c['spec']['names']['plural']}.yaml" for c in all_crds()]


_HEADER = (
    "# Generated by `samplerguard crds` from the pydantic models in samplerguard.policy.\n"
    "# Do not edit: change the models and regenerate (a test fails on drift).\n"
)


def render_all() -> dict[str, str]:
    """File name -> YAML text, byte-for-byte what the chart commits."""
    out: dict[str, str] = {}
    for name, crd in zip(crd_filenames(), all_crds(), strict=True):
        out[name] = _HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)
    return out
