"""The timeout guard as a library: `sidecar.sandbox.timeout` (functions run by reference in a child)."""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

import sidecar.sandbox
from sidecar.errors import PluginNotFound
from sidecar.sandbox import client, timeout
from sidecar.sandbox.result import ErrorInfo, Outcome, PluginSandboxResult
from sidecar.sandbox.timeout import (
    DEFAULT_TIMEOUT_SECONDS,
    TimeoutGuardResult,
    run_sandboxed_with_timeout,
    run_with_guards,
    run_with_timeout,
)

from . import guard_targets as targets

HOSTILE = Path(__file__).parent / "hostile"
GUARD_NAMES = ["DEFAULT_TIMEOUT_SECONDS", "TimeoutGuardResult", "run_sandboxed_with_timeout", "run_with_guards",
               "run_with_timeout"]


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


# -- the public names and the defaults --------------------------------------------------------------

@pytest.mark.parametrize("name", GUARD_NAMES)
def test_exported_from_sidecar_sandbox(name: str) -> None:
    assert name in sidecar.sandbox.__all__
    assert getattr(sidecar.sandbox, name) is getattr(timeout, name)


def test_the_default_is_the_one_declared() -> None:
    assert DEFAULT_TIMEOUT_SECONDS == 60
    assert DEFAULT_TIMEOUT_SECONDS is client.DEFAULT_TIMEOUT_SECONDS
    for func in (run_with_timeout, run_with_guards):
        assert inspect.signature(func).parameters["timeout_seconds"].default == DEFAULT_TIMEOUT_SECONDS
    assert run_with_timeout(targets.add, 1, 2).timeout_seconds == DEFAULT_TIMEOUT_SECONDS


# -- run_with_timeout -------------------------------------------------------------------------------

def test_success_has_every_field() -> None:
    r = run_with_timeout(targets.add, 2, 3, timeout_seconds=10, scale=10)
    assert isinstance(r, TimeoutGuardResult)
    assert r.value == 50
    assert r.timed_out is False
    assert r.execution_time_ms > 0
    assert r.timeout_seconds == 10
    assert r.error is None
    assert r.outcome is Outcome.SUCCESS and r.ok


def test_arguments_arrive_as_json() -> None:
    r = run_with_timeout(targets.echo, (1, 2), {"k": [None, True, 1.5, "é"]}, flag=False)
    assert r.value == {"args": [[1, 2], {"k": [None, True, 1.5, "é"]}], "kwargs": {"flag": False}}


def test_a_builtin_runs_by_reference() -> None:
    assert run_with_timeout(math.hypot, 3, 4).value == 5.0


def test_a_hanging_call_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    r = run_with_timeout(targets.hang, str(pid_file), timeout_seconds=0.5)
    assert r.timed_out is True
    assert r.outcome is Outcome.TIMEOUT and not r.ok
    assert r.value is None
    assert r.timeout_seconds == 0.5
    assert r.error is not None and r.error.type == "Timeout" and "0.5 s" in r.error.message
    assert r.execution_time_ms >= 500
    assert _gone(int(pid_file.read_text())), "the hanging function is still running"


@pytest.mark.parametrize(("kind", "outcome"), [
    ("ValueError", Outcome.VALUE),
    ("RuntimeError", Outcome.RUNTIME),
    ("ImportError", Outcome.IMPORT),
    ("ModuleNotFoundError", Outcome.IMPORT),
    ("TimeoutError", Outcome.TIMEOUT),
    ("MemoryError", Outcome.MEMORY),
    ("KeyError", Outcome.EXCEPTION),
    ("ZeroDivisionError", Outcome.EXCEPTION),
    ("TypeError", Outcome.EXCEPTION),
])
def test_each_error_type_is_reported(kind: str, outcome: Outcome) -> None:
    r = run_with_timeout(targets.raise_, kind, message="it broke")
    assert r.outcome is outcome
    assert r.value is None
    assert isinstance(r.error, ErrorInfo)
    assert r.error.type == kind
    assert "it broke" in r.error.message
    assert r.error.traceback is not None and "raise_" in r.error.traceback
    assert r.timed_out is (outcome is Outcome.TIMEOUT)


def test_arguments_that_do_not_fit_are_a_value_outcome() -> None:
    r = run_with_timeout(targets.add, 1, 2, 3)
    assert r.outcome is Outcome.VALUE
    assert r.error is not None and r.error.type == "TypeError"


def test_a_return_value_that_is_not_json_is_an_error() -> None:
    for func in (targets.returns_set, targets.returns_nan):
        r = run_with_timeout(func)
        assert r.outcome is Outcome.VALUE
        assert r.error is not None and r.error.type == "ResultNotSerializable"
        assert r.value is None


def _closure() -> object:
    captured = 1

    def inner() -> int:
        return captured

    return inner


class _Holder:
    def method(self) -> int:
        return 1


def _from_main() -> object:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec("def main_func():\n    return 1\n", namespace)
    return namespace["main_func"]


