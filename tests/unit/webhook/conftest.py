from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from samplerguard.policy import parse_policy
from samplerguard.webhook import (
    Admission,
    ReloadingCertificate,
    StaticNamespaceLabels,
    StaticPolicySource,
    WebhookConfig,
    WebhookServer,
)
from tests.support.webhook import REGISTRY, RegistryDouble, policy, write_self_signed


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(cert, key)
    return cert, key


@pytest.fixture
def registry() -> RegistryDouble:
    reg = RegistryDouble()
    reg.push(f"{REGISTRY}/acme/sampler:1.0")
    reg.push(f"{REGISTRY}/acme/unsigned:1.0", signed=False)
    reg.push(f"{REGISTRY}/samplerguard/sidecar:0.1")
    reg.push(f"{REGISTRY}/samplerguard/hook:0.1")
    return reg


@pytest.fixture
def config(tls_files: tuple[Path, Path]) -> WebhookConfig:
    from samplerguard.webhook import InjectionConfig

    return WebhookConfig(
        host="127.0.0.1",
        port=0,
        certfile=str(tls_files[0]),
        keyfile=str(tls_files[1]),
        injection=InjectionConfig(
            sidecar_image=f"{REGISTRY}/samplerguard/sidecar:0.1",
            hook_image=f"{REGISTRY}/samplerguard/hook:0.1",
            drbg_secret="samplerguard-drbg",
        ),
    )


@pytest.fixture
def namespaces() -> StaticNamespaceLabels:
    return StaticNamespaceLabels(
        {
            "ml": {"samplerguard.dev/enforce": "true", "team": "ml"},
            "dev": {"team": "dev"},
            "kube-system": {"samplerguard.dev/enforce": "true"},
        }
    )


@pytest.fixture
def policies() -> StaticPolicySource:
    return StaticPolicySource(
        [
            parse_policy(policy("acme", f"{REGISTRY}/acme/**")),
            parse_policy(policy("injected", f"{REGISTRY}/samplerguard/**")),
        ]
    )


@pytest.fixture
def admission(
    config: WebhookConfig,
    policies: StaticPolicySource,
    registry: RegistryDouble,
    namespaces: StaticNamespaceLabels,
) -> Admission:
    return Admission(config, policies, registry, registry, namespaces=namespaces)


@pytest.fixture
def server(config: WebhookConfig, admission: Admission) -> Iterator[WebhookServer]:
    tls = ReloadingCertificate(config.certfile, config.keyfile, check_interval=0)
    with WebhookServer(config, admission, tls) as srv:
        yield srv


@pytest.fixture
def client(server: WebhookServer, config: WebhookConfig) -> Iterator[httpx.Client]:
    ctx = ssl.create_default_context(cafile=config.certfile)
    with httpx.Client(base_url=server.url, verify=ctx, timeout=10) as c:
        yield c
