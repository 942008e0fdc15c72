"""Probe an HTTP(S) endpoint: status, optional body content, duration, TLS certificate expiry.

Useful to an operator as a blackbox check of the service this sidecar sits next to (or any HTTP
dependency it needs): a wrong status, a missing marker string, a refused connection or a timeout makes
the check **critical** (`sidecar_check_state`, with the reason on the status page and in the history)
on a run that succeeded: the target is down, the probe is fine. Bad parameters fail the run (outcome
`value`). The result's numbers are exported as `sidecar_check_value{field}`: `up` (1 or 0), `status`,
`duration_seconds`, `bytes`, and for https with a verified certificate `tls_cert_expiry_timestamp_seconds`
(the certificate's notAfter, unix time; alert on `… - time() < 14 * 86400`).

Redirects are followed (at most 10); `final_url` is where they led. Proxies from the environment are
ignored: the probe measures direct reachability. `timeout` bounds each socket operation and, roughly,
the whole exchange (the body is read in chunks against a deadline); DNS resolution is not bounded by it.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - getaddrinfo imports it on a run's first lookup; here a template holds it
import io
import math
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextvars import ContextVar
from http.client import HTTPConnection, HTTPException, HTTPMessage, HTTPResponse, HTTPSConnection
from typing import IO, TYPE_CHECKING, Any

from sidecar.check import state

if TYPE_CHECKING:
    from urllib.request import _UrlopenRet

description = ("HTTP(S) probe: critical on refusal, timeout, unexpected status or missing text; reports status, "
               "duration and TLS certificate expiry")
version = "1.0.0"
timeout_seconds = 30.0
memory_limit_mb = 256
#: probes need the network even under strict isolation
network = True

_METHOD = re.compile(r"^[A-Z]{1,32}$")
_CHUNK = 64 * 1024
_MAX_REDIRECTS = 10
_USER_AGENT = "sidecar-http-probe/1.0"
# urllib compiles two patterns on its first request (`_splittype`, `_splithost`): compiled here, at import,
# they live in the plugin's template instead of being compiled again in every run (~2 ms each time).
urllib.request.Request("http://127.0.0.1/")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, but keeps HEAD as HEAD and fails clearly when it cannot follow."""

    max_redirections = _MAX_REDIRECTS

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.get_method() == "HEAD":
            new.method = "HEAD"
        return new

    def http_error_302(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: HTTPMessage
    ) -> _UrlopenRet | None:
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as exc:
            if exc.fp is not fp:  # an error status further down the chain: a result, not our failure
                raise
            # A loop, too many hops, or a scheme or method it may not follow.
            fp.close()
            reason = str(exc.msg).splitlines()[0] if exc.msg else "not allowed"
            raise RuntimeError(f"cannot follow the {code} redirect from {req.full_url}: {reason}") from None
        except BaseException:
            fp.close()
            raise

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _CertifiedResponse(HTTPResponse):
    """A response that keeps its peer certificate's expiry, read as its headers arrive (before the body: the
    socket may close after it), so that the expiry travels with the response instead of a handler's state."""

    #: the peer certificate's notAfter, unix time; None: plain http, unverified, or unknown
    not_after: float | None = None

    def begin(self) -> None:
        super().begin()
        self.not_after = _not_after(self)


class _CertifiedConnection(HTTPSConnection):
    response_class = _CertifiedResponse


class _TLSChoice:
    """The TLS side of one probe: whether to verify, and its context, built on first use (a plain-http probe
    never pays for the CA bundle; each probe reads the bundle as the environment names it then)."""

    def __init__(self, verify: bool) -> None:
        self._verify = verify
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            if self._verify:
                self._context = ssl.create_default_context()
            else:
                self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        return self._context


#: the probe in progress (in this thread or task): the shared opener's TLS handler asks it for the context
_TLS_OF_PROBE: ContextVar[_TLSChoice] = ContextVar("http_probe_tls")


class _TLS(urllib.request.HTTPSHandler):
    """HTTPS with the context of the probe in progress and a response that keeps the certificate's expiry."""

    def https_open(self, req: urllib.request.Request) -> HTTPResponse:
        return self.do_open(_CertifiedConnection, req, context=_TLS_OF_PROBE.get().context())


