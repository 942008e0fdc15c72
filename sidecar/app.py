"""The Flask app: thin routes over the runner (in-process or over its socket)."""

from __future__ import annotations

import gzip
import hmac
import json
import os
from typing import TYPE_CHECKING, cast

from flask import Flask, Request, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from . import __version__, defaults, schema, status_page
from . import probe as probes
from .config import Settings, load_settings
from .errors import BadRequest, PayloadTooLarge, SidecarError, Unauthorized
from .openapi import openapi_document

if TYPE_CHECKING:
    # What routes may call: the runner's operations, declared once in `operations.RunnerOperations`. A
    # worker's `rpc.RunnerClient` forwards the same names to the runner process; tests may pass a fake.
    from .operations import RunnerOperations as Backend

__all__ = ["create_app", "worker_app"]

#: gzip level of scrape bodies. Measured on a 1000-plugin scrape (3.1 MiB): level 1 gives 154 KiB in 9 ms,
#: 6 gives 138 KiB in 36 ms, 9 (prometheus-client's) 133 KiB in 194 ms; a sidecar's CPU is worth more.
GZIP_LEVEL = 1


def _error(exc: SidecarError) -> Response:
    resp = jsonify({"error": {"code": exc.code, "message": exc.message}})
    resp.status_code = exc.status
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        resp.headers["WWW-Authenticate"] = 'Bearer realm="sidecar"'
    return resp


