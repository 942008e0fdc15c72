"""Settings: each declared once, as a field of `Settings` that knows its type, range, default and help.

Precedence: CLI flag > `SIDECAR_*` environment variable > TOML file (`SIDECAR_CONFIG` / `--config`)
> default. `SETTINGS` (derived from the fields) generates `serve --help` and the settings table of
docs/configuration.md (`scripts/gen_docs.py`); a test fails when that page is stale. Every value, from
wherever it comes, goes through the same constrained types (`sidecar.schema`) as check tables and plugin
metadata; an error names its source, the key, the bad value and what is allowed.

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
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta

from . import defaults, groups, schema
from .errors import ConfigError
from .schema import Invalid, MemoryMB, PluginName, Seconds

__all__ = ["SETTINGS", "CheckConfig", "ConfigFileMissing", "Setting", "Settings", "default_data_dir", "load_settings",
           "in_force", "settings_table"]


class ConfigFileMissing(ConfigError):
    """The config file named by `--config`/`SIDECAR_CONFIG` does not exist: a usage error."""

    code = "config_file_missing"  # its own code, so that a rebuilt "config" error stays a ConfigError


def default_data_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where the history lives when no setting says: fixed per user, never relative to the working directory."""
    if os.geteuid() == 0:
        return defaults.DATA_DIR_ROOT
    environ = os.environ if environ is None else environ
    state = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec: a relative value is invalid and ignored
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "sidecar")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


Count = Annotated[int, Meta(ge=1, le=1 << 20, description="an integer >= 1")]
Bytes = Annotated[int, Meta(ge=1, le=1 << 40, description="bytes, an integer >= 1")]
Bind = Annotated[str, Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5}$",
                           description="HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")]
Bucket = Annotated[float, Meta(gt=0, le=schema.MAX_SECONDS)]
LogLevel = Annotated[str, Meta(pattern=r"^(?i:debug|info|warning|error|critical)$",
                               description="DEBUG, INFO, WARNING, ERROR or CRITICAL")]


def _port_in_range(value: Any) -> None:
    if not 0 < int(str(value).rpartition(":")[2]) < 65536:
        raise ValueError("the port must be from 1 to 65535")


def _increasing(value: Any) -> None:
    if list(value) != sorted(set(value)):
        raise ValueError("expected increasing positive seconds, comma-separated, e.g. 0.01,0.1,1,10")


def _groups_given(value: Any) -> None:
    """Groups exist here, and this sidecar (root) can give them."""
    if isinstance(value, tuple):
        groups.resolve(None, value)
    else:
        groups.resolve(value)