@pytest.mark.parametrize(("func", "why"), [
    (lambda: 1, "lambda"),
    (_closure(), "nested function or closure"),
    (_from_main(), "__main__"),
    (_Holder().method, "not a module-level function"),
    (42, "not callable"),
])
def test_functions_the_child_cannot_import_are_refused(func: object, why: str) -> None:
    with pytest.raises(TypeError, match=why):
        run_with_timeout(func)  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    (({1, 2},), {}, TypeError, r"argument 0 is a set"),
    (([1, object()],), {}, TypeError, r"argument 0\[1\] is a object"),
    ((), {"payload": {1: "x"}}, TypeError, r"keyword argument 'payload' has the key 1"),
    ((), {"payload": float("nan")}, ValueError, r"NaN or infinity"),
    ((), {"payload": b"bytes"}, TypeError, r"is a bytes"),
])
def test_arguments_that_are_not_json_are_refused_before_running(
    tmp_path: Path, args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], match: str,
) -> None:
    marker = tmp_path / "ran"
    call_args = args if args else (str(marker),)
    target = targets.echo if args else targets.touch
    with pytest.raises(error, match=match):
        run_with_timeout(target, *call_args, **kwargs)  # type: ignore[arg-type]
    assert not marker.exists()


def test_a_self_referencing_argument_is_refused() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested too deeply"):
        run_with_timeout(targets.echo, loop)


def test_an_impossible_timeout_is_refused() -> None:
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout_seconds"):
            run_with_timeout(targets.add, 1, 2, timeout_seconds=bad)


def test_the_child_imports_with_the_callers_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory put on sys.path after the launcher started is still searched in the child."""
    run_with_timeout(targets.add, 0, 0)  # the launcher is up with the old path
    (tmp_path / "guard_late_module.py").write_text("def answer(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "guard_late_module", raising=False)
    module = importlib.import_module("guard_late_module")
    try:
        assert run_with_timeout(module.answer, 21).value == 42
    finally:
        sys.modules.pop("guard_late_module", None)


# -- run_with_guards --------------------------------------------------------------------------------

def test_run_with_guards_returns_the_full_record() -> None:
    r = run_with_guards(targets.shout, "hi", timeout_seconds=5, memory_limit_mb=256)
    assert isinstance(r, PluginSandboxResult)
    assert r.outcome is Outcome.SUCCESS and r.result == "hi"
    assert r.stdout.text == "HI\n"
    assert 0 < r.peak_memory_bytes <= 256 * 1024 * 1024
    assert inspect.signature(run_with_guards).parameters["memory_limit_mb"].default == client.DEFAULT_MEMORY_LIMIT_MB


def test_run_with_guards_applies_both_limits(tmp_path: Path) -> None:
    assert run_with_guards(targets.allocate, 300, memory_limit_mb=200).outcome is Outcome.MEMORY
    r = run_with_guards(targets.hang, str(tmp_path / "pid"), timeout_seconds=0.3, memory_limit_mb=200)
    assert r.outcome is Outcome.TIMEOUT


def test_run_with_guards_refuses_like_the_others() -> None:
    with pytest.raises(TypeError, match="lambda"):
        run_with_guards(lambda: 1)
    with pytest.raises(ValueError, match="memory_limit_mb"):
        run_with_guards(targets.add, 1, 2, memory_limit_mb=0)


# -- run_sandboxed_with_timeout ---------------------------------------------------------------------

def test_a_builtin_plugin_by_name() -> None:
    r = run_sandboxed_with_timeout("echo", {"x": [1, 2]})
    assert r.ok and r.value == {"x": [1, 2]}
    assert r.timeout_seconds == DEFAULT_TIMEOUT_SECONDS


def test_a_plugin_file_by_path() -> None:
    r = run_sandboxed_with_timeout(str(HOSTILE / "hello.py"), {"name": "guard"}, timeout_seconds=5)
    assert r.ok and r.value == {"greeting": "hello guard"}
    assert r.timeout_seconds == 5


def test_a_plugin_on_the_plugin_path_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "guard_custom.py").write_text("def run(n=1):\n    return {'n': n}\n")
    monkeypatch.setenv("SIDECAR_PLUGIN_PATH", str(tmp_path))
    assert run_sandboxed_with_timeout("guard_custom", {"n": 7}).value == {"n": 7}


def test_a_plugin_that_hangs_times_out() -> None:
    r = run_sandboxed_with_timeout(str(HOSTILE / "loop.py"), timeout_seconds=0.5)
    assert r.timed_out and r.outcome is Outcome.TIMEOUT
    assert r.error is not None and r.error.type == "Timeout"


def test_the_plugins_own_timeout_applies_when_none_is_given(tmp_path: Path) -> None:
    plugin = tmp_path / "slow.py"
    plugin.write_text("import time\ntimeout_seconds = 0.4\n\ndef run():\n    time.sleep(30)\n")
    r = run_sandboxed_with_timeout(str(plugin))
    assert r.timed_out and r.timeout_seconds == 0.4


def test_plugin_errors_are_outcomes() -> None:
    r = run_sandboxed_with_timeout(str(HOSTILE / "raises.py"), {"kind": "ValueError"})
    assert r.outcome is Outcome.VALUE and r.error is not None and r.error.type == "ValueError"


def test_bad_plugin_inputs_are_refused_before_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDECAR_PLUGIN_PATH", raising=False)
    with pytest.raises(PluginNotFound, match="no_such_plugin"):
        run_sandboxed_with_timeout("no_such_plugin")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        run_sandboxed_with_timeout(str(tmp_path / "missing.py"))
    with pytest.raises(TypeError, match=r"params\['x'\] is a set"):
        run_sandboxed_with_timeout("echo", {"x": {1}})
    with pytest.raises(ValueError, match="timeout_seconds"):
        run_sandboxed_with_timeout("echo", timeout_seconds=-1)
    assert os.listdir(tmp_path) == []


def test_calls_from_several_threads_run_side_by_side() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: run_with_timeout(targets.add, i, i, timeout_seconds=30), range(8)))
    assert [r.value for r in results] == [2 * i for i in range(8)]
    assert all(r.ok for r in results)
