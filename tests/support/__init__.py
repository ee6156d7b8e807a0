"""Test and benchmark tooling with real parts: a loopback OCI registry and a private
Sigstore-style instance (``supplychain``), cosign-format publishing (``publish``), NIST CAVP
runners (``cavp``), tiny random diffusion pipelines (``tiny_sd``, ``families``), and the
helpers the webhook, data-plane and telemetry tests share.

None of it is part of the installed package: the wheel and the images carry ``src`` only
(``tests/unit/test_distribution.py`` checks this).
"""
