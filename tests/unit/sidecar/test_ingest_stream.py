"""The ingest server in-process over a real Unix socket: a stream is committed only when every
byte the sidecar received hashes into the root the hook announced, and every malformed stream
is refused with its reason and leaves nothing in the store."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.commitment.state import SamplerState
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.trajectory import TrajectoryBuilder
from samplerguard.errors import SamplerGuardError
from samplerguard.hook.sidecar_sink import SidecarSink
from samplerguard.hook.wire import (
    FRAME_FINAL,
    FRAME_FINISH,
    FRAME_START,
    FRAME_STEP,
    encode_frame,
    read_frame,
)
from samplerguard.rng import NoiseAuthority, RequestNoise
from samplerguard.rng.escrow import SeedEscrow, open_escrow
from samplerguard.sidecar.enforce import Admission
from samplerguard.sidecar.ingest import Decision, Gate, IngestServer
from samplerguard.sidecar.ledger import LEDGER_NAME
from samplerguard.sidecar.seeds import SeedIssuer
from samplerguard.sidecar.store import OpeningStore

ZERO = "sha256:" + "0" * 64
OUT = "sha256:" + "1" * 64
Frames = list[tuple[int, dict[str, Any], list[tuple[str, torch.Tensor]]]]


@pytest.fixture(params=["inline", "threaded", "hashlib", "no-spare-core"])
def server(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[IngestServer, Ed25519PrivateKey]]:
    """An ingest server; "threaded" moves each trajectory's hashing onto a digester thread
    after its first 300 bytes (the START frame), as a large trajectory's would be; "hashlib"
    does too, and hashes without the compiled batch hasher (a host that could not build it);
    "no-spare-core" crosses the same threshold with every core taken by a connection, so the
    hashing stays inline (no digester thread is started)."""
    from samplerguard.commitment import digest
    from samplerguard.sidecar import ingest

    if request.param in ("threaded", "hashlib"):
        monkeypatch.setattr(ingest, "DIGEST_THREAD_AFTER", 300)
        # a core to spare for the digester thread, on any machine
        monkeypatch.setattr(ingest.IngestServer, "spare_core", lambda self: True)
    if request.param == "hashlib":
        monkeypatch.setattr(digest, "_sha256_many", None)
    if request.param == "no-spare-core":
        monkeypatch.setattr(ingest, "DIGEST_THREAD_AFTER", 300)
        monkeypatch.setattr(ingest.IngestServer, "spare_core", lambda self: False)

        def no_thread(self: object) -> None:
            raise AssertionError("a digester thread was started without a spare core")

        monkeypatch.setattr(ingest._Digester, "__init__", no_thread)
    key = Ed25519PrivateKey.generate()
    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 26, min_free_bytes=0)
    gate = Gate(key=key, public_pem="pem", admit=lambda s: Decision(Admission("accept", ())))
    srv = IngestServer(tmp_path / "s.sock", store, gate, max_trajectory_bytes=1 << 20)
    srv.start()
    yield srv, key
    srv.close()


def _stored(srv: Any) -> list[Any]:
    """The store's trajectory files (the request-id ledger beside them is kept on purpose)."""
    return [p for p in srv.store.root.iterdir() if p.name != LEDGER_NAME]


def _trajectory(request_id: str, steps: int = 4, noise: bool = True) -> tuple[Frames, str]:
    """The frames a hook sends for one trajectory, and the root it computed itself."""
    gen = torch.Generator().manual_seed(1)
    b = TrajectoryBuilder(recipe={"pipeline": "t", "steps": steps})
    cond = {"labels": torch.tensor([3, 4])}
    b.set_conditioning(cond)
    z = torch.randn(1, 2, 4, 4, generator=gen)
    state0 = SamplerState(values={"_step_index": 0, "hist": [torch.zeros(3)]})
    b.initial(z, state0, ZERO)
    frames: Frames = [
        (
            FRAME_START,
            {
                "request": {"requestId": request_id, "tenant": "t", "rngMode": "framework"},
                "recipe": {"pipeline": "t", "steps": steps},
                "schedule": ZERO,
                "state": state0.skeleton(),
            },
            [("latent", z), ("state/hist.0", torch.zeros(3)), ("cond/labels", cond["labels"])],
        )
    ]
    for i in range(steps):
        z = torch.randn(1, 2, 4, 4, generator=gen)
        st = SamplerState(values={"_step_index": i + 1, "hist": [z[0, 0, 0].clone()], "s": 0.5})
        eps = [torch.randn(1, 2, 4, 4, generator=gen)] if noise else []
        b.step(i, 999.5 - i, z, st, eps)
        tensors = [("latent", z), ("state/hist.0", z[0, 0, 0].clone())]
        tensors += [(f"noise/{k}", n) for k, n in enumerate(eps)]
        frames.append(
            (FRAME_STEP, {"index": i, "timestep": 999.5 - i, "state": st.skeleton()}, tensors)
        )
    b.final(z)
    frames.append((FRAME_FINAL, {}, [("latent", z)]))
    root = b.finish(OUT).root.hex()
    frames.append((FRAME_FINISH, {"output": OUT, "root": root}, []))
    return frames, root


