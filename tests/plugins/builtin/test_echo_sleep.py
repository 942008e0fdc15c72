from __future__ import annotations

import math

import pytest

from sidecar.plugins.builtin import echo, sleep


def test_echo_returns_params_unchanged() -> None:
    params = {"a": 1, "b": [1, "two", None], "c": {"d": 1.5}}
    assert echo.run(**params) == params
    assert echo.run() == {}


def test_sleep_returns_seconds() -> None:
    assert sleep.run(0) == {"slept": 0}
    assert sleep.run(seconds=0.001) == {"slept": 0.001}


@pytest.mark.parametrize("seconds", [-1, -0.5, math.nan, math.inf, "1", None, True, [1]])
def test_sleep_rejects_bad_seconds(seconds: object) -> None:
    with pytest.raises(ValueError, match="seconds must be"):
        sleep.run(seconds)  # type: ignore[arg-type]
