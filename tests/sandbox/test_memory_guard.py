"""The memory guard as a library: `sidecar.sandbox.memory_guard`."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import sidecar.sandbox
from sidecar.sandbox import client, memory_guard
from sidecar.sandbox.memory_guard import (
    DEFAULT_MEMORY_LIMIT_MB,
    MemoryGuardResult,
    get_memory_usage_bytes,
    run_with_memory_guard,
)
from sidecar.sandbox.result import ErrorInfo, Outcome

from . import guard_targets as targets

MB = 1024 * 1024
GUARD_NAMES = ["DEFAULT_MEMORY_LIMIT_MB", "MemoryGuardResult", "get_memory_usage_bytes", "run_with_memory_guard"]


@pytest.mark.parametrize("name", GUARD_NAMES)
def test_exported_from_sidecar_sandbox(name: str) -> None:
    assert name in sidecar.sandbox.__all__
    assert getattr(sidecar.sandbox, name) is getattr(memory_guard, name)


def test_the_default_is_the_one_declared() -> None:
    assert DEFAULT_MEMORY_LIMIT_MB == 1024
    assert DEFAULT_MEMORY_LIMIT_MB is client.DEFAULT_MEMORY_LIMIT_MB
    assert inspect.signature(run_with_memory_guard).parameters["memory_limit_mb"].default == DEFAULT_MEMORY_LIMIT_MB
    assert run_with_memory_guard(targets.add, 1, 2).limit_bytes == DEFAULT_MEMORY_LIMIT_MB * MB


# -- get_memory_usage_bytes -------------------------------------------------------------------------

def test_memory_usage_of_this_process() -> None:
    rss = get_memory_usage_bytes()
    assert isinstance(rss, int)
    assert rss > 1 * MB
    # the same measure as psutil's, give or take what this process allocates meanwhile
    assert abs(rss - psutil.Process().memory_info().rss) < 16 * MB


def test_memory_usage_of_another_process() -> None:
    code = "import sys; block = b'x' * (64 * 1024 * 1024); sys.stdout.write('ready\\n'); sys.stdout.flush(); " \
           "sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert get_memory_usage_bytes(proc.pid) >= 64 * MB
    finally:
        proc.communicate(b"")


def test_memory_usage_of_no_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(psutil.NoSuchProcess):
        get_memory_usage_bytes(proc.pid)


# -- run_with_memory_guard --------------------------------------------------------------------------

def test_success_has_every_field() -> None:
    r = run_with_memory_guard(targets.allocate, 40, memory_limit_mb=256)
    assert isinstance(r, MemoryGuardResult)
    assert r.value == 40 * MB
    assert r.peak_memory_bytes >= 40 * MB  # the child's own pages: the block it touched
    assert r.peak_memory_bytes <= 256 * MB
    assert r.limit_bytes == 256 * MB
    assert r.exceeded is False
    assert r.error is None
    assert r.outcome is Outcome.SUCCESS and r.ok


def test_allocating_past_the_limit_is_stopped() -> None:
    before = get_memory_usage_bytes()
    r = run_with_memory_guard(targets.allocate, 400, memory_limit_mb=200)
    assert r.exceeded is True
    assert r.outcome is Outcome.MEMORY and not r.ok
    assert r.value is None
    assert r.limit_bytes == 200 * MB
    assert r.peak_memory_bytes <= 200 * MB
    assert isinstance(r.error, ErrorInfo) and r.error.type == "MemoryError"
    assert r.error.traceback is not None and "allocate" in r.error.traceback
    assert get_memory_usage_bytes() - before < 100 * MB, "the caller must not hold the child's memory"


@pytest.mark.parametrize(("kind", "outcome"), [
    ("ValueError", Outcome.VALUE),
    ("RuntimeError", Outcome.RUNTIME),
    ("ImportError", Outcome.IMPORT),
    ("MemoryError", Outcome.MEMORY),
    ("KeyError", Outcome.EXCEPTION),
])
def test_each_error_type_is_reported(kind: str, outcome: Outcome) -> None:
    r = run_with_memory_guard(targets.raise_, kind, memory_limit_mb=256)
    assert r.outcome is outcome
    assert r.error is not None and r.error.type == kind and "boom" in r.error.message
    assert r.exceeded is (outcome is Outcome.MEMORY)
    assert r.value is None


def test_a_lambda_is_refused() -> None:
    with pytest.raises(TypeError, match="lambda"):
        run_with_memory_guard(lambda: 1)


def test_non_json_arguments_are_refused_before_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(TypeError, match="keyword argument 'payload'"):
        run_with_memory_guard(targets.touch, str(marker), payload=object())
    assert not os.path.exists(marker)


def test_an_impossible_limit_is_refused() -> None:
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="memory_limit_mb"):
            run_with_memory_guard(targets.add, 1, 2, memory_limit_mb=bad)  # type: ignore[arg-type]
