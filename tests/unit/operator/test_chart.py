"""The Helm chart, rendered by Helm's own Go templating (helm-python-sdk) and every manifest
validated against the Kubernetes 1.36 schemas (kubernetes-validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from samplerguard.policy.crd import render_all

CHART = Path(__file__).resolve().parents[3] / "charts" / "samplerguard"
K8S = "1.36.0"
NOT_IN_SCHEMAS = {"ClusterKopfPeering", "ServiceMonitor"}  # CRD kinds: not in the core schemas


def _render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    out = chart.render(values or {}, name="sg", namespace="samplerguard", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return _render()


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"operator": {"replicas": 1, "auditInterval": 0}, "verifier": {"enabled": False}},
        {"verifier": {"replicas": 3, "persistence": {"enabled": True, "storageClassName": "ssd"}}},
        {
            "webhook": {"readPullSecrets": True, "trustedRootConfigMap": "roots", "inject": False},
            "excludedNamespaces": ["batch"],
            "image": {"digest": "sha256:" + "a" * 64},
            "telemetry": {"otlpEndpoint": "http://otel:4317"},
            "registries": {"plainHttp": ["r:5000"], "caConfigMap": "corp-ca"},
            "sidecar": {"namespaces": ["ml", "vision"]},
        },
    ],
    ids=["defaults", "minimal", "sharded-verifier", "everything"],
)
def test_every_manifest_is_valid_kubernetes(values: dict[str, Any]) -> None:
    docs = _render(values)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ClusterRole",
        "Role",
        "ServiceAccount",
    } <= kinds
    for d in docs:
        if d["kind"] in NOT_IN_SCHEMAS:
            continue
        kubernetes_validate.validate(d, K8S, strict=True)


def test_chart_lints_clean() -> None:
    report = helm.lint(CHART, strict=True, namespace="samplerguard", kube_version="v1.36.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_crds_are_the_generated_ones() -> None:
    chart_crds = {Path(c["name"]).name: c["data"] for c in helm.Chart.load(CHART).crds}
    for name, text in render_all().items():
        assert chart_crds[name] == text  # what Helm installs is what the models generate
    assert "kopf.dev_clusterkopfpeerings.yaml" in chart_crds


def test_webhook_is_highly_available_and_fails_closed(docs: list[dict[str, Any]]) -> None:
    dep = _one(docs, "Deployment", "sg-webhook")
    assert dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "https",
        "scheme": "HTTPS",
    }
    pdb = _one(docs, "PodDisruptionBudget", "sg-webhook")
    assert pdb["spec"]["minAvailable"] == 1
    for kind, name in (
        ("MutatingWebhookConfiguration", "sg-mutating"),
        ("ValidatingWebhookConfiguration", "sg-validating"),
    ):
        cfg = _one(docs, kind, name)
        for hook in cfg["webhooks"]:
            assert hook["failurePolicy"] == "Fail"
            assert hook["timeoutSeconds"] == 10  # webhook.timeout: 10s
            assert hook["sideEffects"] == "None"
            exprs = {e["key"]: e for e in hook["namespaceSelector"]["matchExpressions"]}
            excluded = exprs["kubernetes.io/metadata.name"]
            assert excluded["operator"] == "NotIn"
            assert {"kube-system", "samplerguard"} <= set(excluded["values"])
            assert hook["clientConfig"]["service"]["name"] == "sg-webhook"
    mutating = _one(docs, "MutatingWebhookConfiguration", "sg-mutating")
    assert mutating["webhooks"][0]["namespaceSelector"]["matchExpressions"][0] == {
        "key": "samplerguard.dev/enforce",
        "operator": "In",
        "values": ["true"],
    }
    assert mutating["webhooks"][1]["objectSelector"] == {
        "matchLabels": {"samplerguard.dev/inject": "true"}
    }
    # pods outside the opted-in scopes that carry the injection reach validation too (and only
    # those: the API server's CEL match keeps the rest of the cluster off the webhook)
    validating = _one(docs, "ValidatingWebhookConfiguration", "sg-validating")
    carried = next(h for h in validating["webhooks"] if h["name"].startswith("validate.carried"))
    expression = carried["matchConditions"][0]["expression"]
    assert "samplerguard.dev/injected" in expression and "samplerguard-sidecar" in expression
    assert carried["clientConfig"]["service"]["path"] == "/validate"
    # and the verifier refuses pods in the namespaces the webhook never sees
    verifier = _one(docs, "StatefulSet", "sg-verifier")
    args = verifier["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--exclude-namespace=kube-system", "--exclude-namespace=samplerguard"} <= set(args)
    assert any(a.startswith("--sidecar-image=") for a in args)


def test_rbac_is_least_privilege(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        if d["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in d["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], (
                d["metadata"]["name"],
                rule,
            )
            if "secrets" in rule["resources"] and d["kind"] == "ClusterRole":
                pytest.fail("a ClusterRole may read Secrets only when readPullSecrets is set")
            if (
                set(rule["verbs"]) & {"update", "patch", "delete"}
                and "secrets" in rule["resources"]
            ):
                # the TLS Secret and the escrow key pair, nothing else
                assert rule["resourceNames"] == ["sg-webhook-tls", "sg-escrow"]
    operator = _one(docs, "ClusterRole", "sg-operator")
    webhook_writes = [
        r
        for r in operator["rules"]
        if "mutatingwebhookconfigurations" in r["resources"] and "patch" in r["verbs"]
    ]
    assert webhook_writes[0]["resourceNames"] == ["sg-mutating", "sg-validating"]
    assert not any("delete" in r["verbs"] for r in operator["rules"])


def test_operator_wiring_matches_names(docs: list[dict[str, Any]]) -> None:
    dep = _one(docs, "Deployment", "sg-operator")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--tls-secret=sg-webhook-tls" in args and "--peering=sg" in args
    assert "--mutating-webhook=sg-mutating" in args and "--lease=sg-operator" in args
    assert any(d["kind"] == "ClusterKopfPeering" and d["metadata"]["name"] == "sg" for d in docs)
    webhook = _one(docs, "Deployment", "sg-webhook")
    volumes = webhook["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "sg-webhook-tls"}} in volumes


def test_verifier_is_sharded_and_reports_to_the_operator() -> None:
    docs = _render({"verifier": {"replicas": 3}})
    sts = _one(docs, "StatefulSet", "sg-verifier")
    assert sts["spec"]["replicas"] == 3
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert "--shard=$(POD_INDEX)/3" in c["args"]
    assert "--report-url=https://sg-operator.samplerguard.svc/v1/results" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert env["SSL_CERT_FILE"]["value"] == "/etc/samplerguard/tls/ca.crt"
    operator = _one(docs, "Deployment", "sg-operator")["spec"]["template"]["spec"]["containers"][0]
    assert "--verifier-user=system:serviceaccount:samplerguard:sg-verifier" in operator["args"]


@pytest.mark.parametrize(
    ("kind", "name"),
    [("Deployment", "sg-operator"), ("Deployment", "sg-webhook"), ("StatefulSet", "sg-verifier")],
)
def test_container_args_are_accepted_by_the_cli(kind: str, name: str) -> None:
    """Every flag the chart passes exists in `samplerguard <command>` (argparse exits on an
    unknown one)."""
    from samplerguard.cli import build_parser

    docs = _render(
        {
            "webhook": {"trustedRootConfigMap": "roots", "inject": False},
            "excludedNamespaces": ["batch"],
            "operator": {"plainHttpRegistries": ["r:5000"]},
            "registries": {"plainHttp": ["r:5000", "q:5000"], "caConfigMap": "corp-ca"},
        }
    )
    container = _one(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]
    args = [a.replace("$(POD_INDEX)", "0") for a in container["args"]]
    parsed = build_parser().parse_args(args)
    assert parsed.command == args[0]


@pytest.mark.parametrize(
    ("name", "plain_flag", "attr"),
    [
        ("sg-webhook", "--plain-http", "plain_http_registry"),
        ("sg-operator", "--plain-http", "registry_plain_http"),
    ],
)
def test_webhook_and_operator_reach_plain_http_and_private_ca_registries(
    name: str, plain_flag: str, attr: str
) -> None:
    from samplerguard.cli import build_parser

    docs = _render(
        {
            "operator": {"plainHttpRegistries": ["legacy:5000"]},
            "registries": {"plainHttp": ["r:5000", "legacy:5000"], "caConfigMap": "corp-ca"},
        }
    )
    pod = _one(docs, "Deployment", name)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    parsed = build_parser().parse_args(container["args"])
    assert sorted(getattr(parsed, attr)) == ["legacy:5000", "r:5000"]
    assert parsed.registry_ca == "/etc/samplerguard/registry-ca/ca.crt"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "registry-ca")
    assert mount["mountPath"] == "/etc/samplerguard/registry-ca"
    volume = next(v for v in pod["volumes"] if v["name"] == "registry-ca")
    assert volume["configMap"] == {
        "name": "corp-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert not any(
        plain_flag in a
        for a in _one(_render(), "Deployment", name)["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
    )


def test_injected_sidecars_get_tokenreview_only_in_the_named_namespaces() -> None:
    assert not [d for d in _render() if d["metadata"]["name"] == "sg-sidecar"]
    docs = _render({"sidecar": {"namespaces": ["ml", "batch-gen"]}})
    binding = _one(docs, "ClusterRoleBinding", "sg-sidecar")
    assert [s["name"] for s in binding["subjects"]] == [
        "system:serviceaccounts:ml",
        "system:serviceaccounts:batch-gen",
    ]
    assert all(s["kind"] == "Group" for s in binding["subjects"])
    role = _one(docs, "ClusterRole", "sg-sidecar")
    granted = {
        (r["apiGroups"][0], res, v)
        for r in role["rules"]
        for res in r["resources"]
        for v in r["verbs"]
    }
    assert granted == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("samplerguard.dev", "clustersamplerpolicies", "get"),
        ("samplerguard.dev", "samplerpolicies", "get"),
    }
    for d in docs:
        if d["kind"] not in NOT_IN_SCHEMAS:
            kubernetes_validate.validate(d, K8S, strict=True)


def test_every_component_logs_json_and_sidecars_get_the_telemetry_settings() -> None:
    from samplerguard.cli import build_parser

    docs = _render({"telemetry": {"otlpEndpoint": "http://otel:4317"}})
    for kind, name in (
        ("Deployment", "sg-operator"),
        ("Deployment", "sg-webhook"),
        ("StatefulSet", "sg-verifier"),
    ):
        env = {
            e["name"]: e.get("value")
            for e in _one(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["SAMPLERGUARD_LOG_FORMAT"] == "json"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4317"
    args = _one(docs, "Deployment", "sg-webhook")["spec"]["template"]["spec"]["containers"][0]
    parsed = build_parser().parse_args(args["args"])
    assert {
        "SAMPLERGUARD_LOG_FORMAT=json",
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel:4317",
    } <= set(parsed.sidecar_env)


def test_the_injected_sidecars_resources_come_from_the_values() -> None:
    from samplerguard.cli import build_parser
    from samplerguard.cli.webhook import _config

    docs = _render({"sidecar": {"resources": {"requests": {"cpu": "80m", "memory": "300Mi"}}}})
    args = _one(docs, "Deployment", "sg-webhook")["spec"]["template"]["spec"]["containers"][0]
    parsed = build_parser().parse_args([*args["args"], "--cert=/tls/tls.crt", "--key=/tls/tls.key"])
    injection = _config(parsed).injection
    assert (injection.sidecar_cpu_request, injection.sidecar_memory_request) == ("80m", "300Mi")
    assert injection.sidecar_memory_limit == "1Gi"


def test_secret_held_keys_are_readable_by_webhook_and_operator_audit_only_when_allowed() -> None:
    def readers(docs: list[dict[str, Any]]) -> set[str]:
        return {
            d["metadata"]["name"]
            for d in docs
            if d["kind"] == "ClusterRole"
            and any("secrets" in r["resources"] and "get" in r["verbs"] for r in d["rules"])
        }

    assert readers(_render()) == set()
    allowed = readers(_render({"webhook": {"readPullSecrets": True}}))
    assert allowed == {"sg-webhook", "sg-operator"}


def _pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }


def _secret_volumes(spec: dict[str, Any]) -> set[str]:
    return {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}


def test_drbg_secrets_are_wired_to_the_operator_webhook_and_verifier_alone() -> None:
    docs = _render({"sidecar": {"namespaces": ["ml", "vision"]}})
    specs = _pod_specs(docs)
    operator = specs["sg-operator"]["containers"][0]["args"]
    assert "--escrow-secret=sg-escrow" in operator and "--drbg-secret=sg-drbg" in operator
    assert {"--drbg-namespace=ml", "--drbg-namespace=vision"} <= set(operator)
    assert "--drbg-secret=sg-drbg" in specs["sg-webhook"]["containers"][0]["args"]
    verifier = specs["sg-verifier"]
    args = verifier["containers"][0]["args"]
    assert "--escrow-key=/etc/samplerguard/escrow/escrow-private.pem" in args
    mount = next(m for m in verifier["containers"][0]["volumeMounts"] if m["name"] == "escrow")
    assert mount == {"name": "escrow", "mountPath": "/etc/samplerguard/escrow", "readOnly": True}
    volume = next(v for v in verifier["volumes"] if v["name"] == "escrow")
    assert volume["secret"]["secretName"] == "sg-escrow"
    assert volume["secret"]["items"] == [
        {"key": "escrow-private.pem", "path": "escrow-private.pem"}
    ]
    # only the verifier mounts the escrow key; no deployed pod mounts a DRBG master secret
    for name, spec in specs.items():
        assert ("sg-escrow" in _secret_volumes(spec)) == (name == "sg-verifier"), name
        assert "sg-drbg" not in _secret_volumes(spec), name
    # the operator may write the DRBG Secret in each sidecar namespace, and no other Secret
    for ns in ("ml", "vision"):
        role = next(
            d
            for d in docs
            if d["kind"] == "Role" and d["metadata"] == {**d["metadata"], "namespace": ns}
        )
        named = [r for r in role["rules"] if "resourceNames" in r]
        assert named == [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["sg-drbg"],
                "verbs": ["get", "update", "patch"],
            }
        ]
        assert all(set(r["verbs"]) <= {"create", "get", "update", "patch"} for r in role["rules"])
        binding = next(
            d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == ns
        )
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "sg-operator", "namespace": "samplerguard"}
        ]
    own = _one(docs, "Role", "sg-operator")
    assert "sg-escrow" in next(r for r in own["rules"] if "resourceNames" in r)["resourceNames"]


def test_drbg_off_leaves_no_trace() -> None:
    docs = _render({"sidecar": {"namespaces": ["ml"]}, "drbg": {"enabled": False}})
    text = yaml.safe_dump_all(docs)
    assert "sg-escrow" not in text and "sg-drbg" not in text and "escrow" not in text
    assert not any(d["metadata"].get("namespace") == "ml" for d in docs)


def test_every_namespaced_object_names_its_namespace() -> None:
    """The release spans namespaces (the operator's Roles in the sidecar namespaces), so it is
    applied without ``-n``: each namespaced object must carry its own."""
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ClusterKopfPeering",
    }
    docs = _render({"sidecar": {"namespaces": ["ml"]}})
    for d in docs:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace"), (d["kind"], d["metadata"]["name"])


def test_reference_models_are_mounted_read_only_for_the_verifier_alone() -> None:
    docs = _render(
        {
            "verifier": {
                "references": [
                    {"family": "stable-diffusion-xl", "claimName": "models", "path": "sdxl"},
                    {"family": "flux", "claimName": "models", "path": "flux-dev"},
                    {"family": "wan", "claimName": "video-models", "path": "wan21"},
                ]
            }
        }
    )
    verifier = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = verifier["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--reference-model=stable-diffusion-xl=/models/models/sdxl" in args
    assert "--reference-model=flux=/models/models/flux-dev" in args
    assert "--reference-model=wan=/models/video-models/wan21" in args
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v and v["name"].startswith("models-")
    }
    assert set(claims) == {"models", "video-models"}  # one volume per claim
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in claims.values())
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"].startswith("models-")]
    assert {m["mountPath"] for m in mounts} == {"/models/models", "/models/video-models"}
    assert all(m["readOnly"] for m in mounts)
    others = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    for d in others:
        for v in d["spec"]["template"]["spec"].get("volumes", []):
            assert not v["name"].startswith("models-")


def _args(docs: list[dict[str, Any]], name: str) -> list[str]:
    return list(_one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["args"])


def test_durations_are_written_as_in_policies_and_read_back_by_the_cli() -> None:
    from samplerguard.cli import build_parser
    from samplerguard.cli.webhook import _config

    docs = _render(
        {
            "operator": {
                "auditInterval": "1h30m",
                "certCheck": "2m",
                "leafLifetime": "30d",
                "leafRenewBefore": "240h",
            },
            "webhook": {
                "timeout": "15s",
                "deadline": "12500ms",
                "freshTtl": "10m",
                "lastKnownGoodTtl": "2h",
                "failureTtl": 30,  # a bare number still reads as seconds
            },
        }
    )
    operator = build_parser().parse_args(_args(docs, "sg-operator"))
    assert (operator.audit_interval, operator.cert_check) == (5400.0, 120.0)
    assert (operator.leaf_lifetime, operator.leaf_renew_before) == (30 * 86400.0, 10 * 86400.0)
    assert operator.no_audit is False
    webhook = build_parser().parse_args(
        [*_args(docs, "sg-webhook"), "--cert=/tls/tls.crt", "--key=/tls/tls.key"]
    )
    config = _config(webhook)
    assert (config.deadline, config.fresh_ttl) == (12.5, 600.0)
    assert (config.last_known_good_ttl, config.failure_ttl) == (7200.0, 30.0)
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        hooks = next(d for d in docs if d["kind"] == kind)["webhooks"]
        assert {h["timeoutSeconds"] for h in hooks} == {15}


def test_default_durations_match_the_clis_own_defaults(docs: list[dict[str, Any]]) -> None:
    from samplerguard.cli import build_parser

    parser = build_parser()
    for name, command in (("sg-operator", "operator"), ("sg-webhook", "webhook")):
        rendered = vars(parser.parse_args(_args(docs, name)))
        defaults = vars(parser.parse_args([command]))
        for key in ("audit_interval", "cert_check", "leaf_lifetime", "leaf_renew_before"):
            assert rendered.get(key) == defaults.get(key), key
        for key in ("deadline", "fresh_ttl", "last_known_good_ttl", "failure_ttl"):
            assert rendered.get(key) == defaults.get(key), key


@pytest.mark.parametrize("off", [0, "0", "0s"])
def test_an_audit_interval_of_zero_turns_the_audit_off(off: object) -> None:
    args = _args(_render({"operator": {"auditInterval": off}}), "sg-operator")
    assert "--no-audit" in args
    assert "--no-audit" not in _args(_render({"operator": {"auditInterval": "1s"}}), "sg-operator")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"auditInterval": "10x"}}, 'operator.auditInterval: "10x" is not a duration'),
        ({"webhook": {"freshTtl": "-5m"}}, 'webhook.freshTtl: "-5m" is not a duration'),
        ({"webhook": {"timeout": "31s"}}, "webhook.timeout: 31s is not whole seconds from 1s"),
        ({"webhook": {"timeout": "2.5s", "deadline": "1s"}}, "webhook.timeout: 2.5s is not whole"),
        ({"webhook": {"deadline": "10s"}}, "webhook.deadline (10s) must be longer than 0s and "),
        ({"operator": {"leafRenewBefore": "100d"}}, "operator.leafRenewBefore (100d) must be"),
        (
            {"webhook": {"lastKnownGoodTtlSeconds": 3600}},
            "webhook.lastKnownGoodTtlSeconds was renamed webhook.lastKnownGoodTtl, which takes a "
            "duration such as 30s, 10m or 1h (here webhook.lastKnownGoodTtl: 3600s)",
        ),
        (
            {"operator": {"auditIntervalSeconds": 600}},
            "operator.auditIntervalSeconds was renamed operator.auditInterval",
        ),
    ],
)
def test_a_bad_or_renamed_duration_fails_the_render_naming_the_key(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as exc:
        _render(values)
    assert message in str(exc.value)
