"""Settings: each declared once, with its env var, CLI flag, TOML key, type, default and help.

Precedence: CLI flag > `SIDECAR_*` environment variable > TOML file (`SIDECAR_CONFIG` / `--config`)
> default. The CLI's `serve --help` and the README's configuration table are generated from
`SETTINGS`; a test fails when the README table is stale.

The TOML file may also declare checks: named, configured instances of a plugin::

    [checks.api_health]
    plugin = "http_probe"
    params = { url = "http://127.0.0.1:8080/healthz" }
    interval_seconds = 30
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["SETTINGS", "CheckConfig", "Setting", "Settings", "load_settings", "settings_table"]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = kind(raw)
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _bind(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    return raw


def _paths(raw: str) -> tuple[str, ...]:
    return tuple(p for p in raw.split(os.pathsep) if p)


def _names(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _buckets(raw: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in raw.split(",") if v.strip())
    if not values or any(b <= 0 for b in values) or list(values) != sorted(set(values)):
        raise ValueError("expected increasing positive seconds, comma-separated, e.g. 0.01,0.1,1,10")
    return values


def _optional_str(raw: str) -> str | None:
    return raw or None


def _bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    default_doc: str | None = None

    @property
    def env(self) -> str:
        return f"SIDECAR_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


#: Every setting of the sidecar, in the order the README lists them.
SETTINGS: tuple[Setting, ...] = (
    Setting("bind", _bind, "127.0.0.1:9464", "listen address HOST:PORT (loopback by default)"),
    Setting("workers", _positive(int), 2, "gunicorn worker processes (HTTP front ends)"),
    Setting("threads", _positive(int), 8,
            "unused: workers are gevent (a greenlet per connection); accepted so older configs start"),
    Setting("plugin_path", _paths, (), "extra plugin directories, os.pathsep-separated"),
    Setting("config", _optional_str, None, "TOML file with settings and [checks.NAME] tables"),
    Setting("data_dir", str, "./.sidecar", "directory of the run-history database",
            "`./.sidecar` (container: `/var/lib/sidecar`)"),
    Setting("api_token", _optional_str, None, "bearer token required by write routes; never passed to plugins"),
    Setting("default_timeout_seconds", _positive(float), 60.0, "per-run timeout when a plugin or call sets none"),
    Setting("max_timeout_seconds", _positive(float), 300.0, "upper bound a plugin or call may ask for"),
    Setting("default_memory_limit_mb", _positive(int), 1024,
            "per-run memory limit (address space, RLIMIT_AS; includes the ~30 MB interpreter)"),
    Setting("max_concurrent_runs", _positive(int), 2 * _cores(), "sandboxes at once; beyond it 503",
            "2 × cores"),
    Setting("duration_buckets", _buckets, (), "execution-time histogram buckets, seconds, comma-separated",
            "1 ms … max timeout"),
    Setting("history_retention", _positive(int), 1000, "runs kept per plugin in the history"),
    Setting("max_body_bytes", _positive(int), 1024 * 1024, "largest accepted request body"),
    Setting("max_result_bytes", _positive(int), 8 * 1024 * 1024, "largest plugin result (JSON bytes)"),
    Setting("max_output_bytes", _positive(int), 64 * 1024, "stdout/stderr kept per run and stream (head + tail)"),
    Setting("plugin_env", _names, (), "extra environment variable names passed through to plugins"),
    Setting("entry_points", _bool, True, "load plugins from the `sidecar.plugins` entry-point group"),
    Setting("log_level", str, "INFO", "logging level"),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class CheckConfig:
    """A named, configured instance of a plugin, from a `[checks.NAME]` table."""

    name: str
    plugin: str
    params: Mapping[str, Any] = field(default_factory=dict)
    interval_seconds: float | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: int | None = None
    description: str | None = None


@dataclass(frozen=True)
class Settings:
    bind: str = "127.0.0.1:9464"
    workers: int = 2
    threads: int = 8
    plugin_path: tuple[str, ...] = ()
    config: str | None = None
    data_dir: str = "./.sidecar"
    api_token: str | None = None
    default_timeout_seconds: float = 60.0
    max_timeout_seconds: float = 300.0
    default_memory_limit_mb: int = 1024
    max_concurrent_runs: int = field(default_factory=lambda: 2 * _cores())
    duration_buckets: tuple[float, ...] = ()
    history_retention: int = 1000
    max_body_bytes: int = 1024 * 1024
    max_result_bytes: int = 8 * 1024 * 1024
    max_output_bytes: int = 64 * 1024
    plugin_env: tuple[str, ...] = ()
    entry_points: bool = True
    log_level: str = "INFO"
    checks: tuple[CheckConfig, ...] = ()

    def __post_init__(self) -> None:
        if self.default_timeout_seconds > self.max_timeout_seconds:
            raise ConfigError(
                f"default_timeout_seconds ({self.default_timeout_seconds:g}) exceeds "
                f"max_timeout_seconds ({self.max_timeout_seconds:g})"
            )

    @property
    def buckets(self) -> tuple[float, ...]:
        """Histogram buckets: the configured ones, or 1 ms up to the max timeout."""
        if self.duration_buckets:
            return self.duration_buckets
        base = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
        out = tuple(float(b) for b in base if b < self.max_timeout_seconds)
        return (*out, float(self.max_timeout_seconds))

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _coerce(setting: Setting, value: Any, where: str) -> Any:
    raw = value
    if isinstance(value, list | tuple):
        raw = (os.pathsep if setting.name == "plugin_path" else ",").join(str(v) for v in value)
    elif isinstance(value, bool):
        raw = "true" if value else "false"
    try:
        return setting.parse(str(raw))
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid value {value!r} for {setting.name}: {exc}") from None


def _checks(table: Any, path: str) -> tuple[CheckConfig, ...]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [checks] must be a table of tables")
    allowed = {f.name for f in fields(CheckConfig)} - {"name"}
    out = []
    for name, body in table.items():
        if not isinstance(body, dict) or "plugin" not in body:
            raise ConfigError(f"{path}: [checks.{name}] needs at least plugin = \"NAME\"")
        unknown = set(body) - allowed
        if unknown:
            raise ConfigError(f"{path}: [checks.{name}] unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        if not isinstance(body.get("params", {}), dict):
            raise ConfigError(f"{path}: [checks.{name}] params must be a table")
        out.append(CheckConfig(name=str(name), **body))
    return tuple(out)


def load_settings(
    cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from CLI values (already parsed; None = not given), env and the TOML file."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = cli.get("config") or environ.get("SIDECAR_CONFIG") or None
    checks: tuple[CheckConfig, ...] = ()
    if config_path:
        try:
            data = tomllib.loads(Path(config_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc}") from None
        checks = _checks(data.pop("checks", {}), config_path)
        for key, value in data.items():
            if key not in _BY_NAME:
                raise ConfigError(f"{config_path}: unknown setting {key!r}; known: {', '.join(_BY_NAME)}")
            values[key] = _coerce(_BY_NAME[key], value, config_path)
        values["config"] = config_path
    for s in SETTINGS:
        if s.env in environ:
            values[s.name] = _coerce(s, environ[s.env], s.env)
    for name, value in cli.items():
        if name in _BY_NAME:
            values[name] = value if not isinstance(value, str) else _coerce(_BY_NAME[name], value, _BY_NAME[name].flag)
    return Settings(**values, checks=checks)


def settings_table() -> str:
    """The README's configuration table (Markdown), generated from SETTINGS."""
    rows = ["| env var | CLI flag | TOML key | default | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        default = s.default_doc or (f"`{s.default}`" if s.default not in (None, (), "") else "none")
        rows.append(f"| `{s.env}` | `{s.flag}` | `{s.name}` | {default} | {s.help} |")
    return "\n".join(rows)
