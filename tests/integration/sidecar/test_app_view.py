"""A process with the app container's view of an injected pod cannot forge, plant or delete.

The real sidecar runs with the injected layout: the socket on one volume, the signing key and
the openings on another. The "app" is a root process in a mount namespace of its own that sees
what the webhook mounts into app containers: the socket's directory read-only, and nothing of
the sidecar's state volume (an empty tmpfs lies over it). Everything it tries fails, and the
sidecar afterwards still signs with its published key and serves what it committed. Needs
``unshare`` and the right to create a mount namespace (root); skipped elsewhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from samplerguard.demo.services import ServiceProcess, make_token, start_sidecar
from tests.support.dataplane import generate, make_model, write_policy

pytestmark = pytest.mark.slow

APP = textwrap.dedent(
    """
    import json, os, socket, sys
    run, state = sys.argv[1], sys.argv[2]
    key, openings = os.path.join(state, "sidecar-ed25519.pem"), os.path.join(state, "openings")
    out = {}

    def attempt(name, fn):
        try:
            fn()
            out[name] = "done"
        except OSError as exc:
            out[name] = type(exc).__name__

    attempt("read the key", lambda: open(key, "rb").read())
    attempt("list the openings", lambda: os.listdir(openings))
    attempt("plant a key", lambda: open(os.path.join(run, "sidecar-ed25519.pem"), "xb").write(b"x"))
    attempt("delete the socket", lambda: os.unlink(os.path.join(run, "sidecar.sock")))
    attempt("write beside the socket", lambda: open(os.path.join(run, "x"), "xb").write(b"x"))
    s = socket.socket(socket.AF_UNIX)
    attempt("connect to the socket", lambda: s.connect(os.path.join(run, "sidecar.sock")))
    out["state volume as the app sees it"] = sorted(os.listdir(state))
    print(json.dumps(out))
    """
)


def _namespaces_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


def test_the_app_view_cannot_forge_plant_or_delete(tmp_path: Path) -> None:
    if not _namespaces_available():
        pytest.skip("needs unshare and a mount namespace (root)")
    model = make_model(tmp_path, seed=0)
    policy = write_policy(tmp_path / "policy.yaml", model.digest)
    token = make_token(tmp_path / "token")
    run, state = tmp_path / "run", tmp_path / "state"
    state.mkdir()

    def sidecar() -> ServiceProcess:  # the injected layout: key and openings off the socket's
        return start_sidecar(
            run,
            token_file=token,
            policy=policy,
            model_files=[model.path],
            extra_args=["--openings-dir", str(state / "openings")],
        )

    svc = sidecar()
    try:
        generate(run / "sidecar.sock", model.unet, "before-1", declared_digest=model.digest)
        key_before = (state / "sidecar-ed25519.pem").read_bytes()
        published = httpx.get(svc.url + "/v1/public-key", timeout=10).json()["keyid"]
        # the app's view: the socket's directory read-only, the state volume not mounted
        script = (
            f"mount --bind {run} {run} && mount -o remount,bind,ro {run} && "
            f'mount -t tmpfs none {state} && exec {sys.executable} -c "$APP" {run} {state}'
        )
        app = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            env={"APP": APP, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
            timeout=60,
            check=False,
        )
        assert app.returncode == 0, app.stderr
        seen = json.loads(app.stdout)
        assert seen == {
            "read the key": "FileNotFoundError",
            "list the openings": "FileNotFoundError",
            "plant a key": "OSError",
            "delete the socket": "OSError",
            "write beside the socket": "OSError",
            "connect to the socket": "done",
            "state volume as the app sees it": [],
        }, seen
        # the sidecar's view is untouched: same key, the trajectory still served, and the
        # sidecar still takes trajectories
        assert (state / "sidecar-ed25519.pem").read_bytes() == key_before
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
        listed = httpx.get(svc.url + "/v1/trajectories", headers=headers, timeout=10).json()
        assert [t["id"] for t in listed["trajectories"]] == ["before-1"]
        generate(run / "sidecar.sock", model.unet, "after-1", declared_digest=model.digest)
    finally:
        svc.stop()
    # a restart publishes the same key: nothing was planted
    again = sidecar()
    try:
        assert httpx.get(again.url + "/v1/public-key", timeout=10).json()["keyid"] == published
    finally:
        again.stop()
