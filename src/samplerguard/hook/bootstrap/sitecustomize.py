"""Injected into diffusion pods by the samplerguard webhook (PYTHONPATH is prepended with the
folder holding this file). Instruments diffusers pipelines when SAMPLERGUARD_SOCKET is set;
otherwise does nothing. Chains to an application's own sitecustomize if one is further along
sys.path."""

import importlib.util
import os
import sys


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or ".") == here:
            continue
        candidate = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_app_sitecustomize", candidate)
            if spec and spec.loader:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if os.environ.get("SAMPLERGUARD_SOCKET"):
    try:
        from samplerguard.hook.auto import install_from_env

        install_from_env()
    except Exception as exc:  # never break the application's start-up; the sidecar sees no data
        print(f"samplerguard: hook not installed: {exc}", file=sys.stderr)
_chain()