def _setting(default: Any, help: str, kind: Any, *, doc: str | None = None, sep: str | None = None,
             check: Callable[[Any], None] | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A Settings field: its default, help, type (with its range) and how a string splits into a list."""
    meta = {"help": help, "kind": kind, "doc": doc, "sep": sep, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CheckConfig:
    """A named, configured instance of a plugin, from a validated `[checks.NAME]` table."""

    name: str
    plugin: str
    params: Mapping[str, Any] = field(default_factory=dict)
    interval_seconds: float | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: int | None = None
    description: str | None = None
    #: "default" or "strict" for this check's runs (else the sidecar's isolation)
    isolation: str | None = None
    #: strict mode: the check may use the network
    network: bool | None = None
    #: the check reads the host's processes (None: as its plugin's metadata says)
    host_processes: bool | None = None
    #: as root: its runs' primary gid and supplementary gids (None: the sidecar's defaults)
    group: int | None = None
    groups: tuple[int, ...] | None = None
    #: absolute host paths bound read-only into its runs' view
    read_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Every setting of the sidecar, in the order docs/configuration.md lists them."""

    bind: str = _setting(defaults.BIND, "listen address HOST:PORT (loopback by default)", Bind,
                         check=_port_in_range)
    workers: int = _setting(defaults.WORKERS, "gunicorn worker processes (HTTP front ends)", Count)
    threads: int = _setting(defaults.THREADS,
                            "unused: workers are gevent (a greenlet per connection); accepted so older configs start",
                            Count)
    plugin_path: tuple[str, ...] = _setting((), "extra plugin directories, os.pathsep-separated",
                                            tuple[str, ...], sep=os.pathsep)
    config: str | None = _setting(None, "TOML file with settings and [checks.NAME] tables", str | None)
    data_dir: str = _setting(None, "directory of the run-history database; one sidecar per directory (a second "
                             "one exits 2)",
                             Annotated[str, Meta(min_length=1)], factory=lambda: default_data_dir(),
                             doc=f"`{defaults.DATA_DIR_ROOT}` as root, else `$XDG_STATE_HOME/sidecar` "
                                 "(`~/.local/state/sidecar`); `./run.sh`: `./.sidecar`")
    api_token: str | None = _setting(
        None, "bearer token required by write routes and /probe; never passed to plugins. As `--api-token` it "
        "shows in the process list: prefer `api_token_file`", str | None)
    api_token_file: str | None = _setting(
        None, "file holding the bearer token (Docker and Kubernetes secrets); read once at start", str | None)
    isolation: str = _setting(
        "default", "plugin isolation: `default`, or `strict` (read-only system, no network; needs bubblewrap)",
        Literal["default", "strict"])
    default_group: str | None = _setting(
        None, "as root: the primary group of every run (name or number) whose check sets no `group`; else each "
        "run has a gid of its own", str | None, check=_groups_given)
    default_groups: tuple[str, ...] = _setting(
        (), "as root: supplementary groups of every run whose check sets no `groups`, comma-separated (e.g. "
        "`adm` to read /var/log)", tuple[str, ...], sep=",", check=_groups_given)
    default_timeout_seconds: float = _setting(defaults.DEFAULT_TIMEOUT_SECONDS,
                                              "per-run timeout when a plugin or call sets none", Seconds)
    max_timeout_seconds: float = _setting(defaults.MAX_TIMEOUT_SECONDS, "upper bound a plugin or call may ask for",
                                          Seconds)
    default_memory_limit_mb: int = _setting(
        defaults.DEFAULT_MEMORY_LIMIT_MB,
        "per-run memory limit (address space, RLIMIT_AS; includes the ~30 MB interpreter)", MemoryMB)
    max_concurrent_runs: int = _setting(None, "sandboxes at once; beyond it 503", Count, doc="2 × cores",
                                        factory=lambda: 2 * _cores())
    duration_buckets: tuple[float, ...] = _setting(
        (), "execution-time histogram buckets, seconds, comma-separated", tuple[Bucket, ...], sep=",",
        check=_increasing, doc="1 ms … max timeout")
    templates: str = _setting(
        defaults.TEMPLATES, "`on`: fork each plugin's runs from a template process that imported it once; "
        "`off`: import the plugin in every run", Literal["on", "off"])
    max_templates: int = _setting(defaults.MAX_TEMPLATES,
                                  "templates kept at once; the least recently used is stopped beyond it", Count)
    stop_grace_seconds: float = _setting(
        defaults.STOP_GRACE_SECONDS, "on SIGTERM, how long runs in flight may finish before they end `aborted`",
        Seconds)
    history_retention: int = _setting(defaults.HISTORY_RETENTION, "runs kept per plugin in the history", Count)
    max_body_bytes: int = _setting(defaults.MAX_BODY_BYTES, "largest accepted request body", Bytes)
    max_result_bytes: int = _setting(defaults.DEFAULT_MAX_RESULT_BYTES, "largest plugin result (JSON bytes)", Bytes)
    max_plugin_series: int = _setting(
        defaults.MAX_PLUGIN_SERIES, "series a plugin or check may report (its gauges and numeric result fields); "
        "beyond it dropped and counted", Annotated[int, Meta(ge=1, le=defaults.MAX_PLUGIN_SERIES_CEILING,
                                                             description=f"1 to {defaults.MAX_PLUGIN_SERIES_CEILING}")])
    max_output_bytes: int = _setting(defaults.DEFAULT_MAX_OUTPUT_BYTES,
                                     "stdout/stderr kept per run and stream (head + tail)", Bytes)
    plugin_env: tuple[str, ...] = _setting((), "extra environment variable names passed through to plugins",
                                           tuple[str, ...], sep=",")
    plugins: tuple[str, ...] = _setting(
        (), "only these plugins (comma-separated names; checks may use only these); empty = every one found",
        tuple[PluginName, ...], sep=",", doc="all", check=schema.names)
    entry_points: bool = _setting(True, "load plugins from the `sidecar.plugins` entry-point group", bool)
    log_level: str = _setting(defaults.LOG_LEVEL, "logging level", LogLevel)
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


@dataclass(frozen=True)
class Setting:
    """One setting as the CLI and the docs see it; derived from its `Settings` field."""

    name: str
    default: Any
    help: str
    kind: Any
    default_doc: str | None = None
    sep: str | None = None
    check: Callable[[Any], None] | None = None

    @property
    def env(self) -> str:
        return f"SIDECAR_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any, where: str) -> Any:
        """The typed, range-checked value of `value` (a string from env/CLI, or a TOML value)."""
        raw = value
        if self.sep is not None and isinstance(value, str):
            raw = [part.strip() for part in value.split(self.sep) if part.strip()]
        elif isinstance(value, str) and value == "" and self.default is None:
            raw = None  # an empty env var unsets an optional setting
        try:
            typed = schema.convert(raw, self.kind, strict=not isinstance(value, str))
            if self.check is not None:
                self.check(typed)
        except (Invalid, ValueError) as exc:
            allowed = str(exc)
            described = [m.description for m in getattr(self.kind, "__metadata__", ())
                         if getattr(m, "description", None)]
            hint = f" ({described[0]})" if described and described[0] not in allowed else ""
            raise ConfigError(f"{where}: {self.name} = {value!r} is invalid: "
                              f"{allowed[:1].lower() + allowed[1:]}{hint}") from None
        return tuple(typed) if isinstance(typed, list) else typed


def _declare() -> tuple[Setting, ...]:
    out = []
    for f in fields(Settings):
        if not f.metadata:
            continue
        default = f.default if f.default_factory is MISSING else f.default_factory()
        m = f.metadata
        out.append(Setting(f.name, default, m["help"], m["kind"], m["doc"], m["sep"], m["check"]))
    return tuple(out)


#: Every setting of the sidecar, in the order docs/configuration.md lists them.
SETTINGS: tuple[Setting, ...] = _declare()

_BY_NAME = {s.name: s for s in SETTINGS}
#: Settings that name a file or directory: relative ones in the TOML file are relative to that file.
_PATHS = ("data_dir", "api_token_file", "plugin_path")


def _checks(table: Any, path: str) -> tuple[CheckConfig, ...]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: checks = {table!r} is invalid: expected [checks.NAME] tables")
    out = []
    for name, body in table.items():
        if not schema.is_name(name):  # repr: the refused name may hold a newline, and errors are one line
            raise ConfigError(f"{path}: [checks.{name!r}]: the name {name!r} is invalid: "
                              f"expected {defaults.PLUGIN_NAME_PATTERN}")
        where = f"{path}: [checks.{name}]"
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: checks.{name} = {body!r} is invalid: expected a table")
        try:
            check = schema.convert(body, schema.CheckTable, where)
        except Invalid as exc:
            raise ConfigError(str(exc)) from None
        gid, gids = _check_groups(check, where)
        out.append(CheckConfig(name=name, plugin=check.plugin, params=check.params,
                               interval_seconds=check.interval_seconds, timeout_seconds=check.timeout_seconds,
                               memory_limit_mb=check.memory_limit_mb, description=check.description,
                               isolation=check.isolation, network=check.network,
                               host_processes=check.host_processes, group=gid, groups=gids,
                               read_paths=_read_paths(check.read_paths, where, os.path.dirname(path))))
    return tuple(out)


def _check_groups(check: schema.CheckTable, where: str) -> tuple[int | None, tuple[int, ...] | None]:
    """A check's groups as gids: every one a group of this host, and given only by a root sidecar."""
    try:
        gid = groups.resolve(check.group)[0]
    except ValueError as exc:
        raise ConfigError(f"{where}: group = {check.group!r} is invalid: {exc}") from None
    try:
        gids = None if check.groups is None else groups.resolve(None, check.groups)[1]
    except ValueError as exc:
        raise ConfigError(f"{where}: groups = {check.groups!r} is invalid: {exc}") from None
    return gid, gids


def _read_paths(paths: list[str], where: str, here: str) -> tuple[str, ...]:
    """Paths a check reads, absolute (a relative one is beside the config file, as Prometheus has it); each must
    exist, since it is bound into the runs' view when their launcher starts."""
    out = []
    for path in paths:
        absolute = os.path.normpath(os.path.join(os.path.abspath(here), path))
        if not os.path.exists(absolute):
            raise ConfigError(f"{where}: read_paths = {paths!r} is invalid: {absolute!r} does not exist")
        if absolute == "/":
            raise ConfigError(f"{where}: read_paths = {paths!r} is invalid: name the directories the check reads, "
                              "not /")
        out.append(absolute)
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
            text = Path(config_path).read_text()
        except FileNotFoundError:
            raise ConfigFileMissing(f"config file {config_path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
        checks = _checks(data.pop("checks", {}), config_path)
        for key, value in data.items():
            if key not in _BY_NAME or key == "config":
                known = ", ".join(n for n in _BY_NAME if n != "config")
                raise ConfigError(f"{config_path}: unknown setting {key!r}; known: {known}, and [checks.NAME] tables")
            values[key] = _BY_NAME[key].coerce(value, config_path)
        here = os.path.dirname(os.path.abspath(config_path))
        for key in _PATHS:  # a path in the file means a path beside the file, wherever serve starts (as Prometheus)
            if isinstance(values.get(key), tuple):
                values[key] = tuple(os.path.join(here, path) for path in values[key])
            elif values.get(key) is not None:
                values[key] = os.path.join(here, values[key])
        values["config"] = config_path
    for s in SETTINGS:
        if s.env in environ:
            values[s.name] = s.coerce(environ[s.env], s.env)
    for name, value in cli.items():
        if name in _BY_NAME:
            values[name] = _BY_NAME[name].coerce(value, _BY_NAME[name].flag) if isinstance(value, str) else value
    # On the command line or in the environment, relative means the working directory: made absolute at once,
    # so what `sidecar settings` shows is what is in force whatever the working directory later.
    if values.get("data_dir"):
        values["data_dir"] = os.path.abspath(values["data_dir"])
    if values.get("plugin_path"):
        values["plugin_path"] = tuple(os.path.abspath(path) for path in values["plugin_path"])
    if values.get("api_token_file"):
        values["api_token"] = _read_token(values["api_token_file"], values.get("api_token"))
    return Settings(**values, checks=checks)


def _read_token(path: str, given: str | None) -> str:
    """The token from its file (a Docker or Kubernetes secret): one place, never a command line."""
    if given:
        raise ConfigError("api_token and api_token_file are both set: keep one (the file)")
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read api_token_file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"api_token_file {path} is empty")
    return token


def settings_table() -> str:
    """The settings table of docs/configuration.md (Markdown), generated from SETTINGS."""
    rows = ["| env var | CLI flag | TOML key | default | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        default = s.default_doc or (f"`{s.default}`" if s.default not in (None, (), "") else "none")
        rows.append(f"| `{s.env}` | `{s.flag}` | `{s.name}` | {default} | {s.help} |")
    return "\n".join(rows)


def in_force(settings: Settings) -> str:
    """`key = value` for every setting as this process resolved it (the token only as set or not)."""
    lines = []
    for s in SETTINGS:
        value = getattr(settings, s.name)
        if s.name == "api_token":
            value = "(set)" if value else None
        lines.append(f"{s.name} = {value!r}" if not isinstance(value, tuple) else f"{s.name} = {list(value)!r}")
    return "\n".join(lines)
