"""Auto-instrumentation in a fresh interpreter, as the injected sitecustomize runs it: an
unmodified script's pipeline calls are recorded by a real sidecar process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BOOTSTRAP = Path(__file__).resolve().parents[3] / "src" / "samplerguard" / "hook" / "bootstrap"

SCRIPT = textwrap.dedent(
    """
    import torch
    from samplerguard.demo.providers import make_scheduler
    from samplerguard.models.digits import DigitsPipeline, build_unet

    pipe = DigitsPipeline(build_unet(seed=0).eval(), make_scheduler("euler"))
    out = pipe([3, 5], num_inference_steps=3, generator=torch.Generator().manual_seed(1))
    print("OUT", tuple(out.shape))
    """
)


def _run(extra_env: dict[str, str], script: str = SCRIPT) -> subprocess.CompletedProcess[str]:
    """The unmodified script in a fresh interpreter with the injected bootstrap on PYTHONPATH
    (unless ``extra_env`` names its own)."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{BOOTSTRAP}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **extra_env,
    }
    if "SAMPLERGUARD_SOCKET" not in extra_env:
        env.pop("SAMPLERGUARD_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_script_without_hook_code_is_not_touched_without_a_socket() -> None:
    p = _run({})
    assert p.returncode == 0, p.stderr
    assert "OUT (2, 1, 8, 8)" in p.stdout


def test_unreachable_sidecar_fails_closed(tmp_path: Path) -> None:
    p = _run(
        {"SAMPLERGUARD_SOCKET": str(tmp_path / "missing.sock"), "SAMPLERGUARD_TENANT": "team-a"}
    )
    assert p.returncode != 0
    assert "RecordingError" in p.stderr and "unverified" in p.stderr
    assert "OUT" not in p.stdout


def test_fail_open_is_explicit(tmp_path: Path) -> None:
    p = _run({"SAMPLERGUARD_SOCKET": str(tmp_path / "missing.sock"), "SAMPLERGUARD_FAIL_OPEN": "1"})
    assert p.returncode == 0, p.stderr
    assert "OUT (2, 1, 8, 8)" in p.stdout and "unverified" in p.stderr


@pytest.mark.slow
def test_unmodified_script_is_recorded_by_a_real_sidecar(tmp_path: Path) -> None:
    import httpx

    from samplerguard.demo.services import make_token, start_sidecar

    token = make_token(tmp_path / "token")
    svc = start_sidecar(tmp_path / "run", token_file=token)  # no policy: accept anything
    try:
        p = _run({"SAMPLERGUARD_SOCKET": svc.ready["socket"], "SAMPLERGUARD_TENANT": "team-a"})
        assert p.returncode == 0, p.stderr
        assert "OUT (2, 1, 8, 8)" in p.stdout
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
        listing = httpx.get(svc.url + "/v1/trajectories", headers=headers, timeout=10).json()
        assert len(listing["trajectories"]) == 1
    finally:
        svc.stop()


def test_unmodified_script_draws_its_noise_from_the_sidecars_seed(tmp_path: Path) -> None:
    """``SAMPLERGUARD_RNG_MODE=ctr-drbg``: the sidecar holds the master secret and issues the
    request's seed; the app's z_N is that seed's first draw, escrowed to the verifier's key
    and bound into the signed commitment."""
    import base64
    import json

    import httpx
    import torch
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from samplerguard.commitment.opening import Opening
    from samplerguard.demo.providers import make_scheduler
    from samplerguard.demo.services import make_token, start_sidecar
    from samplerguard.rng.escrow import SeedEscrow, escrow_digest, open_escrow
    from samplerguard.rng.noise import RequestNoise

    key = X25519PrivateKey.generate()
    pub = tmp_path / "escrow.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    secret = tmp_path / "master"
    secret.write_bytes(b"base64:" + base64.b64encode(b"s" * 32))
    token = make_token(tmp_path / "token")
    svc = start_sidecar(
        tmp_path / "run",
        token_file=token,
        extra_args=["--master-secret-file", str(secret), "--escrow-public-key", str(pub)],
    )
    try:
        p = _run(
            {
                "SAMPLERGUARD_SOCKET": svc.ready["socket"],
                "SAMPLERGUARD_TENANT": "team-a",
                "SAMPLERGUARD_RNG_MODE": "ctr-drbg",
            }
        )
        assert p.returncode == 0, p.stderr
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
        listing = httpx.get(svc.url + "/v1/trajectories", headers=headers, timeout=10).json()
        (entry,) = listing["trajectories"]
        doc = httpx.get(svc.url + f"/v1/trajectories/{entry['id']}", headers=headers).json()
        payload = json.loads(base64.b64decode(doc["commitment"]["payload"]))
        assert payload["predicate"]["recipe"]["rng"] == "ctr-drbg"
        assert payload["predicate"]["seedEscrowDigest"] == escrow_digest(doc["seedEscrow"])
        escrow = SeedEscrow.model_validate(doc["seedEscrow"])
        seed = open_escrow(key, escrow, request_id=entry["id"])
        raw = httpx.get(svc.url + f"/v1/trajectories/{entry['id']}/openings/0", headers=headers)
        z = Opening.from_bytes(raw.content).latent_in
        drawn = RequestNoise(seed, record_draws=False).randn(tuple(z.shape))
        sched = make_scheduler("euler")
        sched.set_timesteps(3)
        assert torch.equal(z, drawn * sched.init_noise_sigma)  # the pipeline's own scaling
    finally:
        svc.stop()


def test_the_image_layout_loads_the_hook_from_its_top(tmp_path: Path) -> None:
    """The tree the sidecar image ships (and the init container copies) is a PYTHONPATH entry
    on its own: ``site`` finds sitecustomize.py at its top, and the package comes from it."""
    from samplerguard.hook.layout import lay_out

    tree = tmp_path / "python"
    lay_out(tree)
    assert (tree / "sitecustomize.py").is_file()
    assert not list(tree.rglob("*.so")) and not list(tree.rglob("__pycache__"))
    with pytest.raises(FileExistsError, match="not empty"):
        lay_out(tree)
    probe = (
        "import sys, samplerguard; "
        "print('HOOK', 'samplerguard.hook.auto' in sys.modules, samplerguard.__file__)"
    )
    p = _run({"PYTHONPATH": str(tree), "SAMPLERGUARD_SOCKET": str(tmp_path / "s.sock")}, probe)
    assert p.returncode == 0, p.stderr
    assert f"HOOK True {tree}" in p.stdout, p.stdout + p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("family", ["stable-diffusion-3", "stable-diffusion-xl", "wan"])
def test_unmodified_scripts_of_other_families_are_recorded(tmp_path: Path, family: str) -> None:
    """No code change for a transformer, an SDXL or a video pipeline either; several threads
    calling one pipeline object each get their own correct commitment."""
    import base64
    import json

    import httpx

    from samplerguard.demo.services import make_token, start_sidecar

    repo = Path(__file__).resolve().parents[3]
    script = textwrap.dedent(
        f"""
        import sys, threading
        sys.path.insert(0, {str(repo)!r})
        from tests.support.families import BUILDERS
        case = BUILDERS[{family!r}]()
        outs = []
        def run():
            outs.append(case.call(case.pipe))
        threads = [threading.Thread(target=run) for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print("OUT", len(outs), all(hasattr(o, "samplerguard_commitment") for o in outs))
        """
    )
    token = make_token(tmp_path / "token")
    svc = start_sidecar(tmp_path / "run", token_file=token)  # no policy: accept anything
    try:
        p = _run({"SAMPLERGUARD_SOCKET": svc.ready["socket"]}, script)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "OUT 2 True" in p.stdout
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
        listing = httpx.get(svc.url + "/v1/trajectories", headers=headers, timeout=10).json()
        assert len(listing["trajectories"]) == 2
        for item in listing["trajectories"]:
            doc = httpx.get(
                svc.url + f"/v1/trajectories/{item['id']}", headers=headers, timeout=10
            ).json()
            statement = json.loads(base64.b64decode(doc["commitment"]["payload"]))
            assert statement["predicate"]["recipe"]["pipeline"] == family
    finally:
        svc.stop()
