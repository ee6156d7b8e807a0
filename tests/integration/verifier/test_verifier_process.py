"""The real ``samplerguard verifier`` against a real sidecar: cheaters caught, faults reported."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from samplerguard.demo.services import make_token, run_round, start_sidecar, start_verifier
from samplerguard.policy.report import ReportResult, read_audit_log
from tests.support.dataplane import generate, make_model, write_policy

pytestmark = pytest.mark.slow


def _results(audit: Path) -> dict[str, list[ReportResult]]:
    out: dict[str, list[ReportResult]] = {}
    for r in read_audit_log(audit, strict=True):
        out.setdefault(r.properties.get("trajectoryId", r.message), []).append(r)
    return out


def _recheck(results: list[ReportResult]) -> ReportResult:
    [r] = [r for r in results if r.rule == "trajectory-recheck"]
    return r


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("verifier")
    model = make_model(root, seed=0)
    substitute = make_model(root, seed=1)
    policy = write_policy(root / "policy.yaml", model.digest, k=3)
    token = make_token(root / "token")
    sidecar = start_sidecar(root / "run", token_file=token, policy=policy, model_files=[model.path])
    sock = Path(sidecar.ready["socket"])
    verifier = None
    try:
        d = model.digest
        generate(sock, model.unet, "honest-1", declared_digest=d)
        generate(sock, model.unet, "honest-2", declared_digest=d, sampler="euler_ancestral")
        generate(sock, substitute.unet, "cheat-model", declared_digest=d)
        generate(sock, model.unet, "cheat-steps", declared_digest=d, steps=4, declared_steps=8)
        generate(sock, model.unet, "cheat-cfg", declared_digest=d, cfg=1.0, declared_cfg=5.0)
        for seed, tid in enumerate(("corrupt", "forged", "replayed"), start=10):
            generate(sock, model.unet, tid, declared_digest=d, seed=seed)
        store = root / "run" / "openings"
        # a corrupted stored opening: flip one byte of every stored step latent
        index = json.loads((store / "corrupt.json").read_text())
        data = bytearray((store / "corrupt.bin").read_bytes())
        for key, (offset, *_rest) in index["tensors"].items():
            if key.startswith("s") and key.endswith("/latent"):
                data[offset] ^= 0x40
        (store / "corrupt.bin").write_bytes(bytes(data))
        # a forged commitment: another signature in the envelope
        forged = json.loads((store / "forged.json").read_text())
        forged["envelope"]["signatures"][0]["sig"] = base64.b64encode(b"\x01" * 64).decode()
        (store / "forged.json").write_text(json.dumps(forged))
        # a replayed commitment: honest-1's envelope served for another trajectory
        replayed = json.loads((store / "replayed.json").read_text())
        replayed["envelope"] = json.loads((store / "honest-1.json").read_text())["envelope"]
        (store / "replayed.json").write_text(json.dumps(replayed))

        audit = root / "audit.jsonl"
        verifier = start_verifier(
            root / "state",
            sidecars=[sidecar.url],
            token_file=token,
            policy=policy,
            audit_log=audit,
            reference_models={"digits": model.path},
        )
        counts = run_round(verifier)
        yield {
            "root": root,
            "counts": counts,
            "audit": audit,
            "sidecar": sidecar,
            "verifier": verifier,
            "token": token,
            "policy": policy,
            "model": model,
        }
    finally:
        if verifier is not None:
            verifier.stop()
        sidecar.stop()


def test_honest_providers_pass(audited: dict[str, Any]) -> None:
    results = _results(audited["audit"])
    for tid in ("honest-1", "honest-2"):
        recheck = _recheck(results[tid])
        assert recheck.result == "pass", recheck.message
        assert recheck.metric("relL2") == 0.0
        [recipe] = [r for r in results[tid] if r.rule == "recipe"]
        assert recipe.result == "pass" and recipe.metric("guidance") == 3.0
        assert recipe.resources[0].kind == "Pod"


@pytest.mark.parametrize(
    ("tid", "cause", "checks"),
    [
        ("cheat-model", r"relL2 .* > tau", {None}),
        (
            "cheat-steps",
            r"declared sampler runs 8 steps .* commitment has 4"
            r"|committed schedule (digest )?differs"
            r"|set with \{'num_inference_steps': 4\}.*a custom schedule",
            {"sampler", "schedule"},
        ),
        # guidance off while declaring 3: the UNet saw one label per sample where the declared
        # guidance batches two, so the committed labels are not the request's (or a step fails)
        (
            "cheat-cfg",
            r"relL2 .* > tau|conditioning 'class_labels' is not what the request",
            {None, "request-binding"},
        ),
        ("corrupt", r"opened (input|output) latent digest mismatch", {"digest"}),
        ("forged", r"commitment rejected: DSSE signature check failed", {"signature"}),
        (
            "replayed",
            r"replayed commitment: served for trajectory 'replayed' but signed for "
            r"request 'honest-1'",
            {"replay"},
        ),
    ],
)
def test_every_cheat_and_fault_is_rejected_with_its_cause(
    audited: dict[str, Any], tid: str, cause: str, checks: set[str | None]
) -> None:
    """The message says why; the ``check`` property (absent for a step over tau) names the
    failed check, for reports and metrics to branch on."""
    recheck = _recheck(_results(audited["audit"])[tid])
    assert recheck.result == "fail"
    assert recheck.severity == "high"
    import re

    assert re.search(cause, recheck.message), recheck.message
    assert recheck.properties.get("check") in checks, recheck.properties
    if tid == "replayed":
        assert recheck.properties["found"] == "honest-1"
        assert recheck.properties["expected"] == "replayed"


def test_counts(audited: dict[str, Any]) -> None:
    counts = audited["counts"]
    assert counts["judged"] == 8
    assert counts["passed"] == 2 and counts["failed"] == 6


def _silent_server() -> tuple[socket.socket, str]:
    """Accepts connections and never answers: a hung sidecar."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.getsockname()[1]}"


