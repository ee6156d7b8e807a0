"""The mutation: pin images to digests and inject the sidecar, as one RFC 6902 JSONPatch.

The injected pod gets, in the style of the OpenTelemetry operator's Python auto-instrumentation:

* ``samplerguard-hook-init``: an init container copying the hook package (with its
  ``sitecustomize.py``) into the ``samplerguard-python`` emptyDir;
* ``samplerguard-sidecar``: the sidecar, as a native sidecar (init container with
  ``restartPolicy: Always``) or a plain container;
* ``samplerguard-run``: an emptyDir with the Unix socket only, mounted read-only into the app;
* ``samplerguard-state``: the sidecar's own emptyDir (signing key, openings store), mounted
  into the sidecar alone, so the app can neither read the key nor alter or delete an opening;
* ``samplerguard-drbg`` (when the pod's policy asks for DRBG noise): the namespace's DRBG
  Secret, mounted read-only into the sidecar alone. The sidecar derives each request's seed
  from its master secret and escrows the seed to the verifier's public key; the app gets
  ``SAMPLERGUARD_RNG_MODE``, so the hook draws every generation's noise from the seed the
  sidecar issues, with no code change;
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
from collections.abc import Collection
from typing import Any

from samplerguard.errors import MalformedInputError
from samplerguard.policy.drbg import ESCROW_PUBLIC_KEY, MASTER_SECRET_KEY, is_drbg_mode
from samplerguard.webhook.config import (
    ANNOTATION_CONTAINERS,
    ANNOTATION_INJECTED,
    ANNOTATION_POLICY,
    ANNOTATION_TENANT,
    DRBG_VOLUME,
    HOOK_INIT_NAME,
    HOOK_VOLUME,
    RUN_VOLUME,
    SIDECAR_NAME,
    STATE_VOLUME,
    InjectionConfig,
)
from samplerguard.webhook.patch import JsonFragment
from samplerguard.webhook.workloads import ContainerRef, PodTemplate, escape_pointer

__all__ = [
    "already_injected",
    "foreign_injection",
    "injection_patch",
    "pin_patch",
    "pod_escapes",
    "secret_references",
    "sidecar_changes",
    "tenant_of",
]

Op = dict[str, Any]
_TENANT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def already_injected(tpl: PodTemplate) -> bool:
    return any(c.name == SIDECAR_NAME for c in tpl.containers) or (
        tpl.annotations.get(ANNOTATION_INJECTED) == "true"
    )


#: The fields of the sidecar container that decide what it is, what it holds and what runs in
#: it: its code, its configuration, its files, hooks and privileges. Another mutating webhook
#: may add to the rest (resources); probes are held to HTTP (below).
_SIDECAR_IDENTITY = (
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "volumeMounts",
    "workingDir",
    "lifecycle",
    "securityContext",
)
_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
#: Capabilities that reach another container's files through the shared process namespace
#: (/proc/<pid>/root) or the node.
_REACHING_CAPABILITIES = frozenset(
    {"ALL", "SYS_PTRACE", "SYS_ADMIN", "DAC_READ_SEARCH", "DAC_OVERRIDE", "SYS_MODULE"}
)


def pod_escapes(tpl: PodTemplate) -> list[str]:
    """What in an injected pod would give the app the sidecar's files despite the separate
    volumes: a privileged container or one with a capability that reads through
    ``/proc/<sidecar>/root`` (the injection shares the process namespace), the host's PID or
    IPC namespace, or a hostPath volume (the state emptyDir lies on the node)."""
    found: list[str] = []
    spec = tpl.spec
    for flag in ("hostPID", "hostIPC"):
        if spec.get(flag) is True:
            found.append(f"the pod sets {flag}")
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict) and volume.get("hostPath") is not None:
            found.append(f"volume {str(volume.get('name'))[:63]!r} is a hostPath")
    for c in tpl.containers:
        if c.name == SIDECAR_NAME:
            continue
        context = tpl.spec[c.list_name][c.index].get("securityContext")
        if not isinstance(context, dict):
            continue
        if context.get("privileged") is True:
            found.append(f"container {c.name!r} is privileged")
        caps = context.get("capabilities")
        added = caps.get("add") if isinstance(caps, dict) else None
        reaching = sorted(
            {str(a).upper().removeprefix("CAP_") for a in added or [] if isinstance(a, str)}
            & _REACHING_CAPABILITIES
        )
        if reaching:
            found.append(f"container {c.name!r} adds {', '.join(reaching)}")
    return found


def sidecar_changes(tpl: PodTemplate, old: PodTemplate | None) -> list[str]:
    """What an UPDATE of a running injected pod changes of the injection: the sidecar's or the
    hook's image (container images are mutable on a running pod), or the sidecar's private
    volumes mounted by an ephemeral container."""
    found: list[str] = []
    before = {c.name: c.image for c in old.containers} if old is not None else {}
    for c in tpl.containers:
        if (
            c.name in (SIDECAR_NAME, HOOK_INIT_NAME)
            and c.name in before
            and (c.image != before[c.name])
        ):
            found.append(f"the update changes the image of {c.name}")
        if c.list_name == "ephemeralContainers" and (private := _private_mounts(tpl, c)):
            found.append(f"ephemeral container {c.name!r} mounts {', '.join(private)}")
    return found


def foreign_injection(
    tpl: PodTemplate,
    cfg: InjectionConfig,
    *,
    sidecar_images: Collection[str],
    tenant: str,
    policy: str,
    rng_mode: str,
) -> str | None:
    """Why the samplerguard parts a pod arrives with are not this webhook's injection, or None.

    A pod that already carries them gets no injection (reinvocation), so the provider could
    otherwise bring a sidecar of its own: its own image, key, master secret or policy, or a
    state volume it pre-filled with a signing key it knows. The verifier would then audit that
    impostor as the pod's sidecar. So what the pod carries must be exactly what this webhook
    injects for its tenant, policy and RNG mode: the sidecar's identity fields (the image one
    of ``sidecar_images``: the configured reference or its pinned digest), the list it sits
    in, and the injected volumes; and no other container mounts the sidecar's state or DRBG
    volume."""
    found = [c for c in tpl.containers if c.name == SIDECAR_NAME]
    if not found:
        return (
            f"the pod carries the {ANNOTATION_INJECTED} annotation but no {SIDECAR_NAME} container"
        )
    if len(found) > 1:
        return f"the pod has {len(found)} containers named {SIDECAR_NAME}"
    ref = found[0]
    if ref.image not in sidecar_images:
        return (
            f"its {SIDECAR_NAME} container runs {ref.image[:200]!r}, not the sidecar image "
            "samplerguard injects"
        )
    wanted_list = "initContainers" if cfg.native_sidecar else "containers"
    if ref.list_name != wanted_list:
        return f"its {SIDECAR_NAME} container is in {ref.list_name}, not {wanted_list}"
    container = dict(tpl.spec[ref.list_name][ref.index])
    mounts = container.get("volumeMounts")
    if isinstance(mounts, list):
        # the API server's ServiceAccount admission adds the pod's token to every container,
        # ours included, when it runs again after the webhooks (the sidecar needs it for
        # TokenReview); nothing else may be mounted into the sidecar
        container["volumeMounts"] = [m for m in mounts if not _service_account_mount(m)] or None
    expected = _sidecar(cfg, ref.image, tenant, policy, rng_mode)
    for key in _SIDECAR_IDENTITY:
        if container.get(key) != expected.get(key):
            return f"its {SIDECAR_NAME} container's {key} is not the one samplerguard injects"
    for probe in _PROBES:
        value = container.get(probe)
        if value is not None and (
            not isinstance(value, dict)
            or not isinstance(value.get("httpGet"), dict)
            or any(value.get(k) is not None for k in ("exec", "grpc", "tcpSocket"))
        ):
            # an exec probe runs a command inside the sidecar, beside its key and secret
            return f"its {SIDECAR_NAME} container's {probe} is not an HTTP probe"
    if cfg.native_sidecar and container.get("restartPolicy") != "Always":
        return f"its {SIDECAR_NAME} container is not a native sidecar (restartPolicy Always)"
    present = {v.get("name"): v for v in tpl.spec.get("volumes") or [] if isinstance(v, dict)}
    for volume in _volumes(cfg, is_drbg_mode(rng_mode)):
        if _canonical_volume(present.get(volume["name"])) != _canonical_volume(volume):
            return f"its volume {volume['name']!r} is not the one samplerguard injects"
    for c in tpl.containers:
        if c is not ref and (private := _private_mounts(tpl, c)):
            return f"container {c.name!r} mounts the sidecar's {', '.join(private)}"
    return None


def _private_mounts(tpl: PodTemplate, c: ContainerRef) -> list[str]:
    """The sidecar's own volumes (state, DRBG Secret) that container ``c`` mounts."""
    mounted = set(_names(tpl.spec[c.list_name][c.index], "volumeMounts", "name"))
    return sorted(mounted & {STATE_VOLUME, DRBG_VOLUME})


_SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SUFFIX: dict[str | None, int] = {
    None: 1,
    **{s: 1024 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000 ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
}


def _canonical_volume(volume: object) -> object:
    """``volume`` with an emptyDir's ``sizeLimit`` as a number of bytes: the API server writes
    quantities back in canonical form (the injected ``2048Mi`` reads back as ``2Gi``)."""
    if not isinstance(volume, dict) or not isinstance(volume.get("emptyDir"), dict):
        return volume
    empty = dict(volume["emptyDir"])
    size = empty.get("sizeLimit")
    match = _QUANTITY.match(size) if isinstance(size, str) else None
    if match is not None:
        empty["sizeLimit"] = int(match.group(1)) * _SUFFIX[match.group(2)]
    return {**volume, "emptyDir": empty}


def _service_account_mount(mount: object) -> bool:
    """The read-only mount of the pod's ServiceAccount token the API server adds."""
    return (
        isinstance(mount, dict)
        and mount.get("mountPath") == _SERVICE_ACCOUNT_PATH
        and mount.get("readOnly") is True
        and set(mount) <= {"name", "mountPath", "readOnly"}
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
    # apiVersion written out: the API server defaults it, and the pod must read back exactly
    # as injected (see foreign_injection)
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


def _contract_env(
    cfg: InjectionConfig, tenant: str, policy: str, rng_mode: str
) -> list[dict[str, Any]]:
    return [
        _env("SAMPLERGUARD_SOCKET", cfg.socket_path),
        _env("SAMPLERGUARD_TENANT", tenant),
        _env("SAMPLERGUARD_POLICY", policy),
        # the app's hook draws its noise from the sidecar's seeds in the DRBG modes
        _env("SAMPLERGUARD_RNG_MODE", rng_mode),
    ]


def _names(value: object, *path: str) -> list[str]:
    """The strings at ``path`` under ``value``, walking through lists (nested ones too) at every
    step. A loop over one level at a time: called a few dozen times per admission, the recursive
    walk was a third of a cached validation's CPU."""
    level = [value]
    for key in path:
        found = []
        todo = level
        while todo:
            nested = []
            for item in todo:
                if isinstance(item, dict):
                    found.append(item.get(key))
                elif isinstance(item, list):
                    nested += item
            todo = nested
        level = found
    return [v for v in level if isinstance(v, str)]


def _repository(image: str) -> str:
    name = image.partition("@")[0]
    host, slash, path = name.rpartition("/")
    return f"{host}{slash}{path.partition(':')[0]}"


def secret_references(tpl: PodTemplate, secret: str, sidecar_image: str) -> list[str]:
    """Where the pod gives anything but the injected sidecar the DRBG Secret ``secret``: a
    volume of another name (or a projected source) naming it, an env variable or envFrom
    reading it, a container other than the sidecar (the name *and* the configured sidecar
    image) mounting the injected volume, e.g. an ephemeral debug container. A container of the
    app holding the namespace's master secret could compute every request's noise there."""
    found = []
    for volume in tpl.spec.get("volumes") or []:
        name = volume.get("name") if isinstance(volume, dict) else None
        if name != DRBG_VOLUME and secret in _names(volume, "secret", "secretName") + _names(
            volume, "projected", "sources", "secret", "name"
        ):
            found.append(f"volume {name!r}")
    sidecar_repo = _repository(sidecar_image)
    for c in tpl.containers:
        container = tpl.spec[c.list_name][c.index]
        if secret in _names(container, "env", "valueFrom", "secretKeyRef", "name") + _names(
            container, "envFrom", "secretRef", "name"
        ):
            found.append(f"container {c.name!r}")
        elif DRBG_VOLUME in _names(container, "volumeMounts", "name") and not (
            c.name == SIDECAR_NAME and _repository(c.image) == sidecar_repo
        ):
            found.append(f"container {c.name!r} (mounts {DRBG_VOLUME})")
    return found


def _instrumented(tpl: PodTemplate) -> list[int]:
    wanted = tpl.annotations.get(ANNOTATION_CONTAINERS)
    names = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    return [
        c.index
        for c in tpl.containers
        if c.list_name == "containers" and (names is None or c.name in names)
    ]


def _container_ops(
    tpl: PodTemplate, index: int, cfg: InjectionConfig, tenant: str, policy: str, rng_mode: str
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
    for var in _contract_env(cfg, tenant, policy, rng_mode):
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
    for path in (cfg.hook_mount, cfg.run_dir, cfg.drbg_dir):
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
def _sidecar(
    cfg: InjectionConfig, image: str, tenant: str, policy: str, rng_mode: str
) -> JsonFragment:
    """The sidecar container. Memoised (a pure function of its arguments), with its JSON text:
    never mutated."""
    drbg = is_drbg_mode(rng_mode)
    env = [
        *_contract_env(cfg, tenant, policy, rng_mode),
        _env("SAMPLERGUARD_OPENINGS_DIR", cfg.openings_dir),
        _env("SAMPLERGUARD_KEY_FILE", cfg.key_file),
        _env("SAMPLERGUARD_MAX_STORE_BYTES", str(cfg.store_cap_bytes)),
        _env("SAMPLERGUARD_LISTEN_TCP", f"0.0.0.0:{cfg.sidecar_port}"),
        _field_env("SAMPLERGUARD_POD_NAME", "metadata.name"),
        _field_env("SAMPLERGUARD_POD_NAMESPACE", "metadata.namespace"),
        _field_env("SAMPLERGUARD_POD_UID", "metadata.uid"),
        *(_env(k, v) for k, v in cfg.sidecar_env),
    ]
    mounts: list[dict[str, Any]] = [
        {"name": RUN_VOLUME, "mountPath": cfg.run_dir},
        {"name": STATE_VOLUME, "mountPath": cfg.state_dir},
    ]
    if drbg:
        # the sidecar issues every request's seed from the namespace's master secret and
        # escrows it to the verifier; nothing else in the pod mounts this volume
        env += [
            _env("SAMPLERGUARD_MASTER_SECRET_FILE", cfg.master_secret_file),
            _env("SAMPLERGUARD_ESCROW_PUBLIC_KEY", cfg.escrow_public_key_file),
        ]
        mounts.append({"name": DRBG_VOLUME, "mountPath": cfg.drbg_dir, "readOnly": True})
    sidecar: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": image,
        "args": ["sidecar"],
        "env": env,
        "ports": [{"name": "sg-verifier", "containerPort": cfg.sidecar_port, "protocol": "TCP"}],
        "volumeMounts": mounts,
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


def _volumes(cfg: InjectionConfig, drbg: bool) -> list[dict[str, Any]]:
    """The volumes the injection adds."""
    volumes: list[dict[str, Any]] = [
        {"name": HOOK_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": RUN_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}},
        {"name": STATE_VOLUME, "emptyDir": {"sizeLimit": f"{cfg.state_size_mib}Mi"}},
    ]
    if drbg:
        volumes.append(
            {
                "name": DRBG_VOLUME,
                "secret": {
                    "secretName": cfg.drbg_secret,
                    # not optional: without the Secret the pod does not start (fail closed)
                    "optional": False,
                    "items": [
                        {"key": MASTER_SECRET_KEY, "path": MASTER_SECRET_KEY},
                        {"key": ESCROW_PUBLIC_KEY, "path": ESCROW_PUBLIC_KEY},
                    ],
                    # readable by the sidecar's uid without an fsGroup; only the sidecar
                    # mounts the volume, and its non-dumpable process keeps
                    # /proc/<sidecar>/root closed to the app's processes
                    "defaultMode": 0o444,
                },
            }
        )
    return volumes


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
    rng_mode: str = "framework",
) -> tuple[list[Op], list[str]]:
    """Operations that inject the sidecar into ``tpl``, and warnings for the user.

    ``rng_mode`` is the pod's policy's ``rng.mode``: a DRBG mode wires the namespace's DRBG
    Secret into the sidecar, and needs ``cfg.drbg_secret`` (refused without: the noise never
    falls back to the framework's silently).

    Returns no operations for a pod that already has the sidecar (reinvocation). The
    operations share memoised values (the injected containers): serialise them, never mutate
    them."""
    if already_injected(tpl):
        return [], []
    drbg = is_drbg_mode(rng_mode)
    if drbg and cfg.drbg_secret is None:
        raise MalformedInputError(
            f"the policy asks for {rng_mode} noise, but this webhook mounts no DRBG Secret "
            "(the chart's drbg.enabled)"
        )
    spec, at = tpl.spec, tpl.spec_pointer
    for key in ("volumes",):
        value = spec.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, dict) for v in value)
        ):
            raise MalformedInputError(f"spec.{key} must be a list of objects")
    names = {v.get("name") for v in spec.get("volumes") or []}
    for volume in (HOOK_VOLUME, RUN_VOLUME, STATE_VOLUME, DRBG_VOLUME):
        if volume in names:
            raise MalformedInputError(
                f"the pod already has a volume named {volume!r}, which samplerguard injects"
            )

    ops: list[Op] = []
    warnings: list[str] = []
    for index in _instrumented(tpl):
        more, warn = _container_ops(tpl, index, cfg, tenant, policy, rng_mode)
        ops += more
        warnings += warn

    volumes = _volumes(cfg, drbg)
    ops += _add_items(spec, at, "volumes", volumes)
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
    sidecar = _sidecar(cfg, sidecar_image, tenant, policy, rng_mode)
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
