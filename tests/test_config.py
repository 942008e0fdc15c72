from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sidecar.config import SETTINGS, Settings, load_settings, settings_table
from sidecar.errors import ConfigError

README = Path(__file__).parent.parent / "README.md"


def test_precedence_cli_over_env_over_file(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('workers = 3\nthreads = 5\nbind = "127.0.0.1:1000"\n'
                   '[checks.disk]\nplugin = "disk_usage"\nparams = { path = "/" }\ninterval_seconds = 60\n')
    s = load_settings({"workers": "7"}, {"SIDECAR_CONFIG": str(cfg), "SIDECAR_THREADS": "6"})
    assert (s.workers, s.threads, s.bind) == (7, 6, "127.0.0.1:1000")
    assert s.checks[0].name == "disk" and s.checks[0].interval_seconds == 60


@pytest.mark.parametrize(("env", "message"), [
    ({"SIDECAR_WORKERS": "zero"}, "SIDECAR_WORKERS"),
    ({"SIDECAR_WORKERS": "0"}, "must be > 0"),
    ({"SIDECAR_BIND": "localhost"}, "HOST:PORT"),
    ({"SIDECAR_DURATION_BUCKETS": "1,0.5"}, "increasing"),
    ({"SIDECAR_DEFAULT_TIMEOUT_SECONDS": "500"}, "exceeds max_timeout_seconds"),
])
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({}, env)


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'no_such_setting'"):
        load_settings({"config": str(cfg)}, {})
    cfg.write_text("[checks.x]\nparams = {}\n")
    with pytest.raises(ConfigError, match="needs at least plugin"):
        load_settings({"config": str(cfg)}, {})


def test_settings_dataclass_matches_declarations():
    defaults = Settings()
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "checks"]
    assert names == [s.name for s in SETTINGS]
    for s in SETTINGS:
        if s.name != "max_concurrent_runs":
            assert getattr(defaults, s.name) == s.default, s.name


def test_default_buckets_span_1ms_to_max_timeout():
    b = Settings(max_timeout_seconds=300).buckets
    assert b[0] == 0.001 and b[-1] == 300 and list(b) == sorted(b)


def test_readme_configuration_table_is_current():
    text = README.read_text()
    assert settings_table() in text, "README configuration table is stale: paste `sidecar settings` output"
    assert re.search(r"## Configuration", text)