def _send(path: Path, frames: Frames) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        answer: dict[str, Any] = {}
        for kind, header, tensors in frames:
            try:
                s.sendall(b"".join(bytes(p) for p in encode_frame(kind, header, tensors)))
            except OSError:
                break  # refused mid-stream: the answer is already waiting
            if kind == FRAME_START:
                answer = read_frame(s, max_body=0).header
                if not answer.get("ok"):
                    return answer
        return read_frame(s, max_body=0).header if answer.get("ok") else answer


def test_an_honest_stream_is_committed_with_the_hooks_root(
    server: tuple[IngestServer, Ed25519PrivateKey],
) -> None:
    srv, key = server
    frames, root = _trajectory("ok-1")
    answer = _send(srv.path, frames)
    assert answer["ok"], answer
    commitment = Commitment.verify(answer["commitment"], key.public_key())
    assert commitment.root.hex() == root and commitment.tree_size == 4 + 4
    assert [e.id for e in srv.store.committed()] == ["ok-1"]
    # the stored bytes open a step that re-hashes into the signed root
    opening = srv.store.opening_bytes("ok-1", 2)
    assert len(opening) > 0


def _tamper(
    frames: Frames, index: int, edit: Callable[[dict[str, Any], list[Any]], None]
) -> Frames:
    out = [(k, dict(h), list(t)) for k, h, t in frames]
    edit(out[index][1], out[index][2])
    return out


def _flip_latent(header: dict[str, Any], tensors: list[Any]) -> None:
    latent = tensors[0][1].clone()
    latent.view(-1)[3] += 1e-3
    tensors[0] = ("latent", latent)


@pytest.mark.parametrize(
    ("index", "edit", "reason"),
    [
        (2, _flip_latent, "differs from the root of the bytes received"),
        (2, lambda h, t: t.append(("extra", torch.zeros(1))), "unexpected tensor 'extra'"),
        (2, lambda h, t: t.__setitem__(2, ("noise/1", t[2][1])), "noise tensors with gaps"),
        (2, lambda h, t: h.update(index=5), "out of order"),
        (2, lambda h, t: h.update(timestep="late"), "no numeric timestep"),
        (2, lambda h, t: h.update(state={"hist": {"list": []}}), "does not name"),
        (2, lambda h, t: t.pop(0), "carries no latent"),
        (0, lambda h, t: h.update(schedule=None), "no schedule digest"),
        (0, lambda h, t: h.pop("request"), "lacks the request"),
        (5, lambda h, t: t.append(("noise/0", torch.zeros(1))), "unexpected tensor 'noise/0'"),
        (6, lambda h, t: h.update(output="md5:x"), "no output digest"),
    ],
)
def test_a_malformed_or_corrupted_stream_is_refused_and_nothing_is_kept(
    server: tuple[IngestServer, Ed25519PrivateKey],
    index: int,
    edit: Callable[[dict[str, Any], list[Any]], None],
    reason: str,
) -> None:
    srv, _ = server
    frames, _ = _trajectory("bad-1")
    answer = _send(srv.path, _tamper(frames, index, edit))
    assert answer.get("ok") is False and reason in answer["error"], answer
    assert srv.store.committed() == []
    assert not _stored(srv)  # no partial file left behind
    # the same request id still works afterwards: nothing of the refused stream was kept
    assert _send(srv.path, frames)["ok"]


