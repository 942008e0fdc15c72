from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from sidecar.plugins.builtin import disk_usage

from .reported import critical

GIB = 1 << 30


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


@pytest.fixture
def fake_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100 GiB disk with 80 GiB used and 15 GiB available (5 GiB reserved for root): 84.21 % like df."""
    usage = _Usage(100 * GIB, 80 * GIB, 15 * GIB)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)


def test_real_filesystem(tmp_path: Path) -> None:
    result = disk_usage.run(str(tmp_path))
    assert result["path"] == str(tmp_path)
    total, used, free = result["total_bytes"], result["used_bytes"], result["free_bytes"]
    assert isinstance(total, int) and isinstance(used, int) and isinstance(free, int)
    assert total > 0 and 0 <= used <= total and 0 <= free <= total
    assert isinstance(result["used_percent"], float) and 0 <= result["used_percent"] <= 100
    assert disk_usage.run(str(tmp_path), max_used_percent=100, min_free_bytes=0)["path"] == str(tmp_path)


def test_default_path_is_root() -> None:
    assert disk_usage.run()["path"] == "/"


def test_file_path_reports_its_filesystem(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    assert disk_usage.run(str(file))["total_bytes"] == disk_usage.run(str(tmp_path))["total_bytes"]


@pytest.mark.usefixtures("fake_usage")
def test_used_percent_like_df(tmp_path: Path) -> None:
    result = disk_usage.run(str(tmp_path), max_used_percent=84.5, min_free_bytes=15 * GIB)
    assert result == {
        "path": str(tmp_path),
        "total_bytes": 100 * GIB,
        "used_bytes": 80 * GIB,
        "free_bytes": 15 * GIB,
        "used_percent": 84.21,
    }


@pytest.mark.usefixtures("fake_usage")
def test_max_used_percent_breach_is_critical(tmp_path: Path) -> None:
    critical(r"84\.21% used, above max_used_percent=80", lambda: disk_usage.run(str(tmp_path), max_used_percent=80))


@pytest.mark.usefixtures("fake_usage")
def test_min_free_bytes_breach_is_critical(tmp_path: Path) -> None:
    critical(f"below min_free_bytes={16 * GIB}", lambda: disk_usage.run(str(tmp_path), min_free_bytes=16 * GIB))


def test_min_free_bytes_breach_on_real_filesystem(tmp_path: Path) -> None:
    critical("below min_free_bytes", lambda: disk_usage.run(str(tmp_path), min_free_bytes=1 << 62))


def test_os_error_raises_runtime_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: str) -> object:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shutil, "disk_usage", broken)
    with pytest.raises(RuntimeError, match="Input/output error"):  # the check cannot see: a failed run
        disk_usage.run(str(tmp_path))


def test_nonexistent_path_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        disk_usage.run(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"path": ""}, "path must be"),
        ({"path": 1}, "path must be"),
        ({"max_used_percent": -1}, "max_used_percent must be between"),
        ({"max_used_percent": 100.5}, "max_used_percent must be between"),
        ({"max_used_percent": float("nan")}, "max_used_percent must be between"),
        ({"max_used_percent": "90"}, "max_used_percent must be a number"),
        ({"max_used_percent": True}, "max_used_percent must be a number"),
        ({"min_free_bytes": -1}, "min_free_bytes must be"),
        ({"min_free_bytes": 1.5}, "min_free_bytes must be"),
        ({"min_free_bytes": "1G"}, "min_free_bytes must be"),
    ],
)
def test_bad_params_raise_value_error(params: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        disk_usage.run(**params)  # type: ignore[arg-type]
