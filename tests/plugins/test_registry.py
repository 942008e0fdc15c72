from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import CheckConfig, Settings
from sidecar.errors import BadRequest, PluginNotFound
from sidecar.plugins import discover
from sidecar.plugins.metadata import read_metadata


def _write(d: Path, name: str, body: str) -> Path:
    p = d / f"{name}.py"
    p.write_text(body)
    return p


def test_builtins_are_discovered():
    reg = discover(Settings())
    for name in ("echo", "sleep", "http_probe"):
        assert reg.get(name).source == "builtin"


def test_path_plugins_metadata_and_broken_ones_are_listed(tmp_path):
    _write(tmp_path, "good", 'description = "good one"\nversion = "2.0"\ntimeout_seconds = 5\n'
                             'memory_limit_mb = 64\ninterval_seconds = 30\ndef run():\n    return 1\n')
    _write(tmp_path, "broken", "def run(:\n")
    _write(tmp_path, "hangs", "import time\ntime.sleep(3600)\n")
    _write(tmp_path, "Bad_Name", "def run():\n    return 1\n")
    _write(tmp_path, "computed", "import os\ntimeout_seconds = os.cpu_count()\ndef run():\n    return 1\n")
    reg = discover(Settings(plugin_path=(str(tmp_path),)))
    good = reg.get("good")
    assert (good.description, good.metadata.version, good.timeout_seconds, good.memory_limit_mb,
            good.interval_seconds) == ("good one", "2.0", 5, 64, 30)
    assert good.source == "path"
    assert (reg.get("broken").metadata.problem or "").startswith("SyntaxError")
    assert reg.get("hangs").metadata.problem is None  # discovery never imports it
    assert "timeout_seconds is not a plain literal" in (reg.get("computed").metadata.problem or "")
    assert "Bad_Name" not in reg.entries
    assert any("invalid plugin name 'Bad_Name'" in why for _, why in reg.rejected)


def test_duplicate_names_keep_the_first(tmp_path):
    _write(tmp_path, "echo", "def run():\n    return 'shadow'\n")
    reg = discover(Settings(plugin_path=(str(tmp_path),)))
    assert reg.get("echo").source == "builtin"
    assert any("duplicate plugin name 'echo'" in why for _, why in reg.rejected)


def test_missing_directory_is_rejected_not_fatal(tmp_path):
    reg = discover(Settings(plugin_path=(str(tmp_path / "nope"),)))
    assert reg.get("echo")
    assert reg.rejected


def test_checks_bind_params_and_limits():
    checks = (CheckConfig("api", "http_probe", {"url": "http://127.0.0.1:1/"}, interval_seconds=15,
                          timeout_seconds=3),
              CheckConfig("ghost", "no_such_plugin"))
    reg = discover(Settings(checks=checks))
    api = reg.get("api")
    assert (api.plugin, api.source, api.interval_seconds, dict(api.params)) == (
        "http_probe", "check", 15, {"url": "http://127.0.0.1:1/"})
    assert reg.limits(api) == (3, reg.get("http_probe").memory_limit_mb or 1024)
    assert "ghost" not in reg.entries


def test_limits_defaults_caps_and_bad_values():
    reg = discover(Settings(default_timeout_seconds=7, max_timeout_seconds=20, default_memory_limit_mb=256))
    echo = reg.get("echo")
    assert reg.limits(echo) == (7, 256)
    assert reg.limits(echo, 19.5) == (19.5, 256)
    with pytest.raises(BadRequest, match="exceeds the server maximum"):
        reg.limits(echo, 21)
    for bad in (0, -1, True, "5"):
        with pytest.raises(BadRequest):
            reg.limits(echo, bad)  # type: ignore[arg-type]


def test_unknown_plugin():
    with pytest.raises(PluginNotFound):
        discover(Settings()).get("nope")


def test_metadata_from_docstring_when_no_description():
    meta = read_metadata('"""First line.\n\nMore."""\ndef run():\n    pass\n')
    assert meta.description == "First line."
