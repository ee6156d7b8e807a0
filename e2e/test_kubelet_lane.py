"""The deployed lane on a cluster whose kubelet runs pods: images built, pushed, signed and
attested; the chart installed as a release of its own; the quick-start policy applied; an
honest and a cheating app pod from the bundled model; admission, injection, challenges,
PolicyReports, ``samplerguard report``, every component's metrics; faults (a restarted
verifier and operator, a rotated webhook certificate, a lost DRBG Secret); and last, the policy
requiring a gateway's request tickets.

Runs outside CI. It skips unless ``KUBECONFIG`` names a cluster with a Ready node and
``SG_E2E_REGISTRY`` names a registry that the test host pushes to and the nodes pull from:

=============================  ===========================================================
``SG_E2E_REGISTRY``            ``host:port`` of that registry
``SG_E2E_REGISTRY_PLAIN_HTTP`` ``1`` (default): the registry speaks plain HTTP
``SG_E2E_BUILDER``             ``buildah``, ``podman`` or ``docker`` (default: the first found)
``SG_E2E_BUILD_ARGS``          extra arguments for every build (build arguments, mounts)
``SG_E2E_TAG``                 the images' tag (default ``e2e``)
``SG_E2E_KEEP``                ``1``: leave the release and the app pods running at the end
=============================  ===========================================================

It creates the namespaces ``sg-kubelet-e2e`` (the release) and ``sg-kubelet-e2e-app``, the
release's cluster-scoped objects and the ClusterSamplerPolicy ``sg-kubelet-e2e``, and removes
all of them, and its entries in the shared ClusterPolicyReport, when it ends (unless
``SG_E2E_KEEP=1``). The pushed images
stay in the registry. Pods opt in through the label ``samplerguard.dev/e2e-enforce`` (the
release's ``optInLabel``), so another installation on the same cluster does not inject them.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cleanup import drop_cluster_report_entries

# image builds in the first test's fixtures take minutes; each wait below has its own bound
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]
REPO = Path(__file__).resolve().parents[1]
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or "/opt/k8s/bin/kubectl"
REGISTRY = os.environ.get("SG_E2E_REGISTRY", "")
PLAIN_HTTP = os.environ.get("SG_E2E_REGISTRY_PLAIN_HTTP", "1") == "1"
TAG = os.environ.get("SG_E2E_TAG", "e2e")
BUILDER = os.environ.get("SG_E2E_BUILDER") or next(
    (b for b in ("buildah", "podman", "docker") if shutil.which(b)), ""
)
BUILD_ARGS = shlex.split(os.environ.get("SG_E2E_BUILD_ARGS", ""))
COMPONENTS = ("operator", "webhook", "sidecar", "verifier")
NS, APP_NS, REL, POLICY = "sg-kubelet-e2e", "sg-kubelet-e2e-app", "sgk", "sg-kubelet-e2e"
OPT_IN = "samplerguard.dev/e2e-enforce"
BUILDER_ID = "https://samplerguard.dev/demo-builder@v1"
SOURCE = "git+https://github.com/samplerguard/samplerguard"
REF = "refs/heads/main"


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [KUBECTL, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out


def _json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def _wait(what: str, fn: Callable[[], Any], timeout: float = 300.0, every: float = 3.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _kubelet_ready() -> bool:
    out = kubectl("get", "nodes", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    for node in json.loads(out.stdout).get("items", []):
        for cond in node.get("status", {}).get("conditions", []):
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                return True
    return False


@pytest.fixture(scope="module", autouse=True)
def _needs_a_kubelet() -> None:
    if not REGISTRY:
        pytest.skip("the kubelet lane needs SG_E2E_REGISTRY (a registry the nodes pull from)")
    if not BUILDER:
        pytest.skip("the kubelet lane needs buildah, podman or docker (SG_E2E_BUILDER)")
    if not _kubelet_ready():
        pytest.skip("the kubelet lane needs a cluster with a Ready node (a kubelet)")


# -- images ------------------------------------------------------------------------------------


def _ref(name: str) -> str:
    return f"{REGISTRY}/samplerguard/{name}:{TAG}"


def _build(containerfile: Path, ref: str, context: Path, *extra: str) -> None:
    cmd = [BUILDER, "build", *BUILD_ARGS, *extra, "-f", str(containerfile), "-t", ref, str(context)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, f"{shlex.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    push = [BUILDER, "push"]
    if PLAIN_HTTP and BUILDER != "docker":
        push.append("--tls-verify=false")
    push += [ref] if BUILDER == "docker" else [ref, f"docker://{ref}"]
    out = subprocess.run(push, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"{shlex.join(push)}: {out.stderr[-2000:]}"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build and push the four images and the app images; sign and attest all but one."""
    from samplerguard.sidecar.integrity import weights_file_digest
    from samplerguard.supplychain.registry import RegistryClient
    from tests.support.publish import (
        Signer,
        attest_image,
        sign_image,
        slsa_v1_predicate,
    )

    for c in COMPONENTS:
        _build(REPO / c / "Containerfile", _ref(c), REPO)
    app = REPO / "e2e" / "app"
    base = f"--build-arg=BASE={_ref('sidecar')}"
    _build(app / "Containerfile", _ref("digits-app"), app, base)
    _build(app / "Containerfile", _ref("unsigned-app"), app, base, "--build-arg=VARIANT=unsigned")

    signer = Signer.generate()
    client = RegistryClient(plain_http=[REGISTRY] if PLAIN_HTTP else [])
    weights = weights_file_digest(REPO / "src/samplerguard/models/weights/digits-unet.safetensors")
    predicate = slsa_v1_predicate(
        builder_id=BUILDER_ID,
        repository=SOURCE,
        ref=REF,
        ml_artifacts={"model-weights": ("digits-unet.safetensors", weights)},
    )
    digests = {}
    for name in (*COMPONENTS, "digits-app", "unsigned-app"):
        digests[name] = client.resolve(_ref(name))
        if name == "unsigned-app":
            continue
        sign_image(client, _ref(name), digests[name], signer)
        attest_image(
            client, _ref(name), digests[name], signer, "https://slsa.dev/provenance/v1", predicate
        )
    return {"public_key": signer.public_pem, "digests": digests}