def _opener(http: urllib.request.HTTPHandler) -> urllib.request.OpenerDirector:
    """Built by hand rather than build_opener(): no ProxyHandler (env proxies), no ftp/file/data handlers:
    a redirect to another scheme fails (UnknownHandler) instead of being followed."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        http,
        _TLS(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _Redirects(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


# Built at import, so in the template: assembling an opener (`add_handler` introspects every handler) cost
# each run ~0.3 ms. It holds no state of a probe (the TLS context is the probe's, the certificate's expiry
# its response's), so every probe in a process shares it.
_OPENER = _opener(urllib.request.HTTPHandler())


def _not_after(response: Any) -> float | None:
    """The peer certificate's expiry, read before the body (the socket may close after it); a certificate
    is only decoded when it was verified, so an unverified one reports none."""
    try:
        cert = response.fp.raw._sock.getpeercert()
        return float(ssl.cert_time_to_seconds(cert["notAfter"]))
    except Exception:
        return None


def _expected(expect_status: object) -> frozenset[int] | None:
    """The accepted statuses, or None for the default (any 2xx or 3xx)."""
    if expect_status is None:
        return None
    codes = expect_status if isinstance(expect_status, list | tuple) else [expect_status]
    if not codes:
        raise ValueError("expect_status must not be an empty list")
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"expect_status must be an HTTP status 100-599 or a list of them, got {code!r}")
    return frozenset(codes)


def _validate(
    url: object,
    method: object,
    timeout: object,
    headers: object,
    verify_tls: object,
    max_body_bytes: object,
    contains: object,
) -> tuple[str, str, float, dict[str, str], int]:
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string, got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"url scheme must be http or https, got {parts.scheme!r} in {url!r}")
    if not parts.hostname:
        raise ValueError(f"url has no host: {url!r}")
    if not isinstance(method, str) or not _METHOD.match(method.upper()):
        raise ValueError(f"method must be an HTTP method name such as GET or HEAD, got {method!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"timeout must be a number of seconds, got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError(f"headers must be an object of string names to string values, got {headers!r}")
    for key, value in headers.items():
        if not key or any(c in key + value for c in "\r\n\0"):
            raise ValueError(f"header {key!r} has an empty name or a CR/LF/NUL character")
    if not isinstance(verify_tls, bool):
        raise ValueError(f"verify_tls must be true or false, got {verify_tls!r}")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 0:
        raise ValueError(f"max_body_bytes must be an integer >= 0, got {max_body_bytes!r}")
    if contains is not None and (not isinstance(contains, str) or not contains):
        raise ValueError(f"contains must be a non-empty string, got {contains!r}")
    return url, method.upper(), float(timeout), dict(headers), max_body_bytes


def _read(body: IO[bytes], limit: int, deadline: float, timeout: float, url: str) -> tuple[bytes, bool]:
    """Read at most `limit` bytes before `deadline`; also say whether the body went on past the limit."""
    data = bytearray()
    while len(data) <= limit:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s reading the body of {url}")
        chunk = body.read(min(_CHUNK, limit + 1 - len(data)))
        if not chunk:
            return bytes(data), False
        data += chunk
    return bytes(data[:limit]), True


def run(
    url: str,
    method: str = "GET",
    timeout: float = 5.0,
    expect_status: int | list[int] | None = None,
    contains: str | None = None,
    headers: dict[str, str] | None = None,
    verify_tls: bool = True,
    max_body_bytes: int = 1_000_000,
) -> dict[str, object]:
    return _probe(_OPENER, state, url, method, timeout, expect_status, contains, headers, verify_tls, max_body_bytes)


def _probe(
    opener: urllib.request.OpenerDirector,
    report: Callable[[str, str], None],
    url: str,
    method: str,
    timeout: float,
    expect_status: int | list[int] | None,
    contains: str | None,
    headers: dict[str, str] | None,
    verify_tls: bool,
    max_body_bytes: int,
) -> dict[str, object]:
    url, method, timeout, request_headers, max_body_bytes = _validate(
        url, method, timeout, headers, verify_tls, max_body_bytes, contains
    )
    expected = _expected(expect_status)
    request_headers.setdefault("User-Agent", _USER_AGENT)
    tls = _TLSChoice(verify_tls)
    if url.lower().startswith("https:"):
        tls.context()  # loading the CA bundle takes tens of ms: not part of the measured latency
    request = urllib.request.Request(url, method=method, headers=request_headers)

    found: dict[str, object] = {"url": url, "up": 0}
    token = _TLS_OF_PROBE.set(tls)
    try:
        status, final_url, body, truncated, seconds, not_after = _exchange(
            opener, request, url, timeout, max_body_bytes
        )
    except RuntimeError as exc:  # the target is down: the probe ran, the check is critical
        report("critical", str(exc))
        return found
    finally:
        _TLS_OF_PROBE.reset(token)
    found.update(status=status, duration_seconds=seconds, bytes=len(body), final_url=final_url, truncated=truncated)
    if not_after is not None:
        found["tls_cert_expiry_timestamp_seconds"] = not_after
    ok = 200 <= status <= 399 if expected is None else status in expected
    if not ok:
        wanted = "2xx or 3xx" if expected is None else ", ".join(str(c) for c in sorted(expected))
        report("critical", f"unexpected status {status} from {final_url} (expected {wanted})")
        return found
    if contains is not None and contains.encode("utf-8") not in body:
        where = f"the first {len(body)} bytes of the body" if truncated else "the body"
        report("critical", f"{contains!r} not found in {where} of {final_url} (status {status})")
        return found
    found["up"] = 1
    return found


def _exchange(
    opener: urllib.request.OpenerDirector,
    request: urllib.request.Request,
    url: str,
    timeout: float,
    max_body_bytes: int,
) -> tuple[int, str, bytes, bool, float, float | None]:
    """(status, final url, body, truncated, seconds, the final hop's certificate expiry) of one exchange;
    RuntimeError when the target is down."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    response: HTTPResponse | urllib.error.HTTPError | None = None
    not_after: float | None = None
    try:
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:  # any status but 2xx; its body is still readable
            if exc.fp is None:
                status, final_url, body, truncated = exc.code, exc.filename or url, b"", False
            else:
                response = exc
        if response is not None:
            with response:
                status = response.status if isinstance(response, HTTPResponse) else response.code
                final_url = response.geturl()
                answer = response.fp if isinstance(response, urllib.error.HTTPError) else response
                if isinstance(answer, _CertifiedResponse):
                    not_after = answer.not_after
                body, truncated = _read(response, max_body_bytes, deadline, timeout, url)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise RuntimeError(f"timed out after {timeout:g}s connecting to {url}") from None
        if isinstance(reason, ConnectionRefusedError):
            raise RuntimeError(f"connection refused by {url}") from None
        raise RuntimeError(f"cannot reach {url}: {reason}") from None
    except TimeoutError:
        raise RuntimeError(f"timed out after {timeout:g}s waiting for {url}") from None
    except (OSError, HTTPException) as exc:
        raise RuntimeError(f"HTTP exchange with {url} failed: {type(exc).__name__}: {exc}") from None
    return status, final_url, body, truncated, round(time.perf_counter() - started, 6), not_after


# The rehearsal (`warm_up`). A run is a fresh fork of the template: every page of the template it writes (a
# reference count of each object its code touches) is first copied, a few microseconds per page, and a probe's
# own code touches a few hundred of them: most of a plain-http probe's cost in a run. The sandbox forks each
# run ahead of its request and calls `warm_up` there, while nobody waits: the probe rehearses once against a
# canned answer, through the same opener code, http.client and the result (and a numeric address lookup and
# a socket it never connects), so that the real probe finds those pages already its own. It sends nothing,
# connects nowhere and reads no file.

_CANNED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


class _CannedSocket:
    """Just enough of a connected socket for http.client: takes any request, answers `_CANNED`."""

    def sendall(self, data: bytes) -> None:
        pass

    def makefile(self, mode: str) -> IO[bytes]:
        return io.BytesIO(_CANNED)

    def close(self) -> None:
        pass


class _CannedConnection(HTTPConnection):
    def connect(self) -> None:
        """A real connection's address lookup (numeric: no resolver asked) and socket, short of connecting."""
        for family, kind, proto, _, _ in socket.getaddrinfo(
            self.host, self.port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
        ):
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(5.0)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = _CannedSocket()


class _CannedHTTP(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> HTTPResponse:
        return self.do_open(_CannedConnection, req)


_REHEARSAL = _opener(_CannedHTTP())
#: what the last rehearsal in this process came to: None (none yet), "ok", or why it failed
_rehearsal: str | None = None


def warm_up() -> None:
    """Called by the sandbox in a run's process before its request (see the plugins page): probe the canned
    answer once. It never raises (a failed rehearsal only costs its pages) and reports no check state."""
    global _rehearsal
    reported: list[str] = []
    try:
        result = _probe(_REHEARSAL, lambda value, reason: reported.append(f"{value}: {reason}"),
                        "http://127.0.0.1/", "GET", 5.0, None, None, None, True, 1_000_000)
        _rehearsal = "ok" if result.get("up") == 1 else f"not up: {'; '.join(reported) or result}"
    except Exception as exc:
        _rehearsal = f"{type(exc).__name__}: {exc}"

