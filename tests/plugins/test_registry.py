from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from sidecar.config import CheckConfig, Settings
from sidecar.errors import BadRequest, PluginNotFound
from sidecar.plugins import discover
from sidecar.plugins.metadata import read_metadata
from sidecar.runner import Runner


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
    assert reg.get("computed").metadata.invalid == "timeout_seconds is invalid: not a plain literal"
    assert reg.get("computed").to_dict()["problem"] == "timeout_seconds is invalid: not a plain literal"
    assert reg.errors == []  # a broken file is listed broken, not a configuration error that stops serve
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
    assert reg.errors == [f"plugin_path: {str(tmp_path / 'nope')!r} is not a directory"]


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
    assert reg.errors == ["config: [checks.ghost]: plugin = 'no_such_plugin' is invalid: no such plugin (known: "
                          + ", ".join(n for n in reg.names() if n != "api") + ")"]


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


BAD_METADATA = [
    ('interval_seconds = "often"', "interval_seconds = 'often' is invalid"),
    ("interval_seconds = float('nan')", "interval_seconds is invalid: not a plain literal"),
    ("interval_seconds = -5", "interval_seconds = -5 is invalid: expected a number > 0"),
    ("timeout_seconds = -1", "timeout_seconds = -1 is invalid"),
    ("timeout_seconds = 1e999", "timeout_seconds = inf is invalid"),
    ("memory_limit_mb = 0", "memory_limit_mb = 0 is invalid: expected an integer >= 1"),
    ("memory_limit_mb = 1.5", "memory_limit_mb = 1.5 is invalid"),
    ("memory_limit_mb = True", "memory_limit_mb = True is invalid"),
    ("version = 2", "version = 2 is invalid"),
]


@pytest.mark.parametrize(("line", "needle"), BAD_METADATA)
def test_bad_metadata_lists_the_plugin_as_broken(tmp_path, line, needle):
    _write(tmp_path, "plug", f"{line}\ndef run():\n    return 1\n")
    reg = discover(Settings(plugin_path=(str(tmp_path),), entry_points=False))
    assert needle in (reg.get("plug").metadata.invalid or "")
    assert needle in reg.get("plug").to_dict()["problem"]
    assert reg.errors == []


@pytest.mark.parametrize(("line", "needle"), BAD_METADATA)
def test_metadata_and_check_tables_agree(tmp_path, line, needle):
    """The same key and value is refused as plugin metadata and in a [checks.NAME] table."""
    from sidecar.config import load_settings
    from sidecar.errors import ConfigError

    key = line.split(" = ")[0]
    if key == "version" or "not a plain literal" in needle:
        return  # checks have no version; TOML has only literals
    value = line.split(" = ")[1].replace("True", "true").replace("1e999", "inf")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[checks.c]\nplugin = "echo"\n{key} = {value}\n')
    with pytest.raises(ConfigError, match=key):
        load_settings({"config": str(cfg)}, {})


def test_a_check_may_not_take_a_plugin_name():
    reg = discover(Settings(checks=(CheckConfig("echo", "sleep"),), entry_points=False))
    assert reg.get("echo").source == "builtin"
    assert len(reg.errors) == 1 and "the name 'echo' clashes with a plugin" in reg.errors[0]


def test_allow_list_keeps_only_the_named_plugins():
    reg = discover(Settings(plugins=("echo", "sleep"), checks=(CheckConfig("c", "echo"),
                                                                CheckConfig("d", "http_probe")),
                            entry_points=False))
    assert reg.names() == ["echo", "sleep", "c"]
    assert reg.errors and "plugin = 'http_probe' is invalid: no such plugin (known: echo, sleep)" in reg.errors[0]
    reg = discover(Settings(plugins=("echo", "ech"), entry_points=False))
    assert reg.errors == ["plugins = ['echo', 'ech'] is invalid: no plugin named 'ech' was found"]


def test_preload_false_in_metadata_reaches_the_plugin_reference(tmp_path):
    (tmp_path / "eager.py").write_text("def run():\n    return 1\n")
    (tmp_path / "lazy.py").write_text("preload = False\ndef run():\n    return 1\n")
    (tmp_path / "bad.py").write_text("preload = 'no'\ndef run():\n    return 1\n")
    reg = discover(Settings(plugin_path=(str(tmp_path),), entry_points=False))
    assert reg.get("eager").ref.preload is True
    assert reg.get("lazy").ref.preload is False
    assert "preload" in (reg.get("bad").metadata.invalid or "")


def test_a_name_with_a_final_newline_is_refused_whole(tmp_path):
    """`re.match` with `$` accepts `evil\\n` (`$` matches before a final newline): names are matched whole."""
    name = "evil\n"
    _write(tmp_path, name, "def run():\n    return 1\n")
    reg = discover(Settings(plugin_path=(str(tmp_path),), entry_points=False))
    assert name not in reg.entries
    assert any(f"invalid plugin name {name!r}" in why for _, why in reg.rejected)


def test_a_newline_plugin_file_added_before_a_reload_is_refused_and_the_scrape_parses(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    settings = Settings(data_dir=str(tmp_path / "data"), plugin_path=(str(plugins),), entry_points=False)
    runner = Runner(settings, start_scheduler=False, reload_source=lambda: settings)
    try:
        _write(plugins, "evil\n", "def run():\n    return 1\n")
        _write(plugins, "fine", "def run():\n    return 1\n")
        assert runner.reload()["added"] == ["fine"]
        assert "evil\n" not in runner.registry.entries
        body, _ = runner.render_metrics()
        plugins_seen = {s.labels.get("plugin") for fam in parse_text(body.decode()) for s in fam.samples}
        assert "fine" in plugins_seen and "evil\n" not in plugins_seen
    finally:
        runner.close()


def test_a_check_table_may_say_host_processes_else_its_plugin_decides(tmp_path):
    (tmp_path / "s.toml").write_text('[checks.procs]\nplugin = "echo"\nhost_processes = true\n'
                                     '[checks.narrow]\nplugin = "process_check"\nhost_processes = false\n'
                                     '[checks.as_plugin]\nplugin = "process_check"\n')
    from sidecar.config import load_settings

    reg = discover(load_settings({"config": str(tmp_path / "s.toml"), "entry_points": False}))
    assert reg.get("echo").host_processes is False and reg.get("procs").host_processes is True
    assert reg.get("narrow").host_processes is False and reg.get("as_plugin").host_processes is True


def test_check_only_holds_for_the_bare_plugin_not_for_its_checks():
    reg = discover(Settings(checks=(CheckConfig("disk", "nagios", {"command": ["/bin/true"]}),), entry_points=False))
    assert reg.get("nagios").check_only is True and reg.get("disk").check_only is False
    assert reg.get("echo").check_only is False
