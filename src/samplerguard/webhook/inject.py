"""The mutation: pin images to digests and inject the sidecar, as one RFC 6902 JSONPatch.

The injected pod gets, in the style of the OpenTelemetry operator's Python auto-instrumentation:

* ``samplerguard-hook-init``: an init container copying the hook package (with its
  ``sitecustomize.py``) into the ``samplerguard-python`` emptyDir;
* ``samplerguard-sidecar``: the sidecar, as a native sidecar (init container with
  ``restartPolicy: Always``) or a plain container;
* ``samplerguard-run``: an emptyDir with the Unix socket only, mounted read-only into the app;
* ``samplerguard-state``: the sidecar's own emptyDir (signing key, openings store), mounted
  into the sidecar alone, so the app can neither read the key nor alter or delete an opening;
* in each instrumented app container: ``PYTHONPATH`` prepended with the hook's directory, the
  hook and socket volumes mounted read-only, and the ``SAMPLERGUARD_*`` variables of the
  contract.

Injection is idempotent: a pod that already carries the sidecar gets no injection operations,
so reinvocation (``reinvocationPolicy: IfNeeded``) changes nothing. Pinning is idempotent too: a
reference with a digest is left as it is.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from samplerguard.errors import MalformedInputError
from samplerguard.webhook.config import (
    ANNOTATION_CONTAINERS,
    ANNOTATION_INJECTED,
    ANNOTATION_POLICY,
    ANNOTATION_TENANT,
    HOOK_INIT_NAME,
    HOOK_VOLUME,
    RUN_VOLUME,
    SIDECAR_NAME,
    STATE_VOLUME,
    InjectionConfig,
)
from samplerguard.webhook.patch import JsonFragment
from samplerguard.webhook.workloads import PodTemplate, escape_pointer

__all__ = ["already_injected", "injection_patch", "pin_patch", "tenant_of"]

Op = dict[str, Any]
_TENANT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def already_injected(tpl: PodTemplate) -> bool:
    return any(c.name == SIDECAR_NAME for c in tpl.containers) or (
        tpl.annotations.get(ANNOTATION_INJECTED) == "true"
    )


def tenant_of(tpl: PodTemplate, namespace: str) -> str:
    """The tenant the sidecar derives keys for: the pod's annotation, else its namespace."""
    tenant = tpl.annotations.get(ANNOTATION_TENANT, namespace)
    if not _TENANT.match(tenant):
        raise MalformedInputError(
            f"annotation {ANNOTATION_TENANT} = {tenant[:80]!r} is not a tenant name "
            "(1-63 characters of [A-Za-z0-9._-], alphanumeric at both ends)"
        )
    return tenant


def pin_patch(tpl: PodTemplate, pins: dict[str, str]) -> list[Op]:
    """Replace each container image found in ``pins`` (as written → pinned reference)."""
    return [
        {"op": "replace", "path": f"{c.pointer}/image", "value": pins[c.image]}
        for c in tpl.containers
        if c.image in pins and pins[c.image] != c.image
    ]


def _add_items(spec: dict[str, Any], at: str, key: str, items: list[Any]) -> list[Op]:
    """Append ``items`` to the list ``spec[key]`` at pointer ``at``, creating it if absent."""
    if not items:
        return []
    if spec.get(key) is None:
        return [{"op": "add", "path": f"{at}/{key}", "value": items}]
    return [{"op": "add", "path": f"{at}/{key}/-", "value": item} for item in items]


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _contract_env(cfg: InjectionConfig, tenant: str, policy: str) -> list[dict[str, Any]]:
    return [
        _env("SAMPLERGUARD_SOCKET", cfg.socket_path),
        _env("SAMPLERGUARD_TENANT", tenant),
        _env("SAMPLERGUARD_POLICY", policy),
    ]


def _instrumented(tpl: PodTemplate) -> list[int]:
    wanted = tpl.annotations.get(ANNOTATION_CONTAINERS)
    names = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    return [
        c.index
        for c in tpl.containers
        if c.list_name == "containers" and (names is None or c.name in names)
    ]


