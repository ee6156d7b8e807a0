"""Red-team attacks of an adaptive provider, third pass: the deployed path. The provider owns the
app container, so it speaks the hook ↔ sidecar wire protocol itself (several connections,
aborts, retries, frames rewritten between the real hook and a real sidecar process), but not the
sidecar or its master secret. Each test asserts the attack is refused by the sidecar, rejected by
the real verifier process, or visible; a confirmed bypass is ``xfail(strict=True)`` naming what
it demonstrates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from kubernetes import client as k8s

from samplerguard.commitment.digest import output_bytes
from samplerguard.commitment.request import request_digest
from samplerguard.commitment.ticket import issue_ticket, ticket_digest
from samplerguard.demo.services import (
    ServiceProcess,
    make_token,
    run_round,
    start_sidecar,
    start_verifier,
)
from samplerguard.errors import MalformedInputError, SamplerGuardError
from samplerguard.hook.recorder import Recorder, RecordingError, TrajectoryRequest
from samplerguard.hook.sidecar_sink import SidecarSink
from samplerguard.hook.wire import (
    FRAME_FINAL,
    FRAME_FINISH,
    FRAME_START,
    FRAME_STEP,
    FRAME_STEPS,
    MAGIC,
    PREFIX,
    WIRE_VERSION,
    Frame,
    WireClosedError,
    read_frame,
)
from samplerguard.models.digits import SCHEDULER_CONFIG, StepInputs, guided_eps
from samplerguard.policy.report import read_audit_log
from samplerguard.verifier.discovery import KubernetesDiscovery
from tests.support.dataplane import Model, make_model, write_policy

pytestmark = pytest.mark.slow

STEPS = 6
SEED_TTL = 3
LABELS = [3, 7]
SHAPE = (2, 1, 8, 8)
TENANT = "tenant-a"


# -- the provider's tools: a generation through the real hook, a frame-rewriting proxy -------


def _generate(
    unet: Any,
    digest: str,
    socket_path: str,
    request_id: str,
    *,
    seed_from_sidecar: bool = False,
    tenant: str = TENANT,
    escrow: dict[str, Any] | None = None,
    ticket: dict[str, Any] | None = None,
    labels: list[int] = LABELS,
) -> Any:
    """One Euler digits request through the real hook's plain-loop API and ``SidecarSink``;
    returns the commitment (``None`` when the sidecar refused it). With ``seed_from_sidecar``
    the request's z_N is drawn from the seed the sidecar issues (DRBG mode)."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    scheduler.set_timesteps(STEPS)
    sink = SidecarSink(socket_path, io_timeout=30.0, batch=4)
    if escrow is not None:
        sink.attach_escrow(request_id, json.dumps(escrow))
    if seed_from_sidecar:
        noise = sink.request_noise(tenant, request_id, ticket=ticket)
        first = noise.randn(SHAPE)
        noise.close()
    else:
        first = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    latents = first * scheduler.init_noise_sigma
    params = {
        "requestId": request_id,
        "tenant": tenant,
        "classLabels": labels,
        "steps": STEPS,
        "guidanceScale": 3.0,
    }
    request = TrajectoryRequest(
        request_id=request_id,
        tenant=tenant,
        pipeline="digits",
        model_name="digits",
        model_digest=digest,
        sampler="euler",
        guidance_scale=3.0,
        steps=STEPS,
        rng_mode="ctr-drbg" if seed_from_sidecar or escrow is not None else "framework",
        params=params,
        ticket=ticket,
    )
    inputs = StepInputs(torch.tensor(labels), 3.0)
    recorder = Recorder(sink)
    try:
        with torch.no_grad(), recorder.trajectory(request) as tr:
            tr.begin(scheduler, latents, conditioning={"class_labels": inputs.class_labels})
            for i, t in enumerate(scheduler.timesteps):
                eps = guided_eps(unet, scheduler, latents, t, inputs)
                latents = scheduler.step(eps, t, latents, return_dict=False)[0]
                tr.step(i, t, latents, scheduler)
            tr.end(latents, output_bytes(latents))
    except RecordingError:
        return None  # the sidecar refused it, or the hook noticed a rewritten commitment
    finally:
        recorder.close()
    return tr.commitment