def _run_body(req: Request, settings: Settings) -> schema.RunBody:
    """The whole run request, validated before anything runs: size, JSON, depth, types, ranges."""
    # Read at most one byte past the limit ourselves: a chunked body has no Content-Length, and
    # werkzeug's limited stream would silently truncate it rather than refuse it.
    try:
        raw = req.stream.read(settings.max_body_bytes + 1)
    except Exception as exc:  # a malformed chunked body surfaces here as the server's parse error
        raise BadRequest(f"body could not be read: {type(exc).__name__}: {exc}") from None
    if len(raw) > settings.max_body_bytes:
        raise PayloadTooLarge(f"request body over {settings.max_body_bytes} bytes")
    if not raw.strip():
        return schema.RunBody()
    try:
        body = schema.decode_json(raw, schema.RunBody)
    except schema.Invalid as exc:
        raise BadRequest(str(exc)) from None
    if body.timeout_seconds is not None and body.timeout_seconds > settings.max_timeout_seconds:
        raise BadRequest(f"body: timeout_seconds = {body.timeout_seconds:g} is invalid: it exceeds the server "
                         f"maximum {settings.max_timeout_seconds:g} (SIDECAR_MAX_TIMEOUT_SECONDS)")
    return body


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    """App factory. Without a backend, an in-process Runner is started (tests, single process)."""
    settings = settings or load_settings()
    if backend is None:
        from .runner import Runner

        backend = Runner(settings)
    app = Flask("sidecar")
    app.extensions["sidecar_backend"] = backend
    token = settings.api_token

    @app.before_request
    def _guards() -> None:
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            raise PayloadTooLarge(f"request body over {settings.max_body_bytes} bytes")
        if token and (request.method == "POST" or request.path == "/probe"):  # /probe runs code too
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Unauthorized("missing or wrong bearer token")

    @app.errorhandler(SidecarError)
    def _sidecar_error(exc: SidecarError) -> Response:
        return _error(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            return _error(PayloadTooLarge(f"request body over {settings.max_body_bytes} bytes"))
        resp = jsonify({"error": {"code": (exc.name or "error").lower().replace(" ", "_"),
                                  "message": exc.description or exc.name}})
        resp.status_code = exc.code or 500
        for key, value in exc.get_headers():  # e.g. Allow on a 405
            if key.lower() != "content-type":
                resp.headers[key] = value
        return resp

    @app.get("/metrics")
    def metrics() -> Response:
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        body, content_type = backend.render_metrics(openmetrics)
        resp = Response(body, content_type=content_type)
        resp.vary.add("Accept-Encoding")
        if request.accept_encodings["gzip"] > 0:  # Prometheus asks for gzip on every scrape
            resp.set_data(gzip.compress(body, compresslevel=GZIP_LEVEL))
            resp.headers["Content-Encoding"] = "gzip"
        return resp

    @app.get("/healthz")
    def healthz() -> Response:
        backend.ping()
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        state = backend.ready()
        resp = jsonify(state)
        resp.status_code = 200 if state["ready"] else 503
        return resp

    @app.get("/plugins")
    def plugins() -> Response:
        return jsonify({"plugins": backend.plugins()})

    @app.get("/plugins/<name>")
    def plugin(name: str) -> Response:
        return jsonify(backend.plugin(name))

    @app.get("/plugins/<name>/health")
    def health(name: str) -> Response:
        return jsonify(backend.health(name))

    @app.get("/plugins/<name>/runs")
    def runs(name: str) -> Response:
        raw = request.args.get("limit", "20")
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
            raise BadRequest("limit must be an integer from 1 to 1000")
        return jsonify({"plugin": name, "runs": backend.runs(name, int(raw))})

    @app.post("/plugins/<name>/run")
    def run(name: str) -> Response:
        try:
            body = _run_body(request, settings)
        except BadRequest:
            # `reason="invalid"` counts every 400 for a known plugin; for an unknown one this raises its 404.
            backend.reject(name, "invalid")
            raise
        return jsonify(backend.run(name, body.params, body.timeout_seconds))

    @app.get("/")
    def status() -> Response:
        if request.accept_mimetypes.best_match(["application/json", "text/html"]) != "text/html":
            # JSON clients (curl, scripts): an index of the API, taken from the OpenAPI document.
            return jsonify({"name": "sidecar", "version": __version__, "status_page": "GET / with Accept: text/html",
                            "openapi": "/openapi.json", "routes": sorted(openapi_document(settings)["paths"])})
        return Response(status_page.render(backend.status()), content_type="text/html; charset=utf-8")

    @app.get("/probe")
    def probe() -> Response:
        if request.method == "HEAD":  # a HEAD has no side effects, and a probe's answer is a run
            raise MethodNotAllowed(valid_methods=["GET"])
        args = list(request.args.lists())
        try:
            req = probes.parse_request(args, request.headers.get(probes.SCRAPE_TIMEOUT_HEADER))
        except BadRequest:
            target = probes.target_of(args)
            if target is not None:  # counted like every 400 for a known plugin; an unknown one raises its 404
                backend.reject(target, "invalid")
            raise
        return Response(probes.render(backend.probe(req.target, req.params, req.budget_seconds)),
                        content_type=probes.CONTENT_TYPE)

    @app.post("/-/reload")
    def reload() -> Response:
        return jsonify(backend.reload())

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document(settings))

    return app


def worker_app() -> Flask:
    """Entry point of gunicorn workers started by `sidecar serve`: relay to the runner's socket."""
    from .rpc import RunnerClient

    cfg = json.loads(os.environ[defaults.WORKER_ENV])
    token_fd = cfg.get("api_token_fd")  # a memfd from `serve`: the token is never in the environment
    token = os.pread(int(token_fd), 1 << 16, 0).decode() if token_fd is not None else None
    max_timeout = float(cfg.get("max_timeout_seconds", defaults.MAX_TIMEOUT_SECONDS))
    settings = Settings(api_token=token, max_body_bytes=int(cfg["max_body_bytes"]),
                        max_timeout_seconds=max_timeout,  # the worker never picks a default timeout itself
                        default_timeout_seconds=min(defaults.DEFAULT_TIMEOUT_SECONDS, max_timeout))
    client = RunnerClient(cfg["socket"], max_timeout_seconds=max_timeout,
                          max_concurrent_runs=cfg.get("max_concurrent_runs"))
    return create_app(settings, cast("Backend", client))