def _container_ops(
    tpl: PodTemplate, index: int, cfg: InjectionConfig, tenant: str, policy: str
) -> tuple[list[Op], list[str]]:
    at = f"{tpl.spec_pointer}/containers/{index}"
    container = tpl.spec["containers"][index]
    name = container["name"]
    ops: list[Op] = []
    warnings: list[str] = []

    env = container.get("env")
    if env is not None and (not isinstance(env, list) or not all(isinstance(e, dict) for e in env)):
        raise MalformedInputError(f"container {name!r}: env must be a list of objects")
    existing = {e.get("name"): i for i, e in enumerate(env or [])}
    adds: list[dict[str, Any]] = []
    pythonpath = existing.get("PYTHONPATH")
    if pythonpath is None:
        adds.append(_env("PYTHONPATH", cfg.hook_mount))
    else:
        entry = (env or [])[pythonpath]
        value = entry.get("value")
        if "valueFrom" in entry or not isinstance(value, str | None):
            warnings.append(
                f"container {name}: PYTHONPATH comes from valueFrom; the hook is not "
                "auto-loaded there (add its directory yourself)"
            )
        elif value and value.split(":")[0] != cfg.hook_mount:
            ops.append(
                {
                    "op": "replace",
                    "path": f"{at}/env/{pythonpath}/value",
                    "value": f"{cfg.hook_mount}:{value}",
                }
            )
        elif not value:
            ops.append(
                {"op": "replace", "path": f"{at}/env/{pythonpath}/value", "value": cfg.hook_mount}
            )
    for var in _contract_env(cfg, tenant, policy):
        i = existing.get(var["name"])
        if i is None:
            adds.append(var)
        else:
            # The webhook is authoritative for the contract's variables.
            ops.append({"op": "replace", "path": f"{at}/env/{i}", "value": var})
    ops += _add_items(container, at, "env", adds)

    mounts = container.get("volumeMounts")
    if mounts is not None and (
        not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts)
    ):
        raise MalformedInputError(f"container {name!r}: volumeMounts must be a list of objects")
    taken = {m.get("mountPath") for m in mounts or []}
    for path in (cfg.hook_mount, cfg.run_dir):
        if path in taken:
            raise MalformedInputError(
                f"container {name!r} already mounts a volume at {path}, where samplerguard "
                "mounts its own"
            )
    ops += _add_items(
        container,
        at,
        "volumeMounts",
        [
            {"name": HOOK_VOLUME, "mountPath": cfg.hook_mount, "readOnly": True},
            {"name": RUN_VOLUME, "mountPath": cfg.run_dir, "readOnly": True},
        ],
    )
    return ops, warnings


@functools.lru_cache(maxsize=256)
def _sidecar(cfg: InjectionConfig, image: str, tenant: str, policy: str) -> JsonFragment:
    """The sidecar container. Memoised (a pure function of its arguments), with its JSON text:
    never mutated."""
    env = [
        *_contract_env(cfg, tenant, policy),
        _env("SAMPLERGUARD_OPENINGS_DIR", cfg.openings_dir),
        _env("SAMPLERGUARD_KEY_FILE", cfg.key_file),
        _env("SAMPLERGUARD_MAX_STORE_BYTES", str(cfg.store_cap_bytes)),
        _env("SAMPLERGUARD_LISTEN_TCP", f"0.0.0.0:{cfg.sidecar_port}"),
        _field_env("SAMPLERGUARD_POD_NAME", "metadata.name"),
        _field_env("SAMPLERGUARD_POD_NAMESPACE", "metadata.namespace"),
        _field_env("SAMPLERGUARD_POD_UID", "metadata.uid"),
        *(_env(k, v) for k, v in cfg.sidecar_env),
    ]
    sidecar: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": image,
        "args": ["sidecar"],
        "env": env,
        "ports": [{"name": "sg-verifier", "containerPort": cfg.sidecar_port, "protocol": "TCP"}],
        "volumeMounts": [
            {"name": RUN_VOLUME, "mountPath": cfg.run_dir},
            {"name": STATE_VOLUME, "mountPath": cfg.state_dir},
        ],
        "resources": {
            "requests": {"cpu": cfg.sidecar_cpu_request, "memory": cfg.sidecar_memory_request},
            "limits": {"memory": cfg.sidecar_memory_limit},
        },
        # Ready once the API the verifier calls answers: uvicorn serves only after the sidecar
        # has started its ingestion socket, and /readyz turns 503 when runtime integrity
        # breaks. An HTTP probe, not `samplerguard sidecar --probe`: that command starts a
        # Python that imports torch (2-4 s), past any sensible probe timeout.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": cfg.sidecar_port},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # The first start imports torch and may create the signing key on a busy node.
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": cfg.sidecar_port},
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 60,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if cfg.native_sidecar:
        sidecar["restartPolicy"] = "Always"
    return JsonFragment(sidecar)