def _raw(kind: int, header: dict[str, Any], body: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(MAGIC, WIRE_VERSION, kind, len(head), len(body)) + head + body


def _split_steps(frame: Frame) -> list[Frame]:
    """A ``STEPS`` frame as the ``STEP`` frames of its records (the sidecar takes both)."""
    out = []
    offset = 0
    body = bytes(frame.body)
    for rec in frame.header["steps"]:
        n = sum(int(spec[3]) for spec in rec["tensors"])
        out.append(Frame(FRAME_STEP, dict(rec), bytearray(body[offset : offset + n])))
        offset += n
    return out


@dataclass
class Rewrite:
    """What the provider's proxy does to one trajectory's frames."""

    start: Callable[[Frame], Frame] = lambda f: f
    #: every step record, in order, and the FINAL frame: returns what reaches the sidecar
    tail: Callable[[list[Frame], Frame], tuple[list[Frame], Frame]] = lambda s, f: (s, f)
    drop_root: bool = False
    seen: list[str] = field(default_factory=list)


class Proxy:
    """The provider in the app container: a Unix socket between the real hook and the real
    sidecar that buffers each trajectory's step records and rewrites them before forwarding."""

    def __init__(self, path: Path, upstream: str, rewrite: Rewrite) -> None:
        self.path, self.upstream, self.rewrite = path, upstream, rewrite
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(8)
        self._server.settimeout(60)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(self.upstream)

        def back() -> None:
            try:
                while data := up.recv(1 << 16):
                    conn.sendall(data)
            except OSError:
                pass
            finally:
                conn.close()

        threading.Thread(target=back, daemon=True).start()
        steps: list[Frame] = []
        try:
            while True:
                frame = read_frame(conn)
                self.rewrite.seen.append(str(frame.kind))
                if frame.kind == FRAME_START:
                    frame = self.rewrite.start(frame)
                if frame.kind == FRAME_STEPS:
                    steps += _split_steps(frame)
                    continue
                if frame.kind == FRAME_STEP:
                    steps.append(frame)
                    continue
                if frame.kind == FRAME_FINAL:
                    sent, frame = self.rewrite.tail(steps, frame)
                    for s in sent:
                        up.sendall(_raw(s.kind, s.header, bytes(s.body)))
                if frame.kind == FRAME_FINISH and self.rewrite.drop_root:
                    frame = Frame(
                        frame.kind,
                        {k: v for k, v in frame.header.items() if k != "root"},
                        frame.body,
                    )
                up.sendall(_raw(frame.kind, frame.header, bytes(frame.body)))
        except (WireClosedError, OSError, MalformedInputError):
            up.close()

    def close(self) -> None:
        self._server.close()


@dataclass
class Deployed:
    model: Model
    sidecar: ServiceProcess
    token: Path
    policy: Path
    escrow_key: X25519PrivateKey | None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> str:
        return str(self.sidecar.ready["socket"])

    def listed(self) -> list[str]:
        headers = {"Authorization": f"Bearer {self.token.read_text().strip()}"}
        doc = httpx.get(self.sidecar.url + "/v1/trajectories", headers=headers, timeout=10).json()
        return [str(e["id"]) for e in doc["trajectories"]]


def _deploy(
    tmp_path: Path,
    *,
    drbg: bool,
    tickets: dict[str, Any] | None = None,
    secret: str | None = None,
) -> Iterator[Deployed]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = make_model(tmp_path, seed=0)
    policy = write_policy(
        tmp_path / "policy.yaml",
        model.digest,
        rng="ctr-drbg" if drbg else "framework",
        fraction=1.0,
        k=STEPS,
    )
    env = {**os.environ, "SAMPLERGUARD_TENANT": TENANT}
    escrow_key = None
    body = yaml.safe_load(policy.read_text())
    body["spec"]["rng"]["escrow"] = drbg
    if tickets is not None:
        body["spec"]["rng"]["tickets"] = tickets
    policy.write_text(yaml.safe_dump(body))
    if drbg:
        (tmp_path / "master-secret").write_text(secret or os.urandom(32).hex())
        escrow_key = X25519PrivateKey.generate()
        pub = escrow_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (tmp_path / "escrow.pub").write_bytes(pub)
        env |= {
            "SAMPLERGUARD_MASTER_SECRET_FILE": str(tmp_path / "master-secret"),
            "SAMPLERGUARD_ESCROW_PUBLIC_KEY": str(tmp_path / "escrow.pub"),
            "SAMPLERGUARD_RNG_MODE": "ctr-drbg",
            # seeds lapse fast here, so a discarded draw shows within the test
            "SAMPLERGUARD_SEED_TTL": f"{SEED_TTL}s",
        }
    token = make_token(tmp_path / "token")
    svc = start_sidecar(
        tmp_path / "run", token_file=token, policy=policy, model_files=[model.path], env=env
    )
    dep = Deployed(model, svc, token, policy, escrow_key, env)
    try:
        yield dep
    finally:
        dep.sidecar.stop()  # the one running now (a test may have restarted it)


@pytest.fixture
def framework_sidecar(tmp_path: Path) -> Iterator[Deployed]:
    yield from _deploy(tmp_path, drbg=False)


@pytest.fixture
def drbg_sidecar(tmp_path: Path) -> Iterator[Deployed]:
    yield from _deploy(tmp_path, drbg=True)


def _verdicts(dep: Deployed, tmp_path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """One round of the real verifier over the sidecar: (rule, result, message) per request."""
    audit = tmp_path / "audit.jsonl"
    extra: list[str] = []
    if dep.escrow_key is not None:
        pem = dep.escrow_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (tmp_path / "escrow.pem").write_bytes(pem)
        extra = ["--escrow-key", str(tmp_path / "escrow.pem")]
    verifier = start_verifier(
        tmp_path / "state",
        sidecars=[dep.sidecar.url],
        token_file=dep.token,
        policy=dep.policy,
        audit_log=audit,
        reference_models={"digits": dep.model.path},
        extra_args=extra,
    )
    try:
        run_round(verifier)
    finally:
        verifier.stop()
    out: dict[str, list[tuple[str, str, str]]] = {}
    for r in read_audit_log(audit, strict=True):
        rid = r.properties.get("requestId", "")
        out.setdefault(rid, []).append((r.rule, r.result, r.message))
    return out


# -- 1. the verifier audits whatever answers as a sidecar ----------------------------------------


def _pod(name: str, sidecar_image: str) -> k8s.V1Pod:
    spec = k8s.V1PodSpec(
        containers=[
            k8s.V1Container(name="app", image="registry.acme/app:1"),
            k8s.V1Container(name="samplerguard-sidecar", image=sidecar_image, args=["sidecar"]),
        ]
    )
    status = k8s.V1ContainerStatus(
        name="samplerguard-sidecar",
        ready=True,
        image=sidecar_image,
        image_id="",
        restart_count=0,
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name,
            namespace="ml",
            uid=f"uid-{name}",
            annotations={"samplerguard.dev/injected": "true"},
        ),
        spec=spec,
        status=k8s.V1PodStatus(phase="Running", pod_ip="10.0.0.9", container_statuses=[status]),
    )


class _Pods:
    def __init__(self, pods: list[k8s.V1Pod]) -> None:
        self.pods = pods

    def list_pod_for_all_namespaces(self, **_: Any) -> k8s.V1PodList:
        return k8s.V1PodList(items=self.pods)


def test_a_provider_container_named_as_the_sidecar_is_not_audited_as_one() -> None:
    """The webhook refuses a pod that brings its own sidecar (tests/unit/webhook); behind it,
    discovery holds the sidecar container to the injected image, and the verifier records a
    pod whose 'sidecar' runs another as a failure without asking it for openings."""
    genuine = _pod("genuine", "ghcr.io/samplerguard/sidecar@sha256:" + "ab" * 32)
    impostor = _pod("impostor", "registry.acme/fake-sidecar:1")
    other_digest = _pod("other", "ghcr.io/samplerguard/sidecar@sha256:" + "cd" * 32)
    discovery = KubernetesDiscovery(
        api=_Pods([genuine, impostor, other_digest]),
        sidecar_image="ghcr.io/samplerguard/sidecar@sha256:" + "ab" * 32,
    )
    found = {t.name: t for t in discovery.targets()}
    assert found["genuine"].refusal == ""
    assert "not the sidecar image" in found["impostor"].refusal
    assert "not the sidecar image" in found["other"].refusal
    # the sidecar's image running another command is no sidecar either
    rerun = _pod("rerun", "ghcr.io/samplerguard/sidecar@sha256:" + "ab" * 32)
    assert rerun.spec is not None
    rerun.spec.containers[1].command = ["python", "-c", "serve_anything()"]
    (target,) = KubernetesDiscovery(
        api=_Pods([rerun]), sidecar_image="ghcr.io/samplerguard/sidecar@sha256:" + "ab" * 32
    ).targets()
    assert "another command" in target.refusal
    # a pod in a namespace the webhook exempts was never injected, whatever it carries
    elsewhere = _pod("elsewhere", "ghcr.io/samplerguard/sidecar@sha256:" + "ab" * 32)
    assert elsewhere.metadata is not None
    elsewhere.metadata.namespace = "kube-system"
    (target,) = KubernetesDiscovery(
        api=_Pods([elsewhere]),
        sidecar_image="ghcr.io/samplerguard/sidecar@sha256:" + "ab" * 32,
        excluded_namespaces=("kube-system",),
    ).targets()
    assert "was not injected" in target.refusal
    # a tag-configured sidecar image pins the repository
    by_tag = KubernetesDiscovery(
        api=_Pods([genuine, impostor]), sidecar_image="ghcr.io/samplerguard/sidecar:0.2"
    )
    assert [t.name for t in by_tag.targets() if not t.refusal] == ["genuine"]


# -- 2. seed shopping ------------------------------------------------------------------------------


def test_seed_shopping_over_fresh_request_ids_is_visible(
    drbg_sidecar: Deployed, tmp_path: Path
) -> None:
    """Without request tickets in the policy the provider names its own request ids: it asks
    for four seeds, keeps the draw it likes and commits that one. The kept one passes (its
    noise is the sidecar's); each discarded draw lapses unbound and is a seed-health warning of
    the pod, naming its request id."""
    dep = drbg_sidecar
    sink = SidecarSink(dep.socket, io_timeout=30.0)
    shopped = [f"shop-{i}" for i in range(4)]
    means = {}
    for rid in shopped:
        noise = sink.request_noise(TENANT, rid)
        means[rid] = float(noise.randn(SHAPE).mean())
        noise.close()
    best = max(means, key=means.__getitem__)
    # the liked draw: its seed is issued once more (the pending one) and committed
    assert _generate(dep.model.unet, dep.model.digest, dep.socket, best, seed_from_sidecar=True)
    time.sleep(SEED_TTL + 1)  # the discarded seeds lapse
    verdicts = _verdicts(dep, tmp_path)
    assert [res for rule, res, _ in verdicts[best] if rule == "trajectory-recheck"] == ["pass"]
    assert not [v for v in verdicts[best] if v[0] == "seed-health" and v[1] != "pass"]
    discarded = set(shopped) - {best}
    for rid in discarded:
        assert [(rule, res) for rule, res, _ in verdicts[rid]] == [("seed-health", "warn")]
        assert "never bound to a committed trajectory (expired)" in verdicts[rid][0][2]
    # the sidecar's ledger holds request ids and times, never a seed
    (ledger_file,) = tmp_path.rglob("seed-ledger.jsonl")
    ledger = ledger_file.read_text()
    assert all(rid in ledger for rid in shopped)
    assert "seed" not in ledger


def test_a_request_id_gets_one_seed_even_after_an_aborted_start(
    drbg_sidecar: Deployed,
) -> None:
    """Same-id shopping: START, see the noise, abort, ask again. The sidecar's noise authority
    claims a (tenant, request id) once, so the second SEED is refused."""
    dep = drbg_sidecar
    rewrite = Rewrite(tail=lambda s, f: ([], Frame(FRAME_STEP, {"index": "x"}, bytearray())))
    proxy = Proxy(Path(dep.socket).parent / "abort.sock", dep.socket, rewrite)
    try:
        assert (
            _generate(
                dep.model.unet,
                dep.model.digest,
                str(proxy.path),
                "again",
                seed_from_sidecar=True,
            )
            is None
        )
    finally:
        proxy.close()
    sink = SidecarSink(dep.socket, io_timeout=30.0)
    with pytest.raises(SamplerGuardError, match="again"):
        sink.request_noise(TENANT, "again")
    # a seed for another tenant is not this pod's to issue
    with pytest.raises(SamplerGuardError, match="not this pod's tenant"):
        sink.request_noise("tenant-b", "other-tenant")
    assert _generate(dep.model.unet, dep.model.digest, dep.socket, "other-tenant") is None
    assert dep.listed() == []


GATEWAY = Ed25519PrivateKey.generate()


def _gateway_policy(key: Ed25519PrivateKey = GATEWAY) -> dict[str, Any]:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"signers": [{"name": "gateway", "publicKey": pem.decode()}], "maxLifetimeSeconds": 600}