def test_restart_rechallenges_nothing_loses_nothing_and_reports_bad_sidecars(
    audited: dict[str, Any],
) -> None:
    root: Path = audited["root"]
    audit: Path = audited["audit"]
    audited["verifier"].stop()
    before = audit.read_text().splitlines()
    # a result judged just before a crash, never delivered: it must reach the audit log
    orphan = ReportResult.build(
        policy="dataplane-test",
        rule="trajectory-recheck",
        result="pass",
        message="judged before the crash",
        trajectoryId="orphan-1",
    )
    with (root / "state" / "journal.jsonl").open("a") as fh:
        fh.write(
            json.dumps({"judged": "x/orphan-1", "root": "ab" * 32, "results": [orphan.to_wire()]})
            + "\n"
        )
        fh.write('{"judged": "x/torn-li')  # a torn last line from the crash
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    silent, silent_url = _silent_server()
    try:
        verifier = start_verifier(
            root / "state",
            sidecars=[audited["sidecar"].url, dead_url, silent_url],
            token_file=audited["token"],
            policy=audited["policy"],
            audit_log=audit,
            reference_models={"digits": audited["model"].path},
            extra_args=["--timeout", "1500ms"],
        )
        try:
            counts = run_round(verifier)
        finally:
            verifier.stop()
    finally:
        silent.close()
    assert counts["judged"] == 0  # nothing already judged is challenged again
    after = audit.read_text().splitlines()
    assert after[: len(before)] == before
    new = [ReportResult.model_validate(json.loads(line)) for line in after[len(before) :]]
    messages = [r.message for r in new]
    assert "judged before the crash" in messages
    errors = [r for r in new if r.result == "error"]
    assert any(dead_url in r.message and "unreachable" in r.message for r in errors), messages
    assert any(silent_url in r.message and "timed out" in r.message for r in errors), messages
