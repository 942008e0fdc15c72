from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sidecar.plugins.builtin import http_probe

from .reported import critical, state_of

BODY = b"hello from the sidecar test server\n"


class _Handler(BaseHTTPRequestHandler):
    release: threading.Event  # set on the class by the fixture
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/ok":
            self._send(200, BODY, {"X-Method": self.command})
        elif path == "/error":
            self._send(500, b"internal error\n")
        elif path == "/missing":
            self._send(404, b"not found\n")
        elif path == "/redirect":
            self._send(302, headers={"Location": "/ok"})
        elif path == "/redirect-chain":
            self._send(301, headers={"Location": "/redirect"})
        elif path == "/redirect-error":
            self._send(307, headers={"Location": "/error"})
        elif path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif path == "/redirect-ftp":
            self._send(302, headers={"Location": "ftp://127.0.0.1/file"})
        elif path == "/redirect-file":
            self._send(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/no-location":
            self._send(302)
        elif path == "/headers":
            self._send(200, f"probe={self.headers.get('X-Probe')};ua={self.headers.get('User-Agent')}".encode())
        elif path == "/big":
            self._send(200, b"x" * 100_000 + b"MARKER")
        elif path == "/slow":
            self.release.wait(30)  # the client gives up first; teardown releases us
        elif path == "/hangup":
            self.close_connection = True  # no status line at all
        else:
            self._send(404)

    do_GET = do_HEAD = do_POST = _route


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="http-probe-test-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_ok(server: str) -> None:
    result = http_probe.run(f"{server}/ok")
    assert result["url"] == f"{server}/ok"
    assert result["final_url"] == f"{server}/ok"
    assert result["status"] == 200
    assert result["bytes"] == len(BODY)
    assert result["truncated"] is False
    assert isinstance(result["duration_seconds"], float) and result["duration_seconds"] >= 0
    assert result["up"] == 1 and "tls_cert_expiry_timestamp_seconds" not in result  # plain http: no certificate


def test_contains_found(server: str) -> None:
    assert http_probe.run(f"{server}/ok", contains="sidecar test")["status"] == 200


def test_contains_missing_is_critical(server: str) -> None:
    critical("'nope' not found in the body", lambda: http_probe.run(f"{server}/ok", contains="nope"))


def test_head_and_post(server: str) -> None:
    head = http_probe.run(f"{server}/ok", method="head")
    assert head["status"] == 200 and head["bytes"] == 0
    assert http_probe.run(f"{server}/ok", method="POST")["bytes"] == len(BODY)


def test_headers_sent_with_default_user_agent(server: str) -> None:
    critical("not found", lambda: http_probe.run(f"{server}/headers", headers={"X-Probe": "1"}, contains="probe=2"))
    http_probe.run(f"{server}/headers", headers={"X-Probe": "1"}, contains="probe=1;ua=sidecar-http-probe/")
    http_probe.run(f"{server}/headers", headers={"User-Agent": "mine"}, contains="ua=mine")


def test_server_error_is_critical(server: str) -> None:
    critical(r"unexpected status 500 .*/error \(expected 2xx or 3xx\)", lambda: http_probe.run(f"{server}/error"))


def test_expected_error_status_is_success(server: str) -> None:
    assert http_probe.run(f"{server}/error", expect_status=500)["status"] == 500
    assert http_probe.run(f"{server}/missing", expect_status=[404, 410], contains="not found")["status"] == 404


def test_unexpected_status_against_explicit_list(server: str) -> None:
    critical(r"unexpected status 200 .*\(expected 201, 204\)",
             lambda: http_probe.run(f"{server}/ok", expect_status=[204, 201]))


def test_redirects_are_followed(server: str) -> None:
    result = http_probe.run(f"{server}/redirect-chain")
    assert result["status"] == 200
    assert result["url"] == f"{server}/redirect-chain"
    assert result["final_url"] == f"{server}/ok"
    head = http_probe.run(f"{server}/redirect", method="HEAD")
    assert head["final_url"] == f"{server}/ok" and head["bytes"] == 0


def test_redirect_loop_is_critical(server: str) -> None:
    critical("cannot follow the 302 redirect .*infinite loop", lambda: http_probe.run(f"{server}/loop"))


@pytest.mark.parametrize("path", ["/redirect-ftp", "/redirect-file"])
def test_redirect_to_other_scheme_is_critical(server: str, path: str) -> None:
    critical("", lambda: http_probe.run(f"{server}{path}"))


def test_redirect_without_location_is_reported_as_its_status(server: str) -> None:
    assert http_probe.run(f"{server}/no-location")["status"] == 302
    critical("unexpected status 302", lambda: http_probe.run(f"{server}/no-location", expect_status=200))


def test_body_is_capped(server: str) -> None:
    result = http_probe.run(f"{server}/big", max_body_bytes=1000)
    assert result["bytes"] == 1000 and result["truncated"] is True
    critical("not found in the first 1000 bytes",
             lambda: http_probe.run(f"{server}/big", max_body_bytes=1000, contains="MARKER"))
    assert http_probe.run(f"{server}/big", contains="MARKER")["truncated"] is False
    assert http_probe.run(f"{server}/big", max_body_bytes=0)["bytes"] == 0


def test_slow_server_times_out(server: str) -> None:
    critical("timed out after 0.2s", lambda: http_probe.run(f"{server}/slow", timeout=0.2))


def test_server_hanging_up_is_critical(server: str) -> None:
    critical(f"{server}/hangup", lambda: http_probe.run(f"{server}/hangup"))


def test_connection_refused_is_critical() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    critical("connection refused", lambda: http_probe.run(f"http://127.0.0.1:{port}/", timeout=2))


@pytest.mark.parametrize("verify_tls", [True, False])
def test_tls_against_plain_http_is_critical(server: str, verify_tls: bool) -> None:
    critical("cannot reach https://",
             lambda: http_probe.run(server.replace("http://", "https://") + "/ok", verify_tls=verify_tls, timeout=2))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"url": ""}, "url must be"),
        ({"url": 42}, "url must be"),
        ({"url": "ftp://127.0.0.1/"}, "scheme must be http or https"),
        ({"url": "file:///etc/passwd"}, "scheme must be http or https"),
        ({"url": "127.0.0.1:80/"}, "scheme must be http or https"),
        ({"url": "http:///path"}, "no host"),
        ({"url": "http://127.0.0.1/", "method": "GET /x"}, "method must be"),
        ({"url": "http://127.0.0.1/", "method": ""}, "method must be"),
        ({"url": "http://127.0.0.1/", "timeout": 0}, "timeout must be"),
        ({"url": "http://127.0.0.1/", "timeout": float("inf")}, "timeout must be"),
        ({"url": "http://127.0.0.1/", "timeout": "5"}, "timeout must be"),
        ({"url": "http://127.0.0.1/", "expect_status": 99}, "expect_status must be"),
        ({"url": "http://127.0.0.1/", "expect_status": [200, "201"]}, "expect_status must be"),
        ({"url": "http://127.0.0.1/", "expect_status": []}, "expect_status must not be"),
        ({"url": "http://127.0.0.1/", "expect_status": True}, "expect_status must be"),
        ({"url": "http://127.0.0.1/", "contains": ""}, "contains must be"),
        ({"url": "http://127.0.0.1/", "contains": 1}, "contains must be"),
        ({"url": "http://127.0.0.1/", "headers": ["X: 1"]}, "headers must be"),
        ({"url": "http://127.0.0.1/", "headers": {"X": 1}}, "headers must be"),
        ({"url": "http://127.0.0.1/", "headers": {"X": "a\r\nY: b"}}, "CR/LF"),
        ({"url": "http://127.0.0.1/", "verify_tls": "no"}, "verify_tls must be"),
        ({"url": "http://127.0.0.1/", "max_body_bytes": -1}, "max_body_bytes must be"),
        ({"url": "http://127.0.0.1/", "max_body_bytes": 1.5}, "max_body_bytes must be"),
    ],
)
def test_bad_params_raise_value_error(params: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        http_probe.run(**params)  # type: ignore[arg-type]


def test_redirect_to_an_error_reports_the_final_status(server: str) -> None:
    critical(r"unexpected status 500 from .*/error", lambda: http_probe.run(f"{server}/redirect-error"))
    result = http_probe.run(f"{server}/redirect-error", expect_status=500)
    assert result["final_url"] == f"{server}/error"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An HTTPS server on 127.0.0.1 with a throw-away self-signed certificate: (base url, cert file)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = type("Handler", (_Handler,), {"release": threading.Event()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="http-probe-tls-server")
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", str(cert)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_tls_self_signed_is_critical_verification(tls_server: tuple[str, str]) -> None:
    base, _ = tls_server
    critical("CERTIFICATE_VERIFY_FAILED", lambda: http_probe.run(f"{base}/ok", timeout=2))


def test_tls_without_verification(tls_server: tuple[str, str]) -> None:
    base, _ = tls_server
    result = http_probe.run(f"{base}/ok", verify_tls=False, timeout=2)
    assert result["status"] == 200 and result["bytes"] == len(BODY)


def test_tls_verified_against_trusted_ca(tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # OpenSSL's default verify paths honour it
    result = http_probe.run(f"{base}/redirect", timeout=2)
    assert result["final_url"] == f"{base}/ok" and result["up"] == 1
    # the certificate was made to last one day: its expiry is about a day from now (unix time)
    assert 0 < float(str(result["tls_cert_expiry_timestamp_seconds"])) - time.time() <= 86400 + 60


def test_tls_expiry_of_an_error_status(tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    result = http_probe.run(f"{base}/error", expect_status=500, timeout=2)
    assert result["status"] == 500
    assert 0 < float(str(result["tls_cert_expiry_timestamp_seconds"])) - time.time() <= 86400 + 60


def test_probes_in_one_process_share_no_tls_state(
    server: str, tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The opener is shared by every probe in a process: an expiry or a context must not outlive its probe."""
    base, cert = tls_server
    critical("CERTIFICATE_VERIFY_FAILED", lambda: http_probe.run(f"{base}/ok", timeout=2))
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    assert http_probe.run(f"{base}/ok", timeout=2)["up"] == 1  # the CA bundle is read per probe
    assert "tls_cert_expiry_timestamp_seconds" not in http_probe.run(f"{server}/ok")  # plain http: none
    unverified = http_probe.run(f"{base}/ok", verify_tls=False, timeout=2)
    assert unverified["up"] == 1 and "tls_cert_expiry_timestamp_seconds" not in unverified
    monkeypatch.delenv("SSL_CERT_FILE")
    critical("CERTIFICATE_VERIFY_FAILED", lambda: http_probe.run(f"{base}/ok", timeout=2))  # verifies again


def test_rehearsal_connects_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the rehearsal tried to connect or send")

    for name in ("connect", "connect_ex", "send", "sendall", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(http_probe, "_rehearsal", None)
    http_probe.warm_up()
    assert http_probe._rehearsal == "ok"


def test_failed_rehearsal_reports_no_check_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spare that rehearsed becomes the run: a state reported by the rehearsal would be the run's."""
    monkeypatch.setattr(http_probe, "_CANNED", b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    state, _ = state_of(http_probe.warm_up)
    assert state is None
    assert str(http_probe._rehearsal).startswith("not up: critical: unexpected status 500")