def _params(rid: str, labels: list[int] = LABELS) -> dict[str, Any]:
    return {
        "requestId": rid,
        "tenant": TENANT,
        "classLabels": labels,
        "steps": STEPS,
        "guidanceScale": 3.0,
    }


@pytest.fixture
def ticketed_sidecar(tmp_path: Path) -> Iterator[Deployed]:
    yield from _deploy(tmp_path, drbg=True, tickets=_gateway_policy())


def test_seed_shopping_is_prevented_by_gateway_tickets(
    ticketed_sidecar: Deployed, tmp_path: Path
) -> None:
    """Under a policy naming the gateway's key the provider can no longer invent request ids:
    every seed request without the gateway's ticket for exactly that request is refused before
    a seed exists (so none lapses either), a ticket is good for one seed, and the one request the
    gateway forwarded commits, binds its ticket and passes the real verifier."""
    dep = ticketed_sidecar
    sink = SidecarSink(dep.socket, io_timeout=30.0)
    ticket = issue_ticket(
        GATEWAY,
        request_id="paid-1",
        tenant=TENANT,
        request_digest=request_digest(_params("paid-1")),
    )
    refusals = {
        "no ticket": ("shop-1", None, "requires a request ticket"),
        "a key the provider made": (
            "shop-2",
            issue_ticket(Ed25519PrivateKey.generate(), request_id="shop-2", tenant=TENANT),
            "none of the policy's ticket signers",
        ),
        "the real ticket under a fresh id": ("shop-3", ticket, "issued for request 'paid-1'"),
        "an expired ticket": (
            "shop-4",
            issue_ticket(
                GATEWAY, request_id="shop-4", tenant=TENANT, now=time.time() - 400, lifetime=300
            ),
            "expired",
        ),
        "a ticket living past the cap": (
            "shop-5",
            issue_ticket(GATEWAY, request_id="shop-5", tenant=TENANT, lifetime=3600),
            "over the policy's 600 s",
        ),
    }
    for rid, shown, message in refusals.values():
        with pytest.raises(SamplerGuardError, match=message):
            sink.request_noise(TENANT, rid, ticket=shown)
    # the forwarded request, with other labels than the gateway ticketed: refused at START
    assert (
        _generate(
            dep.model.unet,
            dep.model.digest,
            dep.socket,
            "paid-1",
            seed_from_sidecar=True,
            ticket=ticket,
            labels=[1, 1],
        )
        is None
    )
    # its seed was issued (the ticket was good) and the START refused: the id is spent
    with pytest.raises(SamplerGuardError, match="paid-1"):
        sink.request_noise(TENANT, "paid-1", ticket=ticket)
    fresh = issue_ticket(
        GATEWAY,
        request_id="paid-2",
        tenant=TENANT,
        request_digest=request_digest(_params("paid-2")),
    )
    commitment = _generate(
        dep.model.unet, dep.model.digest, dep.socket, "paid-2", seed_from_sidecar=True, ticket=fresh
    )
    assert commitment is not None
    assert commitment.predicate["requestTicket"]["digest"] == ticket_digest(fresh)
    # a replayed ticket gets no second seed
    with pytest.raises(SamplerGuardError, match="paid-2"):
        sink.request_noise(TENANT, "paid-2", ticket=fresh)
    sink.close()
    time.sleep(SEED_TTL + 1)
    verdicts = _verdicts(dep, tmp_path)
    assert dep.listed() == ["paid-2"]
    assert [res for rule, res, _ in verdicts["paid-2"] if rule == "trajectory-recheck"] == ["pass"]
    # nothing was issued to the refused requests, so nothing lapsed but paid-1's seed
    assert set(verdicts) == {"paid-1", "paid-2"}
    assert [(rule, res) for rule, res, _ in verdicts["paid-1"]] == [("seed-health", "warn")]


