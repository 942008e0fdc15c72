"""The worker → runner relay over a real Unix socket: every declared operation, errors, raw bodies, resends."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import Settings
from sidecar.errors import PluginNotFound, RunnerUnavailable, SidecarError
from sidecar.framing import recv_frame, send_frame
from sidecar.metrics import CONTENT_TYPE_TEXT, OPENMETRICS_CONTENT_TYPE
from sidecar.rpc import OPERATIONS, RunnerClient, RunnerServer
from sidecar.runner import Runner

from .conftest import HOSTILE


@pytest.fixture(scope="module")
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sc-rpc-"))  # short: a Unix socket path is limited to ~100 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, sock_dir: Path) -> Iterator[tuple[Runner, RunnerClient]]:
    runner = Runner(Settings(data_dir=str(tmp_path_factory.mktemp("rpc")), plugin_path=(str(HOSTILE),),
                             entry_points=False), start_scheduler=False)
    server = RunnerServer(str(sock_dir / "runner.sock"), runner)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = RunnerClient(str(sock_dir / "runner.sock"))
    yield runner, client
    client.close()
    server.shutdown()
    server.server_close()
    runner.close()


def test_operations_are_the_runners_marked_methods() -> None:
    assert set(OPERATIONS) == {"plugins", "plugin", "health", "runs", "run", "reject", "render_metrics",
                                 "ready", "ping", "probe", "reload", "status"}
    assert {n for n, op in OPERATIONS.items() if op.raw} == {"render_metrics"}
    assert {n for n, op in OPERATIONS.items() if not op.resend} == {"run", "reject", "probe", "reload"}
    assert "close" not in OPERATIONS and "_run_in_slot" not in OPERATIONS


def test_every_read_operation_relays_the_runners_answer(served: tuple[Runner, RunnerClient]) -> None:
    runner, client = served
    assert client.plugins() == runner.plugins()
    assert client.plugin("hello") == runner.plugin("hello")
    assert client.runs("hello", 5) == runner.runs("hello", limit=5)
    assert client.ready() == runner.ready()
    assert client.ping() is True
    relayed, direct = client.health(name="hello"), runner.health("hello")
    assert relayed.pop("uptime_seconds") <= direct.pop("uptime_seconds")  # relayed first
    assert relayed == direct


def test_run_relays_and_is_recorded(served: tuple[Runner, RunnerClient]) -> None:
    runner, client = served
    before = runner.store.totals("hello").get("success", 0)
    result = client.run("hello", {"name": "relay"}, None)
    assert result["outcome"] == "success" and result["result"] == {"greeting": "hello relay"}
    assert runner.store.totals("hello")["success"] == before + 1


@pytest.mark.parametrize(("openmetrics", "content_type"), [(False, CONTENT_TYPE_TEXT),
                                                            (True, OPENMETRICS_CONTENT_TYPE)])
def test_metrics_body_travels_raw(served: tuple[Runner, RunnerClient], openmetrics: bool,
                                  content_type: str) -> None:
    _, client = served
    body, got_type = client.render_metrics(openmetrics)
    assert isinstance(body, bytes) and got_type == content_type
    if not openmetrics:
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "sidecar_plugin_success" in names
    value, raw = client.call("render_metrics", openmetrics=openmetrics)
    assert value == content_type and raw.startswith(b"# HELP")  # the header holds only the content type


def test_errors_are_rebuilt_as_the_same_class(served: tuple[Runner, RunnerClient]) -> None:
    _, client = served
    with pytest.raises(PluginNotFound):
        client.health("nope")


def test_undeclared_names_are_refused_on_both_sides(served: tuple[Runner, RunnerClient], sock_dir: Path) -> None:
    _, client = served
    with pytest.raises(AttributeError):
        client.render_metric()  # a typo
    with pytest.raises(AttributeError):
        _ = client.scheduler  # a Runner attribute, but not an operation
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock_dir / "runner.sock"))
        send_frame(conn, json.dumps({"op": "close", "args": [], "kwargs": {}}).encode())
        header = recv_frame(conn)
        assert header is not None and recv_frame(conn) == b""
    error = SidecarError.from_dict(json.loads(header)["error"])
    assert "unknown operation 'close'" in error.message


def _dropping_server(path: str) -> tuple[socket.socket, list[int]]:
    """A socket that reads each request and hangs up without answering; counts requests."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    seen = [0]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if recv_frame(conn):
                    seen[0] += 1

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


def test_a_dropped_read_is_sent_again_but_a_run_never(sock_dir: Path) -> None:
    path = str(sock_dir / "drops.sock")
    listener, seen = _dropping_server(path)
    try:
        client = RunnerClient(path)
        with pytest.raises(RunnerUnavailable):
            client.ping()
        assert seen[0] == 2
        with pytest.raises(RunnerUnavailable):
            client.run("hello")
        assert seen[0] == 3  # a plugin never runs twice for one request
    finally:
        listener.close()
