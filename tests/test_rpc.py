"""The worker → runner relay over a real Unix socket: every declared operation, errors, raw bodies, resends."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import Settings
from sidecar.errors import PluginNotFound, RunnerUnavailable, Saturated, SidecarError
from sidecar.framing import recv_frame, send_frame
from sidecar.metrics import CONTENT_TYPE_TEXT, OPENMETRICS_CONTENT_TYPE
from sidecar.rpc import OPERATIONS, RunnerClient, RunnerServer
from sidecar.runner import Runner

from .conftest import HOSTILE, poll


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


def _listener(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(64)
    return listener


def _serve_each(listener: socket.socket, on_conn: Callable[[socket.socket], None]) -> None:
    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=on_conn, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def _finishes(fn: Callable[[], object], within: float = 30.0) -> BaseException | None:
    """Run `fn` in a thread; the exception it raised (None if none), or fail if it hangs."""
    got: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            got.append(None)
        except BaseException as exc:  # handed to the test
            got.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(within)
    assert got, f"the call hung for {within:g} s"
    return got[0]


def test_a_runner_at_its_connection_limit_answers_saturated(
        tmp_path_factory: pytest.TempPathFactory, sock_dir: Path) -> None:
    runner = Runner(Settings(data_dir=str(tmp_path_factory.mktemp("cap")), entry_points=False),
                    start_scheduler=False)
    server = RunnerServer(str(sock_dir / "cap.sock"), runner, max_connections=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    held = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    try:
        for conn in held:
            conn.connect(str(sock_dir / "cap.sock"))
        client = RunnerClient(str(sock_dir / "cap.sock"))
        assert isinstance(_finishes(client.ping), Saturated)
        assert server.refused == 1
        for conn in held:
            conn.close()
        poll("the runner to free its connections", lambda: (_finishes(client.ping) is None, server.refused))
        client.close()
    finally:
        for conn in held:
            conn.close()
        server.shutdown()
        server.server_close()
        runner.close()


def test_a_runner_that_never_answers_is_unavailable_not_a_hang(sock_dir: Path) -> None:
    path = str(sock_dir / "silent.sock")
    listener = _listener(path)
    kept: list[socket.socket] = []
    _serve_each(listener, kept.append)  # reads nothing, answers nothing, closes nothing
    try:
        client = RunnerClient(path, max_timeout_seconds=0.1, reply_margin_seconds=0.1)
        error = _finishes(lambda: client.run("hello"))
        assert isinstance(error, RunnerUnavailable) and "did not answer" in error.message
    finally:
        _stop(listener)
        for conn in kept:
            conn.close()


def _stop(listener: socket.socket) -> None:
    listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
    listener.close()


def test_a_worker_waits_for_one_of_its_connections_then_answers_saturated(sock_dir: Path) -> None:
    path = str(sock_dir / "busy.sock")
    listener = _listener(path)
    kept: list[socket.socket] = []
    _serve_each(listener, kept.append)
    client = RunnerClient(path, max_concurrent_runs=1, wait_seconds=0.2)
    busy = [threading.Thread(target=_finishes, args=(lambda: client.run("hello"),), daemon=True)
            for _ in range(client.max_connections)]
    try:
        for t in busy:
            t.start()
        poll("every connection of the worker to be open", lambda: (len(kept) == client.max_connections, len(kept)))
        error = _finishes(client.ping)
        assert isinstance(error, Saturated) and error.retry_after == 1
        assert len(kept) == client.max_connections  # it never opened one more
    finally:
        _stop(listener)
        for conn in list(kept):
            conn.close()  # the waiting runs end (runner_unavailable)
        for t in busy:
            t.join(30)


def test_idle_connections_are_capped_and_ones_the_runner_closed_are_not_used(sock_dir: Path) -> None:
    path = str(sock_dir / "pool.sock")
    listener = _listener(path)
    opened: list[socket.socket] = []
    all_open = threading.Event()
    burst = 6

    def answer(conn: socket.socket) -> None:  # answers every call once `burst` connections are open
        opened.append(conn)
        if len(opened) >= burst:
            all_open.set()
        with conn:
            while recv_frame(conn):
                all_open.wait(30)
                send_frame(conn, b'{"ok": true}')
                send_frame(conn, b"")

    _serve_each(listener, answer)
    client = RunnerClient(path, max_concurrent_runs=1, max_idle=2)
    try:
        calls = [threading.Thread(target=client.ping, daemon=True) for _ in range(burst)]
        for t in calls:
            t.start()
        for t in calls:
            t.join(30)
        assert len(opened) == burst and len(client._idle) == 2  # the rest closed as the burst ended
        for conn in opened:  # the runner hangs up on the connections the worker kept
            with contextlib.suppress(OSError):  # the ones the worker closed are gone already
                conn.shutdown(socket.SHUT_RDWR)
        assert _finishes(lambda: client.run("hello")) is None  # a run is never sent on a closed one
        assert len(opened) == burst + 1
    finally:
        _stop(listener)
        client.close()