def _draw(socket_path: str, rid: str, ticket: dict[str, Any]) -> torch.Tensor:
    sink = SidecarSink(socket_path, io_timeout=30.0)
    try:
        noise = sink.request_noise(TENANT, rid, ticket=ticket)
        draw = noise.randn(SHAPE)
        noise.close()
        return draw
    finally:
        sink.close()


def test_one_ticket_is_one_draw_on_every_replica_and_across_a_restart(tmp_path: Path) -> None:
    """The provider presents one ticket to the sidecars of two replicas (one namespace: one
    DRBG master secret, one tenant), and to one sidecar again after restarting it. A ticketed
    request id's seed is derived, not drawn: every presentation gets the same noise, so the
    trajectories it can commit are one and the same, and there is nothing to choose among."""
    dep_a = _deploy(tmp_path / "a", drbg=True, tickets=_gateway_policy())
    a = next(dep_a)
    secret = (tmp_path / "a" / "master-secret").read_text()
    dep_b = _deploy(tmp_path / "b", drbg=True, tickets=_gateway_policy(), secret=secret)
    b = next(dep_b)
    try:
        ticket = issue_ticket(
            GATEWAY,
            request_id="paid-1",
            tenant=TENANT,
            request_digest=request_digest(_params("paid-1")),
        )
        assert torch.equal(_draw(a.socket, "paid-1", ticket), _draw(b.socket, "paid-1", ticket))
        committed = [
            _generate(
                d.model.unet,
                d.model.digest,
                d.socket,
                "paid-1",
                seed_from_sidecar=True,
                ticket=ticket,
            )
            for d in (a, b)
        ]
        assert all(c is not None for c in committed)
        assert committed[0].root == committed[1].root  # the same trajectory, twice
        # a seed issued, the sidecar restarted before the START: the same seed again
        later = issue_ticket(GATEWAY, request_id="paid-2", tenant=TENANT)
        before = _draw(a.socket, "paid-2", later)
        a.sidecar.stop()
        a.sidecar = start_sidecar(
            tmp_path / "a" / "run",
            token_file=a.token,
            policy=a.policy,
            model_files=[a.model.path],
            env=a.env,
        )
        assert torch.equal(_draw(a.socket, "paid-2", later), before)
        # and a committed request id stays refused after the restart
        with pytest.raises(SamplerGuardError, match="paid-1"):
            _draw(a.socket, "paid-1", ticket)
    finally:
        for gen in (dep_a, dep_b):
            with contextlib.suppress(StopIteration):
                next(gen)