# -- the release -------------------------------------------------------------------------------


def _render() -> list[dict[str, Any]]:
    import helm_python as helm

    values = {
        # the tag is rebuilt by every run: a node must not keep a previous run's image
        "image": {"repository": f"{REGISTRY}/samplerguard", "tag": TAG, "pullPolicy": "Always"},
        "registries": {"plainHttp": [REGISTRY] if PLAIN_HTTP else []},
        "optInLabel": OPT_IN,
        "sidecar": {"namespaces": [APP_NS]},
        "verifier": {"policy": f"ClusterSamplerPolicy/{POLICY}", "namespace": APP_NS},
        "operator": {"auditInterval": "30s", "certCheck": "10s"},
    }
    rendered = helm.Chart.load(REPO / "charts" / "samplerguard").render(
        values, name=REL, namespace=NS, is_install=True
    )
    return [
        d
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]


def _terminating(namespace: str) -> bool:
    out = kubectl("get", "namespace", namespace, "-o", "json", check=False)
    return out.returncode == 0 and json.loads(out.stdout)["status"]["phase"] == "Terminating"


def _pods(selector: str, namespace: str = NS) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def _rollout(kind: str, name: str) -> None:
    out = kubectl("rollout", "status", "-n", NS, f"{kind}/{name}", "--timeout=420s", timeout=450)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def release(images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from samplerguard.policy.adapt import adapt

    tmp = tmp_path_factory.mktemp("kubelet")
    docs = _render()
    manifest = tmp / "release.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    policy = adapt(
        yaml.safe_load((REPO / "policies" / "quickstart.yaml").read_text()),
        registry=REGISTRY,
        public_key=images["public_key"],
    )
    policy["metadata"]["name"] = POLICY
    try:
        kubectl("apply", "--server-side", "-f", str(REPO / "charts" / "samplerguard" / "crds"))
        kubectl("wait", "--for", "condition=established", "crd", "--all", "--timeout=60s")
        for ns in (NS, APP_NS):
            # a previous run's namespace may still be terminating
            _wait(f"namespace {ns} gone", lambda n=ns: not _terminating(n), timeout=180)
            kubectl("create", "namespace", ns, check=False)
        # no -n: the release spans namespaces (the operator's DRBG Role in the app's)
        kubectl("apply", "-f", str(manifest))
        _rollout("deployment", f"{REL}-operator")
        _rollout("deployment", f"{REL}-webhook")
        # the webhook validates policies (failurePolicy Fail): apply it once the webhook serves
        _wait(
            "the policy accepted",
            lambda: (
                kubectl("apply", "-f", "-", stdin=json.dumps(policy), check=False).returncode == 0
            ),
            timeout=120,
        )
        _rollout("statefulset", f"{REL}-verifier")
        kubectl(
            "wait",
            "--for=condition=Ready",
            f"clustersamplerpolicy/{POLICY}",
            "--timeout=120s",
            timeout=150,
        )
        kubectl("label", "namespace", APP_NS, f"{OPT_IN}=true", "--overwrite")
        yield {"tmp": tmp, "images": images, "policy": policy}
    finally:
        if os.environ.get("SG_E2E_KEEP") != "1":  # else left running to look at or measure
            kubectl(
                "delete", "namespace", APP_NS, "--ignore-not-found", "--timeout=120s", check=False
            )
            kubectl("delete", "-f", str(manifest), "--ignore-not-found", check=False)
            kubectl("delete", "clustersamplerpolicy", POLICY, "--ignore-not-found", check=False)
            kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)
            drop_cluster_report_entries(KUBECTL, policies={POLICY}, namespaces={NS, APP_NS})


