"""The one compiled part: the sidecar's batched SHA-256 (``samplerguard._digest``).

Everything else is configured in pyproject.toml. The extension is optional: a host without a C
compiler or the OpenSSL headers still installs, and the sidecar hashes through hashlib instead
(slower on small nodes; ``samplerguard.commitment.digest.NATIVE`` tells which one is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "samplerguard._digest",
            sources=["src/samplerguard/_native/digest.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Werror"],
            optional=True,
        )
    ]
)