def test_a_verifier_requiring_tickets_fails_an_unticketed_commitment(
    drbg_sidecar: Deployed, tmp_path: Path
) -> None:
    """A sidecar whose policy asked for no tickets committed a request; a verifier holding the
    policy that requires them fails it by the ticket check, never passes it."""
    dep = drbg_sidecar
    assert _generate(dep.model.unet, dep.model.digest, dep.socket, "plain", seed_from_sidecar=True)
    body = yaml.safe_load(dep.policy.read_text())
    body["spec"]["rng"]["tickets"] = _gateway_policy()
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(body))
    verdicts = _verdicts(dataclasses.replace(dep, policy=strict), tmp_path)
    ((rule, result, message),) = verdicts["plain"]
    assert (rule, result) == ("recipe", "fail")
    assert "the policy requires one and the trajectory has none" in message


def test_an_app_supplied_escrow_is_refused(drbg_sidecar: Deployed) -> None:
    """The app escrows a seed of its own choosing (here a well-formed escrow of another
    request, sealed to the verifier): the sidecar issues the seeds and escrows itself."""
    dep = drbg_sidecar
    sink = SidecarSink(dep.socket, io_timeout=30.0)
    noise = sink.request_noise(TENANT, "donor")
    noise.close()
    escrow = {"recipient": "sha256:" + "00" * 32, "requestId": "own-escrow"}
    assert (
        _generate(dep.model.unet, dep.model.digest, dep.socket, "own-escrow", escrow=escrow) is None
    )
    assert "issues the seeds and their escrows itself" in dep.sidecar.log_path.read_text()
    assert dep.listed() == []


