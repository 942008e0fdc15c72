"""The run's side of a fork (`sidecar.sandbox.child`): what a spare does before its request."""

from __future__ import annotations

import sys

import pytest

from sidecar.sandbox.child import warm_run_path


def test_warming_a_templates_spare_runs_no_plugin_code_and_takes_no_report(capfd: pytest.CaptureFixture[str]) -> None:
    import sidecar.check as check

    check.take()
    check.gauge("made_at_import", 1.0)  # what a plugin reported while its template imported it
    before = dict(sys.modules)
    warm_run_path()
    assert check.take() is not None  # still there for the run: the warm-up never takes it
    assert set(sys.modules) == set(before)  # nothing imported (the plugin is the template's)
    assert capfd.readouterr() == ("", "")
