"""OTLP receiver fixtures: a real OTLP/HTTP server and a real OTLP/gRPC server on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from tests.support.otlp_receivers import (
    GrpcReceiver,
    HttpReceiver,
    Received,
    _Handler,
    _HttpServer,
    _MetricsService,
)


@pytest.fixture
def otlp_http() -> Iterator[HttpReceiver]:
    server = _HttpServer(("127.0.0.1", 0), _Handler)
    server.received = Received()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-http", daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    assert isinstance(host, str)
    try:
        yield HttpReceiver(f"http://{host}:{port}", server.received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def otlp_grpc() -> Iterator[GrpcReceiver]:
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # generated gRPC code carries no annotations
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _MetricsService(received), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield GrpcReceiver(f"http://127.0.0.1:{port}", received)
    finally:
        server.stop(grace=None).wait(5)