# -- 3. steps out of order, duplicated, missing; a final latent off the last step ----------------


def _swap(steps: list[Frame], final: Frame) -> tuple[list[Frame], Frame]:
    return [steps[1], steps[0], *steps[2:]], final


def _duplicate(steps: list[Frame], final: Frame) -> tuple[list[Frame], Frame]:
    return [steps[0], *steps], final


def _relabel_duplicate(steps: list[Frame], final: Frame) -> tuple[list[Frame], Frame]:
    """Step 1 replaced by step 0's record under index 1: the model ran once for two steps."""
    again = Frame(FRAME_STEP, {**steps[0].header, "index": 1}, steps[0].body)
    return [steps[0], again, *steps[2:]], final


def _drop_last(steps: list[Frame], final: Frame) -> tuple[list[Frame], Frame]:
    """One step fewer than declared; the FINAL is the last committed step's latent, so the tail
    still matches."""
    kept = steps[:-1]
    latent_spec = next(s for s in kept[-1].header["tensors"] if s[0] == "latent")
    offset = 0
    for spec in kept[-1].header["tensors"]:
        if spec[0] == "latent":
            break
        offset += int(spec[3])
    body = bytes(kept[-1].body)[offset : offset + int(latent_spec[3])]
    return kept, Frame(FRAME_FINAL, {"tensors": [latent_spec]}, bytearray(body))