def test_a_trajectory_over_the_byte_cap_is_refused(
    server: tuple[IngestServer, Ed25519PrivateKey],
) -> None:
    srv, _ = server
    srv.max_trajectory_bytes = 600
    frames, _ = _trajectory("big-1")
    answer = _send(srv.path, frames)
    assert answer.get("ok") is False and "600-byte cap" in answer["error"]
    assert srv.store.committed() == []


def test_a_hook_that_disappears_mid_stream_commits_nothing(
    server: tuple[IngestServer, Ed25519PrivateKey],
) -> None:
    srv, _ = server
    frames, _ = _trajectory("gone-1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(srv.path))
        kind, header, tensors = frames[0]
        s.sendall(b"".join(bytes(p) for p in encode_frame(kind, header, tensors)))
        assert read_frame(s, max_body=0).header["ok"]
        kind, header, tensors = frames[1]
        raw = b"".join(bytes(p) for p in encode_frame(kind, header, tensors))
        s.sendall(raw[: len(raw) // 2])  # half a step, then the connection drops
    frames2, _ = _trajectory("after-1")
    assert _send(srv.path, frames2)["ok"]
    assert [e.id for e in srv.store.committed()] == ["after-1"]
    # the dropped connection's thread discards its files; on a loaded machine it may finish
    # after the next trajectory, so wait for it (bounded) rather than assume the order
    deadline = time.monotonic() + 10
    while len(_stored(srv)) > 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(p.name for p in _stored(srv)) == ["after-1.bin", "after-1.json"]


def test_the_digester_bounds_its_backlog_and_surfaces_its_first_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from samplerguard.errors import MalformedInputError
    from samplerguard.sidecar import ingest

    monkeypatch.setattr(ingest, "DIGEST_BACKLOG", 100)
    gate, done = threading.Event(), list[int]()
    d = ingest._Digester()

    def held() -> None:
        gate.wait(5)
        done.append(1)

    d.submit(80, held)
    blocked = threading.Thread(target=d.submit, args=(80, lambda: done.append(2)))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # 160 bytes would exceed the 100-byte backlog: it waits
    gate.set()
    blocked.join(5)
    d.drain()
    assert done == [1, 2]

    def bad() -> None:
        raise MalformedInputError("step 3 recorded out of order")

    d.submit(1, bad)
    with pytest.raises(MalformedInputError, match="out of order"):
        d.drain()
    with pytest.raises(MalformedInputError, match="out of order"):
        d.submit(1, lambda: None)  # nothing more is taken once it failed
    d.close()


# -- STEPS frames: a batch of step records per frame ---------------------------------------------


def _raw_steps(docs: Any, body: bytes) -> bytes:
    import json

    from samplerguard.hook.wire import FRAME_STEPS, PREFIX

    head = json.dumps({"steps": docs}).encode()
    return PREFIX.pack(b"SG", 1, FRAME_STEPS, len(head), len(body)) + head + body


def _records(frames: Frames) -> tuple[list[dict[str, Any]], bytes]:
    """The STEP frames of a trajectory as STEPS records (header docs with their listings) and
    the concatenated body, as :func:`encode_steps` lays them out."""
    from samplerguard.hook.wire import encode_steps

    parts = encode_steps([(h, t) for k, h, t in frames if k == FRAME_STEP])
    import json

    from samplerguard.hook.wire import PREFIX

    _, _, _, head_len, _ = PREFIX.unpack(bytes(parts[0]))
    docs = json.loads(bytes(parts[1]))["steps"]
    assert len(bytes(parts[1])) == head_len
    return docs, b"".join(bytes(p) for p in parts[2:])


def _send_with_steps(path: Path, frames: Frames, steps_blob: bytes) -> dict[str, Any]:
    """START, one pre-encoded STEPS frame in place of the STEP frames, FINAL, FINISH."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        start = frames[0]
        s.sendall(b"".join(bytes(p) for p in encode_frame(*start)))
        answer = read_frame(s, max_body=0).header
        assert answer.get("ok"), answer
        try:
            s.sendall(steps_blob)
            for kind, header, tensors in frames:
                if kind in (FRAME_FINAL, FRAME_FINISH):
                    s.sendall(b"".join(bytes(p) for p in encode_frame(kind, header, tensors)))
        except OSError:
            pass  # refused mid-stream: the answer is already waiting
        return read_frame(s, max_body=0).header


def test_a_steps_frame_commits_the_same_root_as_one_step_frame_per_record(
    server: tuple[IngestServer, Ed25519PrivateKey],
) -> None:
    srv, key = server
    frames, root = _trajectory("batch-1", steps=5)
    docs, body = _records(frames)
    answer = _send_with_steps(srv.path, frames, _raw_steps(docs, body))
    assert answer["ok"], answer
    assert Commitment.verify(answer["commitment"], key.public_key()).root.hex() == root
    # every record's tensors were stored where the index says: step 3 opens
    assert len(srv.store.opening_bytes("batch-1", 3)) > 0


def _drop_record(docs: list[Any], body: bytes) -> tuple[Any, bytes]:
    """Step 2 left out, its bytes too: a well-formed frame whose indices skip one."""
    sizes = [sum(t[3] for t in d["tensors"]) for d in docs]
    start = sum(sizes[:2])
    return docs[:2] + docs[3:], body[:start] + body[start + sizes[2] :]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d, b: ([], b""), "lists no records"),
        (lambda d, b: ({"index": 0}, b), "lists no records"),
        (lambda d, b: ([*d, *d, *d, *d] * 4, b * 16), "more than 64"),
        (lambda d, b: ([d[0], 7, *d[1:]], b), "not a JSON object"),
        (lambda d, b: (d, b[:-10]), "truncated"),
        (lambda d, b: (d, b + b"\0" * 8), "8 bytes beyond"),
        (_drop_record, "out of order"),
        (lambda d, b: ([{**d[0], "index": "0"}, *d[1:]], b), "no integer index"),
        (
            lambda d, b: ([{**d[0], "tensors": [["x", "uint8", [4], 4]]}, *d[1:]], b),
            "unexpected tensor 'x'",
        ),
    ],
)
def test_a_malformed_steps_frame_is_refused_and_nothing_is_kept(
    server: tuple[IngestServer, Ed25519PrivateKey],
    edit: Callable[[list[Any], bytes], tuple[Any, bytes]],
    reason: str,
) -> None:
    srv, _ = server
    frames, _ = _trajectory("badbatch-1", steps=5)
    docs, body = _records(frames)
    answer = _send_with_steps(srv.path, frames, _raw_steps(*edit(docs, body)))
    assert answer.get("ok") is False and reason in answer["error"], answer
    assert srv.store.committed() == []
    assert not _stored(srv)
    assert _send(srv.path, frames)["ok"]  # the id is still free


def test_encode_steps_bounds_the_batch() -> None:
    from samplerguard.errors import MalformedInputError
    from samplerguard.hook.wire import MAX_STEPS_PER_FRAME, encode_steps

    with pytest.raises(MalformedInputError, match="1 to 64"):
        encode_steps([])
    one = ({"index": 0}, [("latent", torch.zeros(2))])
    with pytest.raises(MalformedInputError, match="1 to 64"):
        encode_steps([one] * (MAX_STEPS_PER_FRAME + 1))


def test_the_sidecar_keeps_freed_ingest_buffers_on_glibc() -> None:
    import platform

    from samplerguard.sidecar.serve import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_a_failing_volume_is_answered_as_a_temporary_refusal_and_nothing_is_kept(
    server: tuple[IngestServer, Ed25519PrivateKey],
) -> None:
    """The openings volume fails the trajectory's write (here: the file-size limit, as a full
    disk would): the hook is told why and that it may retry; nothing is committed."""
    import resource
    import signal

    srv, _ = server
    frames, _ = _trajectory("full-1")
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, hard))
    try:
        answer = _send(srv.path, frames)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert answer.get("ok") is False, answer
    assert "writing the openings failed" in answer["error"] and answer["retry"] is True
    assert srv.store.committed() == []
    assert not _stored(srv)
    assert _send(srv.path, frames)["ok"]  # once the volume has room again


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_frame_claiming_a_huge_body_pins_nothing_before_start(tmp_path: Path) -> None:
    """An 18-byte prefix claiming a 256 MiB body: refused before START is validated (over the
    START cap), and a claim under the cap allocates only what actually arrives."""

    from samplerguard.hook.wire import MAGIC, PREFIX, WIRE_VERSION

    key = Ed25519PrivateKey.generate()
    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 26, min_free_bytes=0)
    gate = Gate(key=key, public_pem="pem", admit=lambda s: Decision(Admission("accept", ())))
    srv = IngestServer(
        tmp_path / "s.sock", store, gate, start_timeout=0.5, max_start_bytes=32 << 20
    )
    srv.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(srv.path))
            s.sendall(PREFIX.pack(MAGIC, WIRE_VERSION, FRAME_START, 2, 256 << 20) + b"{}")
            answer = read_frame(s, max_body=0).header
        assert answer["ok"] is False and "exceeds the 33554432 cap" in answer["error"]
        before = _rss_kib()
        held = []
        for _ in range(8):  # 8 x 30 MiB claimed, 20 bytes sent each
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(srv.path))
            s.sendall(PREFIX.pack(MAGIC, WIRE_VERSION, FRAME_START, 2, 30 << 20) + b"{}")
            held.append(s)
        grown = _rss_kib() - before
        assert grown < 8 * (30 << 10) // 4, f"{grown} KiB held for 8 stalled claims"
        for s in held:  # the START deadline drops them all
            assert s.recv(1) == b""
            s.close()
    finally:
        srv.close()


def test_a_deeply_nested_header_is_refused_not_a_traceback(
    server: tuple[IngestServer, Ed25519PrivateKey],
) -> None:
    from samplerguard.hook.wire import MAGIC, PREFIX, WIRE_VERSION

    srv, _ = server
    head = b"[" * 100_000 + b"]" * 100_000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(srv.path))
        s.sendall(PREFIX.pack(MAGIC, WIRE_VERSION, FRAME_START, len(head), 0) + head)
        answer = read_frame(s, max_body=0).header
    assert answer["ok"] is False and "nests too deeply" in answer["error"]
    frames, _ = _trajectory("after-nesting")
    assert _send(srv.path, frames)["ok"]


def test_a_trickled_first_frame_is_cut_at_its_total_deadline(tmp_path: Path) -> None:
    """One byte every 0.2 s never trips a per-read timeout of 1 s; the START deadline (total)
    cuts it anyway, freeing the connection slot."""
    import time

    key = Ed25519PrivateKey.generate()
    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 26, min_free_bytes=0)
    gate = Gate(key=key, public_pem="pem", admit=lambda s: Decision(Admission("accept", ())))
    srv = IngestServer(tmp_path / "s.sock", store, gate, start_timeout=1.0)
    srv.start()
    frame = b"".join(bytes(p) for p in encode_frame(FRAME_START, {"x": "y" * 200}, []))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(srv.path))
            started = time.monotonic()
            with pytest.raises(OSError):
                for byte in frame:
                    s.sendall(bytes([byte]))
                    time.sleep(0.2)
            assert time.monotonic() - started < 5.0
    finally:
        srv.close()


# -- seeds issued by the sidecar (SEED frames) -------------------------------------------------


def _server(tmp_path: Path, seeds: SeedIssuer | None) -> IngestServer:
    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 26, min_free_bytes=0)
    gate = Gate(
        key=Ed25519PrivateKey.generate(),
        public_pem="pem",
        admit=lambda s: Decision(Admission("accept", ())),
        seeds=seeds,
    )
    srv = IngestServer(tmp_path / "s.sock", store, gate, max_trajectory_bytes=1 << 20)
    srv.start()
    return srv


@pytest.fixture
def verifier_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture
def served(tmp_path: Path, verifier_key: X25519PrivateKey) -> Iterator[IngestServer]:
    issuer = SeedIssuer(NoiseAuthority(b"m" * 32, "ctr-drbg"), verifier_key.public_key())
    srv = _server(tmp_path, issuer)
    yield srv
    srv.close()


def _drbg(frames: Any, escrow: dict[str, Any] | None = None) -> Any:
    header = frames[0][1]
    header["request"]["rngMode"] = "ctr-drbg"
    header["recipe"]["rng"] = "ctr-drbg"
    for kind, other, _ in frames:  # the recipe changed after the hook computed its root
        if kind == FRAME_FINISH:
            other.pop("root", None)
    if escrow is not None:
        header["seedEscrow"] = escrow
    return frames


def test_the_issued_seed_is_the_escrowed_one_and_its_noise_matches(
    served: IngestServer, verifier_key: X25519PrivateKey
) -> None:
    sink = SidecarSink(served.path)
    noise = sink.request_noise("t", "seed-1")
    z = noise.randn((2, 4))
    again = sink.request_noise("t", "seed-1")  # a retry before START gets the same seed
    assert torch.equal(again.randn((2, 4)), z)
    frames, _ = _trajectory("seed-1")
    assert _send(served.path, _drbg(frames))["ok"]
    escrow = SeedEscrow.model_validate(served.store.index("seed-1")["seedEscrow"])
    seed = open_escrow(verifier_key, escrow, request_id="seed-1")
    assert torch.equal(RequestNoise(seed, record_draws=False).randn((2, 4)), z)


def test_a_drbg_start_without_an_issued_seed_is_refused(served: IngestServer) -> None:
    frames, _ = _trajectory("seed-2")
    answer = _send(served.path, _drbg(frames))
    assert answer["ok"] is False and "no seed was issued for request 'seed-2'" in answer["error"]


def test_an_app_supplied_escrow_is_refused(served: IngestServer) -> None:
    SidecarSink(served.path).request_noise("t", "seed-3")
    frames, _ = _trajectory("seed-3")
    answer = _send(served.path, _drbg(frames, {"recipient": "x"}))
    assert answer["ok"] is False and "issues the seeds and their escrows itself" in answer["error"]


def test_a_committed_request_id_gets_no_new_seed(served: IngestServer) -> None:
    sink = SidecarSink(served.path)
    sink.request_noise("t", "seed-4")
    frames, _ = _trajectory("seed-4")
    assert _send(served.path, _drbg(frames))["ok"]
    with pytest.raises(SamplerGuardError, match="already committed by this sidecar"):
        sink.request_noise("t", "seed-4")


def test_a_wrong_mode_or_tenant_is_refused(served: IngestServer) -> None:
    sink = SidecarSink(served.path)
    with pytest.raises(SamplerGuardError, match="this sidecar issues 'ctr-drbg'"):
        sink.request_noise("t", "seed-5", "hmac-drbg")
    sink.request_noise("t", "seed-6")
    with pytest.raises(SamplerGuardError, match="issued a seed for another tenant"):
        sink.request_noise("u", "seed-6")


def test_a_sidecar_without_a_master_secret_issues_no_seeds(tmp_path: Path) -> None:
    srv = _server(tmp_path, None)
    try:
        with pytest.raises(SamplerGuardError, match="holds no master secret"):
            SidecarSink(srv.path).request_noise("t", "seed-7")
    finally:
        srv.close()


def test_pending_seeds_are_bounded(verifier_key: X25519PrivateKey) -> None:
    issuer = SeedIssuer(NoiseAuthority(b"m" * 32, "ctr-drbg"), None, max_pending=2)
    for i in range(3):
        issuer.issue("t", f"r{i}", "ctr-drbg")
    with pytest.raises(SamplerGuardError, match="no seed was issued"):
        issuer.take("t", "r0")
    assert issuer.take("t", "r2").escrow is None


def test_a_start_whose_rng_mode_differs_from_its_recipe_is_refused(served: IngestServer) -> None:
    """The app cannot dodge the sidecar's seeds by declaring framework noise on the wire while
    the signed recipe claims a DRBG (and so escrow a seed of its own)."""
    frames, _ = _trajectory("seed-8")
    frames[0][1]["recipe"]["rng"] = "ctr-drbg"
    answer = _send(served.path, frames)
    assert answer["ok"] is False and "differs from the recipe's rng" in answer["error"]


def test_an_app_escrow_is_refused_in_framework_mode_too(served: IngestServer) -> None:
    frames, _ = _trajectory("seed-9")
    frames[0][1]["seedEscrow"] = {"recipient": "x"}
    answer = _send(served.path, frames)
    assert answer["ok"] is False and "issues the seeds and their escrows itself" in answer["error"]


def test_a_core_is_spare_while_fewer_connections_than_cores_are_served(
    tmp_path: Path,
) -> None:
    """The digester thread's condition, counted from the connections the server serves."""
    store = OpeningStore(tmp_path / "store", retention=3600, max_bytes=1 << 20, min_free_bytes=0)
    gate = Gate(
        key=Ed25519PrivateKey.generate(),
        public_pem="pem",
        admit=lambda s: Decision(Admission("accept", ())),
    )
    srv = IngestServer(tmp_path / "s.sock", store, gate)
    try:
        srv._cores = 2
        assert srv.spare_core()
        srv._connection(1)
        assert srv.spare_core()
        srv._connection(1)
        assert not srv.spare_core()
        srv._connection(-1)
        assert srv.spare_core()
    finally:
        srv.close()
