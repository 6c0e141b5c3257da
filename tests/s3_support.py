"""A real S3 API on loopback for the tests: moto's server, and a fault-injecting proxy in front.

    server = S3Server.start()              # moto on 127.0.0.1:<free port>
    proxy = FaultProxy.start(server.url)   # forwards to it; `proxy.fail_next(5)` answers 500s
    env = s3_env(proxy.url)                # AWS_* + FSSPEC_S3_ENDPOINT_URL for subprocesses
    with endpoint_environ(server.url): ... # the same for this process and all it starts (a Ray cluster)

Nothing is mocked: s3fs talks HTTP to a real S3 implementation, the way it talks to AWS.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

# AWS_EC2_METADATA_DISABLED: botocore must never look for credentials at the cloud metadata address
# (off loopback) when a test's credentials are refused or missing.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kdata-test", "AWS_SECRET_ACCESS_KEY": "kdata-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
# The same retries as a user's (botocore's 5 attempts, then kdata's outer ones), with waits of
# milliseconds instead of seconds: a test that makes the store fail waits on nothing but the work.
FAST_RETRY_BASE_S = 0.005
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class S3Server:
    server: object
    url: str

    @classmethod
    def start(cls) -> S3Server:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return cls(server, f"http://{host}:{port}")

    def stop(self) -> None:
        self.server.stop()

    def set_auth(self, enabled: bool) -> None:
        """moto checks access keys only when told to (after 0 unauthenticated actions)."""
        conn = _connect(self.url)
        conn.request("POST", "/moto-api/reset-auth", body=b"0" if enabled else b"inf")
        conn.getresponse().read()
        conn.close()


@functools.cache
def _fast_botocore_data() -> str:
    """A botocore data folder (for AWS_DATA_PATH, which botocore searches before its own) with
    botocore's own `_retry.json`, only its exponential backoff's base changed from a random
    0-1 s to FAST_RETRY_BASE_S: which errors are retried and how many times stay botocore's."""
    import botocore

    retry = json.loads((Path(botocore.__file__).parent / "data" / "_retry.json").read_text())

    def shorten(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "exponential" and "base" in node:
                node["base"] = FAST_RETRY_BASE_S
            for value in node.values():
                shorten(value)
        elif isinstance(node, list):
            for value in node:
                shorten(value)

    shorten(retry)
    folder = tempfile.mkdtemp(prefix="kdata-test-botocore-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (Path(folder) / "_retry.json").write_text(json.dumps(retry))
    return folder


def fast_retries() -> dict[str, str]:
    """Environment for short retry waits in kdata (KDATA_STORAGE_RETRY_DELAY) and botocore."""
    return {"KDATA_STORAGE_RETRY_DELAY": str(FAST_RETRY_BASE_S), "AWS_DATA_PATH": _fast_botocore_data()}


def s3_env(endpoint: str, **extra: str) -> dict[str, str]:
    """The environment a user would set: credentials and fsspec's endpoint setting (and short
    retry waits)."""
    env = {**os.environ, **CREDENTIALS, **fast_retries(), "FSSPEC_S3_ENDPOINT_URL": endpoint}
    env.pop("AWS_PROFILE", None)
    env.update(extra)
    return env


def use_endpoint(monkeypatch, endpoint: str, **extra: str) -> None:
    """Point this process (fsspec is already imported, so its env config is read already) and
    its future child processes at `endpoint`."""
    import fsspec.config
    import s3fs

    for key, value in {**CREDENTIALS, **fast_retries(), "FSSPEC_S3_ENDPOINT_URL": endpoint, **extra}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def endpoint_environ(endpoint: str) -> Iterator[None]:
    """`use_endpoint` for a whole module: this process's environment (so processes started in
    the block — a Ray cluster's nodes and so their workers — inherit it) and fsspec's config,
    restored afterwards."""
    import fsspec.config
    import s3fs

    values = {**CREDENTIALS, **fast_retries(), "FSSPEC_S3_ENDPOINT_URL": endpoint}
    saved_env = {key: os.environ.get(key) for key in [*values, "AWS_PROFILE"]}
    saved_conf = fsspec.config.conf.get("s3")
    os.environ.update(values)
    os.environ.pop("AWS_PROFILE", None)
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        s3fs.S3FileSystem.clear_instance_cache()


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class FaultProxy:
    """An HTTP proxy in front of the S3 server that can answer 500s or stall, and logs requests."""

    target: str
    failures_left: int = 0
    fail_method: str | None = None  # only requests of this method fail (None: any)
    delay_s: float = 0.0
    delays_left: int = 0
    bytes_per_s: float | None = None  # each answer's body paced to this rate (one stream's bandwidth)
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: ThreadingHTTPServer | None = None

    @classmethod
    def start(cls, target: str) -> FaultProxy:
        proxy = cls(target)
        proxy.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
        proxy.httpd.daemon_threads = True
        threading.Thread(target=proxy.httpd.serve_forever, daemon=True).start()
        return proxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, count: int, method: str | None = None) -> None:
        with self.lock:
            self.failures_left, self.fail_method = count, method

    def stall_next(self, count: int, seconds: float) -> None:
        with self.lock:
            self.delays_left, self.delay_s = count, seconds

    def take(self, method: str) -> tuple[bool, float]:
        with self.lock:
            fail = self.failures_left > 0 and self.fail_method in (None, method)
            self.failures_left -= int(fail)
            delay = self.delay_s if self.delays_left > 0 else 0.0
            self.delays_left -= int(self.delays_left > 0)
            return fail, delay


@contextlib.contextmanager
def server_and_proxy() -> Iterator[tuple[S3Server, "FaultProxy"]]:
    """moto's server and a fault proxy in front of it, both stopped at the end (a module fixture)."""
    server = S3Server.start()
    proxy = FaultProxy.start(server.url)
    try:
        yield server, proxy
    finally:
        proxy.stop()
        server.stop()


def _connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def _handler(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _forward(self) -> None:
            body = self._body()
            if body is None:  # the client died mid-upload: S3 stores nothing of a cut-short body
                self.close_connection = True
                return
            proxy.log.append(Request(self.command, self.path, self.headers.get("Range")))
            fail, delay = proxy.take(self.command)
            if delay:
                time.sleep(delay)
            if fail:
                error = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
                         b"<Message>injected by the test proxy</Message></Error>")
                head = self.command == "HEAD"
                headers = {"Content-Type": "application/xml", **({"Content-Length": str(len(error))} if head else {})}
                self._send(500, headers, b"" if head else error, head=head)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn = _connect(proxy.target)
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
            if self.command == "HEAD":
                out["Content-Length"] = response.getheader("Content-Length", "0")
                self._send(response.status, out, b"", head=True)
            else:
                self._send(response.status, out, data)

        def _body(self) -> bytes | None:
            """The request body; None when the connection ended before all of it came."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    line = self.rfile.readline()
                    if not line.strip():
                        return None
                    size = int(line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunk = self.rfile.read(size)
                    if len(chunk) < size:
                        return None
                    chunks.append(chunk)
                    self.rfile.readline()
            want = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(want)
            return body if len(body) == want else None

        def _send(self, status: int, headers: dict[str, str], data: bytes, head: bool = False) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data and proxy.bytes_per_s:
                time.sleep(len(data) / proxy.bytes_per_s)
            if data:
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler
