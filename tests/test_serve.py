"""serve's exit status: 0 only after a stop it was asked for."""

from __future__ import annotations

import signal

import pytest

from sidecar.serve import exit_status


@pytest.mark.parametrize(("code", "asked", "status"), [
    (-signal.SIGTERM, True, 0),  # serve forwarded SIGTERM/SIGINT as SIGTERM
    (0, True, 0),
    (-signal.SIGTERM, False, 128 + signal.SIGTERM),  # someone else stopped gunicorn
    (-signal.SIGKILL, True, 128 + signal.SIGKILL),  # asked, but the stop was not clean
    (-signal.SIGKILL, False, 128 + signal.SIGKILL),
    (0, False, 1),  # gunicorn ended on its own: never a clean stop
    (1, False, 1),
    (3, True, 3),
])  # fmt: skip
def test_exit_status(code: int, asked: bool, status: int) -> None:
    got, why = exit_status(code, asked)
    assert got == status
    assert why and "\n" not in why


def test_exit_status_names_the_signal_nobody_asked_for() -> None:
    assert exit_status(-signal.SIGTERM, asked=False)[1] == "gunicorn was killed by SIGTERM that serve did not send"
    assert "exited 0" in exit_status(0, asked=False)[1]
