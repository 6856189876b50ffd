"""A local HTTPS server that is not vSphere at all, and remembers everything it was sent.

It answers every request with 404 and an HTML page, over TLS with its own certificate signed
by the test CA (so a verifying client trusts it, as it would trust a misconfigured server in a
real network). Every request is recorded (method, path, headers, body), so a test can prove
that no Authorization header, no Login body and no password ever arrived.

Written on the standard library's http.server: it must accept anything, including requests no
framework would route, and record bytes exactly as they came.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testbed.vcsim import issue_server_cert

NOT_FOUND_PAGE = (
    b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # with the query string, as sent
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class _Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []

    def add(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def all(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def _handler_class(recorder: _Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            body = _read_body(self)
            recorder.add(
                RecordedRequest(
                    method=self.command,
                    path=self.path,
                    headers=tuple((k, v) for k, v in self.headers.items()),
                    body=body,
                )
            )
            self.send_response(404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(NOT_FOUND_PAGE)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(NOT_FOUND_PAGE)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

        def log_message(self, format: str, *args: object) -> None:  # quiet: tests read requests()
            return

    return Handler


@dataclass(frozen=True)
class Decoy:
    server: str  # "127.0.0.1:PORT"
    ca_file: Path
    _recorder: _Recorder

    @property
    def url(self) -> str:
        return f"https://{self.server}/"

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        return self._recorder.all()

    def received(self, secret: str) -> bool:
        """Whether any request carried `secret` in its path, a header or its body."""
        raw = secret.encode()
        for r in self.requests():
            if secret in r.path or raw in r.body or any(secret in v for _, v in r.headers):
                return True
        return False


@contextmanager
def running_decoy(workdir: Path, *, ca: Path, ca_key: Path) -> Iterator[Decoy]:
    """Serve the decoy on a free loopback port until the block ends."""
    cert, key = issue_server_cert(ca, ca_key, workdir, "decoy")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    recorder = _Recorder()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(recorder))
    httpd.daemon_threads = True
    # Handshake in the connection's own thread, so one stalled client cannot block accept().
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=httpd.serve_forever, name="decoy", daemon=True)
    thread.start()
    try:
        yield Decoy(server=f"127.0.0.1:{httpd.server_address[1]}", ca_file=ca, _recorder=recorder)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


__all__ = ["Decoy", "RecordedRequest", "running_decoy"]