def _app_pod(name: str, image: str, cheat: bool = False) -> dict[str, Any]:
    env = [{"name": "INTERVAL", "value": "8"}]
    if cheat:
        env.append({"name": "CHEAT", "value": "substitute"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": APP_NS},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "env": env,
                    "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
                }
            ]
        },
    }


def _ready(name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = _json("get", "pod", "-n", APP_NS, name)
    statuses = [
        *pod["status"].get("initContainerStatuses", []),
        *pod["status"].get("containerStatuses", []),
    ]
    running = [s for s in statuses if "running" in (s.get("state") or {})]
    if len(running) == 2 and all(s.get("ready") for s in running):
        return pod
    return None


@pytest.fixture(scope="module")
def apps(release: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pods = {}
    for name, cheat in (("honest", False), ("cheat", True)):
        kubectl("apply", "-f", "-", stdin=json.dumps(_app_pod(name, _ref("digits-app"), cheat)))
    for name in ("honest", "cheat"):
        pods[name] = _wait(f"pod {name} Ready 2/2", lambda n=name: _ready(n), timeout=420)
    return pods


def _results(pod: str | None = None) -> list[dict[str, Any]]:
    out = kubectl("get", "policyreport", "-n", APP_NS, "samplerguard", "-o", "json", check=False)
    if out.returncode != 0:
        return []
    results: list[dict[str, Any]] = json.loads(out.stdout).get("results", [])
    return [
        r
        for r in results
        if r.get("policy") == POLICY
        and r.get("rule") == "trajectory-recheck"
        and (pod is None or any(x.get("name") == pod for x in r.get("resources", [])))
    ]


def _count(results: list[dict[str, Any]], outcome: str) -> int:
    return sum(
        int((r.get("properties") or {}).get("count", "1"))
        for r in results
        if r.get("result") == outcome
    )


def _proxy(pod: str, namespace: str, port: str, path: str) -> str:
    raw = f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}"
    return kubectl("get", "--raw", raw).stdout


# -- admission ---------------------------------------------------------------------------------


def test_the_unsigned_image_is_denied_with_its_reason(release: dict[str, Any]) -> None:
    pod = _app_pod("unsigned", _ref("unsigned-app"))
    out = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
    assert out.returncode != 0
    assert "denied the request" in out.stderr
    assert f"image {_ref('unsigned-app')}" in out.stderr
    assert "0 of 1 authorities verified" in out.stderr


def test_the_honest_pod_is_admitted_pinned_injected_and_ready(
    apps: dict[str, dict[str, Any]], images: dict[str, Any]
) -> None:
    pod = apps["honest"]
    assert pod["metadata"]["annotations"]["samplerguard.dev/injected"] == "true"
    spec = pod["spec"]
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert app["image"].endswith("@" + images["digests"]["digits-app"])
    init = {c["name"]: c for c in spec["initContainers"]}
    assert init["samplerguard-sidecar"]["image"].endswith("@" + images["digests"]["sidecar"])
    assert init["samplerguard-sidecar"]["restartPolicy"] == "Always"
    logs = _wait(
        "the app's first committed generation",
        lambda: (
            "committed: True"
            in (out := kubectl("logs", "-n", APP_NS, "honest", "-c", "app", check=False).stdout)
            and out
        ),
        timeout=300,
    )
    assert "hook installed: True" in logs


# -- challenges --------------------------------------------------------------------------------


def test_honest_requests_are_challenged_and_pass(apps: dict[str, dict[str, Any]]) -> None:
    results = _wait("pass results for the honest pod", lambda: _results("honest"), timeout=420)
    _wait("two passes", lambda: _count(_results("honest"), "pass") >= 2, timeout=300)
    results = _results("honest")
    assert _count(results, "fail") == 0, results
    assert _count(results, "pass") >= 2


def test_the_honest_pods_noise_comes_from_the_sidecars_drbg(
    apps: dict[str, dict[str, Any]],
) -> None:
    """The quick-start policy asks for ctr-drbg: the app is wired for it, the namespace's DRBG
    Secret (made by the operator) reaches the sidecar alone, and the verifier regenerates each
    challenged request's noise from the escrow ("seed-health" passes)."""
    spec = apps["honest"]["spec"]
    app = next(c for c in spec["containers"] if c["name"] == "app")
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["SAMPLERGUARD_RNG_MODE"] == "ctr-drbg"
    volume = next(v for v in spec["volumes"] if v["name"] == "samplerguard-drbg")
    assert volume["secret"]["secretName"] == f"{REL}-drbg"
    for c in spec["containers"] + spec["initContainers"]:
        mounted = any(m["name"] == "samplerguard-drbg" for m in c.get("volumeMounts", []))
        assert mounted == (c["name"] == "samplerguard-sidecar"), c["name"]
    secret = _json("get", "secret", "-n", APP_NS, f"{REL}-drbg")
    assert set(secret["data"]) == {"master-secret", "escrow-public.pem"}
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "samplerguard-operator"

    def seed_checks() -> list[dict[str, Any]]:
        out = kubectl("get", "policyreport", "-n", APP_NS, "samplerguard", "-o", "json")
        return [
            r
            for r in json.loads(out.stdout).get("results", [])
            if r.get("policy") == POLICY
            and r.get("rule") == "seed-health"
            and any(x.get("name") == "honest" for x in r.get("resources", []))
        ]

    checks = _wait("the honest pod's noise checked against its escrow", seed_checks, timeout=300)
    assert _count(checks, "pass") >= 1 and _count(checks, "fail") == 0, checks
    assert "match the escrow" in checks[0]["message"]
    # the master secret reaches no log
    logs = kubectl("logs", "-n", APP_NS, "honest", "-c", "app").stdout
    sidecar_logs = kubectl("logs", "-n", APP_NS, "honest", "-c", "samplerguard-sidecar").stdout
    master = base64.b64decode(secret["data"]["master-secret"]).decode()
    assert master not in logs and master not in sidecar_logs


def test_the_cheating_pods_requests_fail_with_the_reason(apps: dict[str, dict[str, Any]]) -> None:
    failed = _wait(
        "a failed re-check of the cheating pod",
        lambda: [r for r in _results("cheat") if r.get("result") == "fail"],
        timeout=420,
    )
    message = failed[0]["message"]
    assert "relL2" in message and "tau" in message, message
    events = _json("get", "events", "-n", APP_NS, "--field-selector", "involvedObject.name=cheat")
    assert any(e.get("reason") == "VerificationFailed" for e in events["items"])


def test_both_appear_in_the_reports_and_the_cli(
    apps: dict[str, dict[str, Any]], release: dict[str, Any]
) -> None:
    _wait("results for both pods", lambda: _results("honest") and _results("cheat"), timeout=420)

    def rolled_up() -> set[str]:
        results = _json("get", "clusterpolicyreport", "samplerguard-cluster").get("results", [])
        outcomes = {
            r["result"]
            for r in results
            if r.get("policy") == POLICY
            and any(x.get("name") == APP_NS for x in r.get("resources", []))
        }
        return outcomes if outcomes >= {"pass", "fail"} else set()

    # the operator refreshes the cluster-wide roll-up on its own schedule
    _wait("the ClusterPolicyReport roll-up of both verdicts", rolled_up, timeout=300)
    out = release["tmp"] / "report.md"
    done = subprocess.run(
        [sys.executable, "-m", "samplerguard", "report", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    # the failures table names the cheating pod and why; the passes are in the summary counts
    assert f"| Pod {APP_NS}/cheat | {POLICY} | trajectory-recheck |" in text, text
    assert f"| Pod {APP_NS}/honest | PASS |" in text, text
    assert "rel-L2 > τ" in text
    recheck = next(line for line in text.splitlines() if line.startswith("| trajectory-recheck |"))
    assert int(recheck.split("|")[2]) >= 1, recheck  # passes (the honest pod's)


# -- telemetry ---------------------------------------------------------------------------------


def test_every_component_serves_its_metrics(apps: dict[str, dict[str, Any]]) -> None:
    _wait("a judged trajectory", lambda: _results("honest"), timeout=420)
    wanted = {
        ("webhook", "https", "8443"): "samplerguard_admission_duration_seconds_bucket",
        ("operator", "https", "8443"): "samplerguard_operator_results_total",
        ("verifier", "http", "9472"): "samplerguard_recheck_duration_seconds_bucket",
    }
    for (component, scheme, port), metric in wanted.items():
        # each replica exports what it served: with two webhook replicas the Service may have
        # sent every admission to one of them, whose histogram is the one that has buckets
        pods = [p["metadata"]["name"] for p in _pods(f"app.kubernetes.io/component={component}")]
        prefix = "https:" if scheme == "https" else ""

        def scraped(
            names: list[str] = pods, x: str = prefix, q: str = port, m: str = metric
        ) -> str:
            texts = [_proxy(f"{x}{name}", NS, q, "/metrics") for name in names]
            return next((t for t in texts if m in t), "")

        text = _wait(f"{metric} from a {component} replica", scraped, timeout=120)
        assert "# TYPE" in text
    sidecar = _proxy("honest", APP_NS, "9471", "/metrics")
    assert "samplerguard_ingest_duration_seconds_bucket" in sidecar
    assert 'outcome="committed"' in sidecar


# -- faults ------------------------------------------------------------------------------------


_KILL_SIDECAR = (
    "import os, signal\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    if int(pid) == os.getpid():\n"
    "        continue\n"
    "    try:\n"
    "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
    "    except OSError:\n"
    "        continue\n"
    "    if b'sidecar' in cmd and any(c.endswith(b'samplerguard') for c in cmd):\n"
    "        os.kill(int(pid), signal.SIGKILL)\n"
    "        print('killed', pid)\n"
)


def _sidecar_restarts(pod: str) -> int:
    statuses = _json("get", "pod", "-n", APP_NS, pod)["status"].get("initContainerStatuses", [])
    return sum(s.get("restartCount", 0) for s in statuses if s["name"] == "samplerguard-sidecar")


def test_a_killed_sidecar_restarts_and_nothing_committed_is_lost(
    apps: dict[str, dict[str, Any]],
) -> None:
    _wait("a pass before the fault", lambda: _count(_results("honest"), "pass") >= 1, timeout=420)
    before, restarts = _count(_results("honest"), "pass"), _sidecar_restarts("honest")
    out = kubectl(
        "exec",
        "-n",
        APP_NS,
        "honest",
        "-c",
        "samplerguard-sidecar",
        "--",
        "python",
        "-c",
        _KILL_SIDECAR,
        check=False,
    )
    assert "killed" in out.stdout, out.stdout + out.stderr
    _wait("the sidecar's restart", lambda: _sidecar_restarts("honest") > restarts, timeout=180)
    _wait("pod honest Ready 2/2 again", lambda: _ready("honest"), timeout=300)
    _wait(
        "new passes from the restarted sidecar",
        lambda: _count(_results("honest"), "pass") > before,
        timeout=420,
    )
    assert _count(_results("honest"), "fail") == 0, _results("honest")


def test_a_deleted_verifier_comes_back_and_keeps_judging(apps: dict[str, dict[str, Any]]) -> None:
    before = _count(_results("honest"), "pass")
    kubectl("delete", "pod", "-n", NS, f"{REL}-verifier-0", "--wait=false")
    _rollout("statefulset", f"{REL}-verifier")
    _wait(
        "new passes after the verifier restarted",
        lambda: _count(_results("honest"), "pass") > before,
        timeout=420,
    )
    assert _count(_results("honest"), "fail") == 0


def test_a_restarted_operator_keeps_recording(apps: dict[str, dict[str, Any]]) -> None:
    before = _count(_results("honest"), "pass")
    kubectl("delete", "pod", "-n", NS, "-l", "app.kubernetes.io/component=operator", "--wait=false")
    _rollout("deployment", f"{REL}-operator")
    _wait(
        "results recorded by the new operator replicas",
        lambda: _count(_results("honest"), "pass") > before,
        timeout=420,
    )
    status = _json("get", "clustersamplerpolicy", POLICY)["status"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])


def test_a_rotated_webhook_certificate_keeps_admission_closed_and_working(
    apps: dict[str, dict[str, Any]],
) -> None:
    """A new CA and serving certificate: admission goes on through it, and the verifier, which
    verifies the operator's certificate against the mounted CA, keeps delivering results."""
    secret = f"{REL}-webhook-tls"
    old = _json("get", "secret", "-n", NS, secret)["data"]["ca.crt"]
    before = _count(_results("honest"), "pass")
    kubectl("delete", "secret", "-n", NS, secret)
    _wait(
        "a new serving certificate",
        lambda: (
            (
                out := kubectl("get", "secret", "-n", NS, secret, "-o", "json", check=False)
            ).returncode
            == 0
            and json.loads(out.stdout)["data"]["ca.crt"] != old
        ),
        timeout=180,
    )

    def admits_signed() -> bool:
        pod = _app_pod("rotated", _ref("digits-app"))
        return (
            kubectl(
                "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False
            ).returncode
            == 0
        )

    _wait("admission through the new certificate", admits_signed, timeout=240, every=5)
    unsigned = _app_pod("unsigned", _ref("unsigned-app"))
    out = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(unsigned), check=False)
    assert out.returncode != 0 and "0 of 1 authorities verified" in out.stderr
    _wait(
        "passes delivered to the operator under the new CA",
        lambda: _count(_results("honest"), "pass") > before,
        timeout=420,
    )


def test_a_lost_drbg_secret_is_made_again_and_the_verifier_still_opens_old_escrows(
    apps: dict[str, dict[str, Any]],
) -> None:
    """Losing a namespace's master secret loses nothing: the operator makes a new one (an Event
    on the Secret says so), the running sidecar takes it up from its updated volume without a
    restart, the requests issued from it pass, and the escrows already made (sealed to the
    verifier's key, which did not change) still open."""
    name = f"{REL}-drbg"
    old = _json("get", "secret", "-n", APP_NS, name)["data"]["master-secret"]
    restarts = _sidecar_restarts("honest")

    def made_events() -> list[dict[str, Any]]:
        return [
            e
            for e in _json("get", "events", "-n", APP_NS)["items"]
            if e.get("reason") in ("DrbgSecretRecreated", "DrbgSecretCreated")
            and e["involvedObject"].get("kind") == "Secret"
            and e["involvedObject"].get("name") == name
        ]

    def sidecar_log() -> str:
        out = kubectl("logs", "-n", APP_NS, "honest", "-c", "samplerguard-sidecar", check=False)
        return out.stdout

    made_before = len(made_events())
    changed_before = sidecar_log().count("DRBG master secret changed")
    kubectl("delete", "secret", "-n", APP_NS, name)
    _wait(
        "a new DRBG Secret from the operator",
        lambda: (
            (
                out := kubectl("get", "secret", "-n", APP_NS, name, "-o", "json", check=False)
            ).returncode
            == 0
            and json.loads(out.stdout)["data"]["master-secret"] != old
        ),
        timeout=120,
    )
    event = _wait("an Event on the re-made Secret", lambda: made_events()[made_before:], 120)[-1]
    assert "escrows already made still open" in event["message"], event
    # the kubelet writes the new Secret into the running pod's volume (its sync period), and the
    # sidecar looks at the file at most every few seconds
    _wait(
        "the running sidecar taking up the new secret",
        lambda: sidecar_log().count("DRBG master secret changed") > changed_before,
        timeout=300,
    )
    assert _sidecar_restarts("honest") == restarts
    before = _count(_results("honest"), "pass")
    _wait(
        "passes from seeds of the new secret",
        lambda: _count(_results("honest"), "pass") > before,
        timeout=420,
    )
    assert _count(_results("honest"), "fail") == 0, _results("honest")
    new = _json("get", "secret", "-n", APP_NS, name)["data"]["master-secret"]
    text = sidecar_log()
    for secret in (old, new):
        assert base64.b64decode(secret).decode() not in text


def test_under_request_tickets_only_the_gateways_requests_get_seeds(
    apps: dict[str, dict[str, Any]],
) -> None:
    """The policy starts requiring request tickets signed by a gateway's key. The honest pod,
    whose requests carry none, is refused its seeds by its sidecar (nothing of its own choosing
    to shop among); a pod that serves each request under the gateway's ticket (mounted from a
    ConfigMap, as a server passes on what the gateway forwarded) commits them, and the
    verifier, holding the same policy, passes them."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from samplerguard.commitment.ticket import issue_ticket

    gateway = Ed25519PrivateKey.generate()
    pem = gateway.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    run = os.urandom(4).hex()
    tickets = {
        f"gw-{n}.json": json.dumps(
            issue_ticket(gateway, request_id=f"gw-{run}-{n}", tenant=APP_NS, lifetime=3600)
        )
        for n in range(1, 61)
    }
    rule: dict[str, Any] = {
        "signers": [{"name": "e2e-gateway", "publicKey": pem.decode()}],
        "maxLifetimeSeconds": 3600,
    }
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "gateway-tickets", "namespace": APP_NS},
        "data": tickets,
    }
    pod = _app_pod("ticketed", _ref("digits-app"))
    app = pod["spec"]["containers"][0]
    app["env"].append({"name": "TICKETS", "value": "/tickets"})
    app["volumeMounts"] = [{"name": "tickets", "mountPath": "/tickets", "readOnly": True}]
    pod["spec"]["volumes"] = [
        {"name": "tickets", "configMap": {"name": "gateway-tickets"}},
    ]
    patch = {"spec": {"rng": {"tickets": rule}}}
    try:
        kubectl("apply", "-f", "-", stdin=json.dumps(configmap))
        kubectl("patch", "clustersamplerpolicy", POLICY, "--type", "merge", "-p", json.dumps(patch))
        kubectl("apply", "-f", "-", stdin=json.dumps(pod))
        _wait("pod ticketed Ready 2/2", lambda: _ready("ticketed"), timeout=420)

        def app_log(name: str) -> str:
            return kubectl("logs", "-n", APP_NS, name, "-c", "app", check=False).stdout

        # the honest pod's sidecar takes up the policy (its refresh) and refuses its seeds
        _wait(
            "the honest pod refused its seeds",
            lambda: "requires a request ticket" in app_log("honest"),
            timeout=240,
        )
        _wait(
            "ticketed generations committed",
            lambda: app_log("ticketed").count("committed: True") >= 2,
            timeout=300,
        )
        log = app_log("ticketed")
        assert "under the gateway's ticket gw-1.json" in log
        assert "requires a request ticket" not in log, log[-2000:]
        _wait(
            "passes for the ticketed pod",
            lambda: _count(_results("ticketed"), "pass") >= 2,
            timeout=420,
        )
        assert _count(_results("ticketed"), "fail") == 0, _results("ticketed")
    finally:
        kubectl("delete", "pod", "-n", APP_NS, "ticketed", "--ignore-not-found", check=False)
        kubectl(
            "patch",
            "clustersamplerpolicy",
            POLICY,
            "--type",
            "json",
            "-p",
            json.dumps([{"op": "remove", "path": "/spec/rng/tickets"}]),
            check=False,
        )
        kubectl("delete", "configmap", "-n", APP_NS, "gateway-tickets", check=False)