def _nudge_final(steps: list[Frame], final: Frame) -> tuple[list[Frame], Frame]:
    """A final latent (and output) the provider chose: the last step's latent plus 0.5."""
    spec = final.header["tensors"][0]
    values = torch.frombuffer(bytearray(final.body), dtype=torch.float32) + 0.5
    return steps, Frame(FRAME_FINAL, {"tensors": [spec]}, bytearray(values.numpy().tobytes()))


@pytest.mark.parametrize(
    ("tail", "refusal"),
    [(_swap, "out of order"), (_duplicate, "out of order")],
    ids=["swapped", "duplicated"],
)
def test_steps_out_of_order_are_refused_by_the_sidecar(
    framework_sidecar: Deployed, tail: Any, refusal: str
) -> None:
    dep = framework_sidecar
    proxy = Proxy(Path(dep.socket).parent / "p.sock", dep.socket, Rewrite(tail=tail))
    try:
        got = _generate(dep.model.unet, dep.model.digest, str(proxy.path), "reordered")
    finally:
        proxy.close()
    assert got is None
    assert dep.listed() == []
    assert refusal in dep.sidecar.log_path.read_text()


def test_missing_repeated_or_swapped_tail_steps_fail_the_verifier(
    framework_sidecar: Deployed, tmp_path: Path
) -> None:
    """The hook's root is stripped from FINISH, so the sidecar commits what the proxy sent; the
    verifier must fail every rewritten trajectory and pass the honest one."""
    dep = framework_sidecar
    cases = {"dropped": _drop_last, "nudged": _nudge_final, "relabelled": _relabel_duplicate}
    assert _generate(dep.model.unet, dep.model.digest, dep.socket, "honest")
    for rid, tail in cases.items():
        proxy = Proxy(tmp_path / f"{rid}.sock", dep.socket, Rewrite(tail=tail, drop_root=True))
        try:
            got = _generate(dep.model.unet, dep.model.digest, str(proxy.path), rid)
        finally:
            proxy.close()
        assert rid != "dropped" or got is None  # the hook counts the leaves it sent
    # the sidecar committed the provider's version: the verifier must catch it
    assert set(dep.listed()) == {"honest", *cases}
    verdicts = _verdicts(dep, tmp_path)
    assert ("trajectory-recheck", "pass") in {(r[0], r[1]) for r in verdicts["honest"]}
    for rid in cases:
        outcomes = {(rule, res) for rule, res, _ in verdicts[rid]}
        assert ("trajectory-recheck", "fail") in outcomes, (rid, verdicts[rid])
        assert ("trajectory-recheck", "pass") not in outcomes, rid


