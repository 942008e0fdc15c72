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


def test_the_token_comes_from_its_file_and_never_from_two_places(tmp_path):
    token = tmp_path / "token"
    token.write_text("from-a-secret\n")
    assert load_settings(environ={"SIDECAR_API_TOKEN_FILE": str(token)}).api_token == "from-a-secret"
    with pytest.raises(ConfigError, match="both set"):
        load_settings(environ={"SIDECAR_API_TOKEN_FILE": str(token), "SIDECAR_API_TOKEN": "x"})
    with pytest.raises(ConfigError, match="cannot read api_token_file"):
        load_settings(environ={"SIDECAR_API_TOKEN_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="SIDECAR_ISOLATION"):
        load_settings(environ={"SIDECAR_ISOLATION": "off"})


def test_a_check_may_ask_for_strict_isolation_and_the_network(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[checks.x]\nplugin = "echo"\nisolation = "strict"\nnetwork = true\n')
    check = load_settings(environ={"SIDECAR_CONFIG": str(config)}).checks[0]
    assert (check.isolation, check.network) == ("strict", True)
    config.write_text('[checks.x]\nplugin = "echo"\nisolation = "none"\n')
    with pytest.raises(ConfigError, match="isolation must be"):
        load_settings(environ={"SIDECAR_CONFIG": str(config)})
