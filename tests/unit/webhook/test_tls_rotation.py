"""Rotating the serving certificate's files: new connections see the new certificate."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

from cryptography import x509

from samplerguard.webhook import WebhookServer
from tests.support.webhook import write_self_signed


def _served_serial(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def test_rotated_files_are_served_to_new_connections(
    server: WebhookServer, tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = tls_files
    first = _served_serial(server.port)
    assert first == format(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number, "x")
    # Rotate as a Secret volume does: write elsewhere, then swap the paths atomically.
    new_cert, new_key = tmp_path / "new.crt", tmp_path / "new.key"
    second = write_self_signed(new_cert, new_key)
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    assert _served_serial(server.port) == second != first
    assert server.tls.reloads == 1


def test_half_written_rotation_keeps_the_old_pair(
    server: WebhookServer, tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = tls_files
    first = _served_serial(server.port)
    write_self_signed(tmp_path / "other.crt", tmp_path / "other.key")
    os.replace(tmp_path / "other.crt", cert)  # the key is still the old one: mismatch
    assert _served_serial(server.port) == first
    os.replace(tmp_path / "other.key", key)  # rotation completes
    assert _served_serial(server.port) != first
