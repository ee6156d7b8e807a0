"""Real OTLP receivers on loopback (the fixtures are in conftest.py): OTLP/HTTP (protobuf over
HTTP/1.1, the collector's ``/v1/metrics``) and OTLP/gRPC
(``opentelemetry.proto.collector.metrics.v1.MetricsService``).

Both decode the wire bytes with opentelemetry-proto's generated classes, exactly as a collector
does, and keep every ``ExportMetricsServiceRequest`` they accept.
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

MAX_BODY = 8 << 20


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@dataclass
class Received:
    """Everything a receiver accepted, flattened for assertions."""

    requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self.lock:
            self.requests.append(request)

    def wait(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.requests:
                    return
            time.sleep(0.02)
        pytest.fail(f"no OTLP export arrived within {timeout} s")

    def resources(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {kv.key: any_value(kv.value) for kv in rm.resource.attributes}
                for req in self.requests
                for rm in req.resource_metrics
            ]

    def metrics(self) -> dict[str, Any]:
        """name -> the *last* exported Metric proto of that name (cumulative temporality)."""
        out: dict[str, Any] = {}
        with self.lock:
            for req in self.requests:
                for rm in req.resource_metrics:
                    for sm in rm.scope_metrics:
                        assert sm.scope.name == "samplerguard"
                        for metric in sm.metrics:
                            out[metric.name] = metric
        return out


def point_attributes(point: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in point.attributes}


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def do_POST(self) -> None:
        if self.path != "/v1/metrics":
            self._reply(404, b"unknown signal path")
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self._reply(415, b"expected application/x-protobuf")
            return
        length = int(self.headers.get("Content-Length") or -1)
        if not 0 <= length <= MAX_BODY:
            self._reply(413, b"body too large or unsized")
            return
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding") == "gzip":
            inflater = zlib.decompressobj(wbits=31)  # gzip framing, bounded output
            body = inflater.decompress(body, MAX_BODY)
            if inflater.unconsumed_tail:
                self._reply(413, b"inflated body too large")
                return
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:
            self._reply(400, b"not an ExportMetricsServiceRequest")
            return
        self.server.received.paths.append(self.path)
        self.server.received.headers.append(dict(self.headers))
        self.server.received.add(request)
        response = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        self._reply(200, response, "application/x-protobuf")

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    received: Received


@dataclass
class HttpReceiver:
    base_url: str
    received: Received


@dataclass
class GrpcReceiver:
    endpoint: str
    received: Received


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.received.headers.append({k: v for k, v in context.invocation_metadata()})
        self.received.add(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()