def test_start_whose_params_name_another_tenant_is_refused(framework_sidecar: Deployed) -> None:
    """START declares this pod's tenant; the request parameters (and the recipe's digest of
    them, recomputed) name another."""
    from samplerguard.commitment.request import request_digest

    def retenant(frame: Frame) -> Frame:
        header = json.loads(json.dumps(frame.header))
        header["requestParams"]["tenant"] = "tenant-b"
        header["recipe"]["request"] = request_digest(header["requestParams"])
        return Frame(frame.kind, header, frame.body)

    dep = framework_sidecar
    proxy = Proxy(Path(dep.socket).parent / "t.sock", dep.socket, Rewrite(start=retenant))
    try:
        got = _generate(dep.model.unet, dep.model.digest, str(proxy.path), "retenanted")
    finally:
        proxy.close()
    assert got is None
    assert dep.listed() == []
    assert "another request or tenant" in dep.sidecar.log_path.read_text()


# -- 4. malformed and oversized frames -----------------------------------------------------------


def _exchange(path: str, data: bytes) -> dict[str, Any]:
    """Send raw bytes as the first frame; the sidecar's answer (a REPLY frame)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(path)
        sock.sendall(data)
        header: dict[str, Any] = read_frame(sock).header
    return header


def test_malformed_and_oversized_frames_get_a_clear_refusal(framework_sidecar: Deployed) -> None:
    dep = framework_sidecar
    prefix = struct.Struct("!2sBBIQ")
    cases = {
        "not a samplerguard frame": prefix.pack(b"XX", 1, FRAME_START, 2, 0) + b"{}",
        "wire version": prefix.pack(b"SG", 9, FRAME_START, 2, 0) + b"{}",
        "unknown frame kind": prefix.pack(b"SG", 1, 99, 2, 0) + b"{}",
        "exceeds": prefix.pack(b"SG", 1, FRAME_START, (1 << 20) + 1, 0),
        "cap": prefix.pack(b"SG", 1, FRAME_START, 2, 1 << 40) + b"{}",
        "not JSON": prefix.pack(b"SG", 1, FRAME_START, 3, 0) + b"{{{",
        "expected START": _raw(FRAME_STEP, {"index": 0, "tensors": []}, b""),
        "missing or malformed": _raw(
            FRAME_START, {"request": {"tenant": TENANT}, "recipe": {}, "tensors": []}, b""
        ),
    }
    for expected, data in cases.items():
        reply = _exchange(dep.socket, data)
        assert reply.get("ok") is False, (expected, reply)
        assert expected.lower() in str(reply.get("error")).lower(), (expected, reply)
    # the sidecar still serves, and committed nothing from the garbage
    assert _generate(dep.model.unet, dep.model.digest, dep.socket, "after-garbage")
    assert dep.listed() == ["after-garbage"]
