from __future__ import annotations

import dataclasses
import grp
import os
import re
from pathlib import Path

import pytest

from sidecar.config import SETTINGS, Settings, load_settings, settings_table
from sidecar.errors import ConfigError

CONFIGURATION_DOC = Path(__file__).parent.parent / "docs" / "configuration.md"


def test_precedence_cli_over_env_over_file(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('workers = 3\nthreads = 5\nbind = "127.0.0.1:1000"\n'
                   '[checks.disk]\nplugin = "disk_usage"\nparams = { path = "/" }\ninterval_seconds = 60\n')
    s = load_settings({"workers": "7"}, {"SIDECAR_CONFIG": str(cfg), "SIDECAR_THREADS": "6"})
    assert (s.workers, s.threads, s.bind) == (7, 6, "127.0.0.1:1000")
    assert s.checks[0].name == "disk" and s.checks[0].interval_seconds == 60


@pytest.mark.parametrize(("env", "message"), [
    ({"SIDECAR_WORKERS": "zero"}, "SIDECAR_WORKERS"),
    ({"SIDECAR_WORKERS": "0"}, r"workers = '0' is invalid: expected an integer >= 1"),
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
    with pytest.raises(ConfigError, match=r"\[checks.x\]: object missing required field `plugin`"):
        load_settings({"config": str(cfg)}, {})


def test_settings_are_the_dataclass_fields():
    defaults = Settings()
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "checks"]
    assert names == [s.name for s in SETTINGS]
    for s in SETTINGS:
        assert getattr(defaults, s.name) == s.default, s.name


def test_defaults_are_declared_once():
    from sidecar import defaults
    from sidecar.sandbox import client

    s = Settings()
    assert (s.default_timeout_seconds, s.default_memory_limit_mb, s.max_result_bytes, s.max_output_bytes) == (
        client.DEFAULT_TIMEOUT_SECONDS, client.DEFAULT_MEMORY_LIMIT_MB, client.DEFAULT_MAX_RESULT_BYTES,
        client.DEFAULT_MAX_OUTPUT_BYTES)
    assert client.DEFAULT_TIMEOUT_SECONDS is defaults.DEFAULT_TIMEOUT_SECONDS
    assert Settings().bind == defaults.BIND and Settings().max_timeout_seconds == defaults.MAX_TIMEOUT_SECONDS


def test_default_buckets_span_1ms_to_max_timeout():
    b = Settings(max_timeout_seconds=300).buckets
    assert b[0] == 0.001 and b[-1] == 300 and list(b) == sorted(b)


def test_configuration_doc_holds_the_settings_table():
    text = CONFIGURATION_DOC.read_text()
    assert settings_table() in text, "docs/configuration.md is stale: run `.venv/bin/python scripts/gen_docs.py`"
    assert re.search(r"^## Settings$", text, re.M)


CHECK = '[checks.c]\nplugin = "echo"\n'


@pytest.mark.parametrize(("line", "key", "value"), [
    ('interval_seconds = "often"', "interval_seconds", "'often'"),
    ("interval_seconds = nan", "interval_seconds", "nan"),
    ("interval_seconds = inf", "interval_seconds", "inf"),
    ("interval_seconds = -5", "interval_seconds", "-5"),
    ("interval_seconds = 0", "interval_seconds", "0"),
    ("interval_seconds = true", "interval_seconds", "True"),
    ("timeout_seconds = -1", "timeout_seconds", "-1"),
    ("timeout_seconds = -inf", "timeout_seconds", "-inf"),
    ("memory_limit_mb = 0", "memory_limit_mb", "0"),
    ("memory_limit_mb = 1.5", "memory_limit_mb", "1.5"),
    ('memory_limit_mb = "64"', "memory_limit_mb", "'64'"),
    ("params = [1, 2]", "params", "[1, 2]"),
    ('params = "x"', "params", "'x'"),
    ("description = 5", "description", "5"),
])
def test_bad_check_values_name_file_table_key_and_value(tmp_path, line, key, value):
    cfg = tmp_path / "s.toml"
    cfg.write_text(CHECK + line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": str(cfg)}, {})
    message = caught.value.message
    assert message.startswith(f"{cfg}: [checks.c]: {key} = {value} is invalid: expected"), message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(("toml", "needle"), [
    ('[checks.c]\nplugin = "Echo"\n', "plugin = 'Echo' is invalid"),
    ('[checks.c]\nplugin = "echo"\nbogus = 1\n',
     "unknown key 'bogus'; allowed: description, group, groups, host_processes, interval_seconds, isolation, "
     "memory_limit_mb, network, params, plugin, read_paths, timeout_seconds"),
    ('[checks.Bad-Name]\nplugin = "echo"\n', "the name 'Bad-Name' is invalid"),
    # `$` matches before a final newline and msgspec's pattern searches: names are matched whole
    ('[checks."nlcheck\\n"]\nplugin = "echo"\n', "the name 'nlcheck\\n' is invalid"),
    ('[checks.c]\nplugin = "echo\\n"\n', "plugin = 'echo\\n' is invalid"),
    ('plugins = ["echo\\n"]\n', "plugins = ['echo\\n'] is invalid"),
    ('checks = 5\n', "checks = 5 is invalid"),
    ('[checks]\nc = 5\n', "checks.c = 5 is invalid: expected a table"),
    ("workers = 0\n", "workers = 0 is invalid"),
    ("workers = 2.5\n", "workers = 2.5 is invalid"),
    ("default_timeout_seconds = nan\n", "default_timeout_seconds = nan is invalid"),
    ("max_timeout_seconds = inf\n", "max_timeout_seconds = inf is invalid"),
    ('max_body_bytes = "lots"\n', "max_body_bytes = 'lots' is invalid"),
    ("entry_points = 1\n", "entry_points = 1 is invalid"),
    ('log_level = "chatty"\n', "log_level = 'chatty' is invalid"),
    ('bind = "127.0.0.1:99999"\n', "port must be from 1 to 65535"),
    ('plugins = ["Echo"]\n', "plugins = ['Echo'] is invalid"),
    ("duration_buckets = [1, 0.5]\n", "increasing"),
    ("this is not toml\n", "not valid TOML"),
])
def test_bad_config_files_are_refused(tmp_path, toml, needle):
    cfg = tmp_path / "s.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_settings({"config": str(cfg)}, {})


@pytest.mark.parametrize(("env", "needle"), [
    ({"SIDECAR_DEFAULT_TIMEOUT_SECONDS": "nan"}, "SIDECAR_DEFAULT_TIMEOUT_SECONDS: default_timeout_seconds = 'nan'"),
    ({"SIDECAR_MAX_TIMEOUT_SECONDS": "inf"}, "max_timeout_seconds = 'inf' is invalid"),
    ({"SIDECAR_DEFAULT_MEMORY_LIMIT_MB": "0"}, "default_memory_limit_mb = '0' is invalid"),
    ({"SIDECAR_HISTORY_RETENTION": "1" + "0" * 400}, "history_retention"),
    ({"SIDECAR_ENTRY_POINTS": "maybe"}, "entry_points = 'maybe' is invalid"),
    ({"SIDECAR_DURATION_BUCKETS": "1,nan"}, "duration_buckets"),
])
def test_bad_env_values_are_refused(env, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_settings({}, env)


def test_good_values_are_typed(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('plugins = ["echo", "sleep"]\nduration_buckets = [0.5, 1]\n' + CHECK
                   + "interval_seconds = 5\nmemory_limit_mb = 64\nparams = { a = { b = [1] } }\n")
    s = load_settings({}, {"SIDECAR_CONFIG": str(cfg), "SIDECAR_ENTRY_POINTS": "false", "SIDECAR_API_TOKEN": "",
                           "SIDECAR_PLUGIN_ENV": "A, B"})
    assert s.plugins == ("echo", "sleep") and s.duration_buckets == (0.5, 1.0) and s.entry_points is False
    assert s.api_token is None and s.plugin_env == ("A", "B")
    check = s.checks[0]
    assert (check.interval_seconds, check.memory_limit_mb, check.params) == (5.0, 64, {"a": {"b": [1]}})


def test_missing_config_file_is_its_own_error(tmp_path):
    from sidecar.config import ConfigFileMissing

    with pytest.raises(ConfigFileMissing):
        load_settings({"config": str(tmp_path / "nope.toml")}, {})


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
    with pytest.raises(ConfigError, match="isolation = 'none' is invalid"):
        load_settings(environ={"SIDECAR_CONFIG": str(config)})


def test_the_default_data_directory_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    from sidecar.config import default_data_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_data_dir() == "/var/lib/sidecar"
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/op")
    assert default_data_dir({"XDG_STATE_HOME": "/srv/state"}) == "/srv/state/sidecar"
    assert default_data_dir({}) == "/home/op/.local/state/sidecar"
    assert default_data_dir({"XDG_STATE_HOME": "relative"}) == "/home/op/.local/state/sidecar"  # invalid: ignored


def test_relative_paths_in_the_config_file_are_relative_to_it(tmp_path, monkeypatch):
    conf = tmp_path / "etc" / "sidecar.toml"
    conf.parent.mkdir()
    (conf.parent / "token").write_text("t0ken\n")
    conf.write_text('data_dir = "history"\napi_token_file = "token"\nplugin_path = ["plugins", "/opt/p"]\n')
    monkeypatch.chdir(tmp_path)
    s = load_settings({"config": str(conf)}, environ={})
    assert s.data_dir == str(conf.parent / "history")
    assert s.api_token == "t0ken"
    assert s.plugin_path == (str(conf.parent / "plugins"), "/opt/p")
    # On the command line or in the environment, relative means the working directory, made absolute at once.
    assert load_settings({"data_dir": "h"}, environ={}).data_dir == str(tmp_path / "h")
    assert load_settings({}, environ={"SIDECAR_DATA_DIR": "/abs/h"}).data_dir == "/abs/h"
    assert load_settings({}, environ={"SIDECAR_PLUGIN_PATH": "p:/q"}).plugin_path == (str(tmp_path / "p"), "/q")


def _check(tmp_path: Path, body: str) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(f'[checks.logs]\nplugin = "echo"\n{body}\n')
    return config


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give runs groups")
def test_a_check_takes_groups_and_reads_granted_paths(tmp_path, monkeypatch):
    (tmp_path / "app-logs").mkdir()
    config = _check(tmp_path, 'group = "adm"\ngroups = ["adm", 0]\nread_paths = ["app-logs", "/etc"]')
    monkeypatch.chdir("/")
    check = load_settings({"config": str(config)}, environ={}).checks[0]
    adm = grp.getgrnam("adm").gr_gid
    assert (check.group, check.groups) == (adm, tuple(sorted({adm, 0})))
    assert check.read_paths == (str(tmp_path / "app-logs"), "/etc")  # beside the config file, like every path
    plain = load_settings({"config": str(_check(tmp_path, ""))}, environ={}).checks[0]
    assert (plain.group, plain.groups, plain.read_paths) == (None, None, ())  # the sidecar's defaults apply
    assert load_settings({}, environ={"SIDECAR_DEFAULT_GROUPS": "adm"}).default_groups == ("adm",)


@pytest.mark.parametrize(("body", "needle"), [
    ('groups = ["no-such-group"]', "[checks.logs]: groups = ['no-such-group'] is invalid: there is no group "
                                   "'no-such-group' on this host"),
    ('group = "no-such-group"', "[checks.logs]: group = 'no-such-group' is invalid: there is no group"),
    ('groups = "adm"', "[checks.logs]: groups = 'adm' is invalid: expected an array"),
    ('read_paths = ["missing"]', "[checks.logs]: read_paths = ['missing'] is invalid: "),
    ('read_paths = ["/"]', "[checks.logs]: read_paths = ['/'] is invalid: name the directories"),
])
def test_bad_groups_and_paths_are_refused_naming_file_table_and_key(tmp_path, body, needle):
    config = _check(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": str(config)}, environ={})
    assert caught.value.message.startswith(str(config)), caught.value.message
    assert needle in caught.value.message, caught.value.message


def test_groups_are_refused_when_the_sidecar_is_not_root(tmp_path, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match=r"\[checks.logs\]: groups = \['adm'\] is invalid: only a sidecar running "
                                          "as root can give its runs groups"):
        load_settings({"config": str(_check(tmp_path, 'groups = ["adm"]'))}, environ={})
    with pytest.raises(ConfigError, match="SIDECAR_DEFAULT_GROUPS: default_groups = 'adm' is invalid: only a sidecar"):
        load_settings({}, environ={"SIDECAR_DEFAULT_GROUPS": "adm"})
    with pytest.raises(ConfigError, match="SIDECAR_DEFAULT_GROUP: default_group = 'nope' is invalid"):
        load_settings({}, environ={"SIDECAR_DEFAULT_GROUP": "nope"})
