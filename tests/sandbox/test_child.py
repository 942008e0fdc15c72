"""The run's side of a fork (`sidecar.sandbox.child`): what a template's spare does before its request."""

from __future__ import annotations

import sys

import pytest

import sidecar.check as check
from sidecar.sandbox.child import warm_run_path


def test_warming_a_spare_imports_nothing_and_leaves_the_runs_report_alone(capfd: pytest.CaptureFixture[str]) -> None:
    check.take()
    check.gauge("before_the_request", 1.0)
    before = dict(sys.modules)
    warm_run_path()
    assert check.take() is not None  # no plugin warm-up: nothing of the report is touched
    assert set(sys.modules) == set(before)  # nothing imported (the plugin is the template's)
    assert capfd.readouterr() == ("", "")


def test_a_plugins_warm_up_is_called_and_what_it_reports_is_discarded() -> None:
    called: list[str] = []

    def warm_up() -> None:
        called.append("yes")
        check.state("critical", "the rehearsal's target is canned")

    check.take()
    warm_run_path(warm_up)
    assert called == ["yes"]
    assert check.take() is None  # the spare becomes the run: the rehearsal's state must not be the run's


@pytest.mark.parametrize("error", [RuntimeError("broken"), SystemExit(3), KeyboardInterrupt()])
def test_a_plugins_warm_up_that_raises_costs_its_run_nothing(error: BaseException) -> None:
    def warm_up() -> None:
        raise error

    warm_run_path(warm_up)  # returns: the run goes on to read its request