@functools.lru_cache(maxsize=64)
def _hook_init(cfg: InjectionConfig, image: str) -> JsonFragment:
    """The hook's init container; memoised like :func:`_sidecar`."""
    return JsonFragment(
        {
            "name": HOOK_INIT_NAME,
            "image": image,
            "command": ["cp", "-R", f"{cfg.hook_source}/.", cfg.hook_mount],
            "volumeMounts": [{"name": HOOK_VOLUME, "mountPath": cfg.hook_mount}],
            "resources": {
                "requests": {"cpu": "10m", "memory": "32Mi"},
                "limits": {"memory": "128Mi"},
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    )


def injection_patch(
    tpl: PodTemplate,
    cfg: InjectionConfig,
    *,
    sidecar_image: str,
    hook_image: str,
    tenant: str,
    policy: str,
) -> tuple[list[Op], list[str]]:
    """Operations that inject the sidecar into ``tpl``, and warnings for the user.

    Returns no operations for a pod that already has the sidecar (reinvocation). The
    operations share memoised values (the injected containers): serialise them, never mutate
    them."""
    if already_injected(tpl):
        return [], []
    spec, at = tpl.spec, tpl.spec_pointer
    for key in ("volumes",):
        value = spec.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, dict) for v in value)
        ):
            raise MalformedInputError(f"spec.{key} must be a list of objects")
    names = {v.get("name") for v in spec.get("volumes") or []}
    for volume in (HOOK_VOLUME, RUN_VOLUME, STATE_VOLUME):
        if volume in names:
            raise MalformedInputError(
                f"the pod already has a volume named {volume!r}, which samplerguard injects"
            )

    ops: list[Op] = []
    warnings: list[str] = []
    for index in _instrumented(tpl):
        more, warn = _container_ops(tpl, index, cfg, tenant, policy)
        ops += more
        warnings += warn

    ops += _add_items(
        spec,
        at,
        "volumes",
        [
            {"name": HOOK_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}},
            {"name": RUN_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}},
            {"name": STATE_VOLUME, "emptyDir": {"sizeLimit": f"{cfg.state_size_mib}Mi"}},
        ],
    )
    # The sidecar hashes the solver code the app actually loaded through /proc/<pid>/root,
    # which needs the app's processes in its view.
    share = spec.get("shareProcessNamespace")
    if share is None:
        ops.append({"op": "add", "path": f"{at}/shareProcessNamespace", "value": True})
    elif share is not True:
        warnings.append(
            "samplerguard: shareProcessNamespace is off, so the sidecar cannot hash the solver "
            "code the app loaded and takes the hook's report"
        )
    sidecar = _sidecar(cfg, sidecar_image, tenant, policy)
    init = [_hook_init(cfg, hook_image)]
    if cfg.native_sidecar:
        init.append(sidecar)
    ops += _add_items(spec, at, "initContainers", init)
    if not cfg.native_sidecar:
        ops += _add_items(spec, at, "containers", [sidecar])

    annotations = {ANNOTATION_INJECTED: "true", ANNOTATION_POLICY: policy}
    meta_at = tpl.metadata_pointer
    if not tpl.has_metadata:
        ops.append({"op": "add", "path": meta_at, "value": {"annotations": annotations}})
    elif not tpl.annotations:
        # Missing or empty: adding the whole map gives the same result either way.
        ops.append({"op": "add", "path": f"{meta_at}/annotations", "value": annotations})
    else:
        ops += [
            {"op": "add", "path": f"{meta_at}/annotations/{escape_pointer(k)}", "value": v}
            for k, v in annotations.items()
        ]
    return ops, warnings
