from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sidecar.plugins.builtin import tcp_probe

from .reported import critical


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # bound then released, never listened on: connecting is refused


def test_connects_to_listening_port(listening_port: int) -> None:
    result = tcp_probe.run("127.0.0.1", listening_port)
    assert result["host"] == "127.0.0.1"
    assert result["port"] == listening_port
    assert result["address"] == "127.0.0.1"
    assert isinstance(result["connect_seconds"], float) and result["connect_seconds"] >= 0
    assert result["up"] == 1


def test_ipv6_loopback_in_brackets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    with server:
        port = server.getsockname()[1]
        result = tcp_probe.run("[::1]", port, timeout=2)
    assert result["address"] == "::1"
    assert result["host"] == "::1"


def test_refused_port_is_critical(closed_port: int) -> None:
    critical("refused", lambda: tcp_probe.run("127.0.0.1", closed_port, timeout=2))


def test_unresolvable_host_is_critical(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)  # no real DNS: loopback only
    critical("cannot resolve 'nowhere.invalid'", lambda: tcp_probe.run("nowhere.invalid", 80))


def test_timeout_is_critical(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(*args: object, **kwargs: object) -> object:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", slow)
    critical("timed out after 0.5s connecting to 127.0.0.1:9", lambda: tcp_probe.run("127.0.0.1", 9, timeout=0.5))


def test_other_os_error_is_critical(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> object:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    critical("cannot connect to \\[::1\\]:80: Network is unreachable", lambda: tcp_probe.run("::1", 80))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"host": "", "port": 80}, "host must be"),
        ({"host": "   ", "port": 80}, "host must be"),
        ({"host": 127, "port": 80}, "host must be"),
        ({"host": "127.0.0.1", "port": 0}, "port must be"),
        ({"host": "127.0.0.1", "port": 65536}, "port must be"),
        ({"host": "127.0.0.1", "port": -1}, "port must be"),
        ({"host": "127.0.0.1", "port": "80"}, "port must be"),
        ({"host": "127.0.0.1", "port": True}, "port must be"),
        ({"host": "127.0.0.1", "port": 80, "timeout": 0}, "timeout must be"),
        ({"host": "127.0.0.1", "port": 80, "timeout": -1}, "timeout must be"),
        ({"host": "127.0.0.1", "port": 80, "timeout": float("nan")}, "timeout must be"),
        ({"host": "127.0.0.1", "port": 80, "timeout": "3"}, "timeout must be"),
    ],
)
def test_bad_params_raise_value_error(params: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tcp_probe.run(**params)  # type: ignore[arg-type]
