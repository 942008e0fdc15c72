"""The one schema of the sidecar's inputs: settings values, `[checks.NAME]` tables, plugin metadata
and the HTTP run request.

Types and ranges are declared once here as msgspec constraints; every input goes through
`validate`/`decode_json` and the OpenAPI document is generated from the same types (`json_schema`),
so what the server enforces and what it documents cannot drift. msgspec was chosen by measurement:
in the runner process (Flask and `typing` already imported) it costs ~8 ms to import and ~0.6 MB
resident, against ~77 ms and ~6 MB for pydantic.

Numbers are finite (an upper bound refuses `inf`; `nan` fails every comparison), positive where a
zero or a negative would be meaningless, and integers where a fraction would be; booleans are never
numbers. An error names where the value came from, the key, the bad value and what is allowed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from . import defaults

__all__ = [
    "MAX_PARAMS_DEPTH",
    "CheckTable",
    "Invalid",
    "MemoryMB",
    "PluginMetadata",
    "PluginName",
    "RunBody",
    "Seconds",
    "check_depth",
    "convert",
    "decode_json",
    "is_name",
    "json_schema",
    "names",
]

T = TypeVar("T")

#: One year: any longer interval or timeout is a typo, and the bound keeps every value finite.
MAX_SECONDS = 365 * 24 * 3600.0
#: 1 TiB: the largest memory limit anyone means.
MAX_MEMORY_MB = 1 << 20
#: Nesting allowed inside `params`: deep enough for any real parameter, shallow enough that no
#: encoder on the way (runner socket, sandbox pipe, history, response) can hit a recursion limit.
MAX_PARAMS_DEPTH = 32

Seconds = Annotated[float, Meta(gt=0, le=MAX_SECONDS, description="seconds, a finite number > 0")]
MemoryMB = Annotated[int, Meta(ge=1, le=MAX_MEMORY_MB, description="MiB, an integer >= 1")]
#: Published as is in `/openapi.json` (a JSON Schema pattern, where `$` ends the string); msgspec only *searches*
#: it, so every name is also matched whole in code (`is_name`), at every place a name comes in.
PluginName = Annotated[str, Meta(pattern=defaults.PLUGIN_NAME_PATTERN, description="a plugin or check name")]
Params = Annotated[dict[str, Any], Meta(description=f"the plugin's keyword arguments (nested at most "
                                                    f"{MAX_PARAMS_DEPTH} deep)")]

NAME_RE = re.compile(defaults.PLUGIN_NAME_PATTERN)


def is_name(value: object) -> bool:
    """Whether `value` is a plugin or check name, matched whole.

    The one test of a name (discovery, reload, check tables, settings, `/probe`): `fullmatch`, because the
    pattern's `$` also matches before a final newline (`re.match`) and msgspec's `pattern=` searches, and one
    newline in a `plugin` label would make the whole scrape unparseable.
    """
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def names(values: Any, key: str | None = None) -> None:
    """Refuse a value of `values` that is not a whole name (what msgspec's `pattern` search lets through).

    Raises ValueError worded as msgspec's own pattern errors, naming `key` when given.
    """
    for value in values:
        if not is_name(value):
            prefix = f"{key} = {short(value)} is invalid: " if key else ""
            raise ValueError(f"{prefix}expected a plugin or check name matching {defaults.PLUGIN_NAME_PATTERN!r}")


class Invalid(ValueError):
    """A value refused by the schema; `str()` is one line naming the key, the value and what is allowed."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class Limits(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What a plugin file and a check table may both set: validated by the same types."""

    description: Annotated[str, Meta(description="shown in listings")] | None = None
    timeout_seconds: Annotated[Seconds, Meta(description="per-run timeout (capped by "
                                                         "`SIDECAR_MAX_TIMEOUT_SECONDS`)")] | None = None
    memory_limit_mb: Annotated[MemoryMB, Meta(description="per-run memory limit")] | None = None
    interval_seconds: Annotated[Seconds, Meta(description="run it on this schedule")] | None = None
    network: Annotated[bool, Meta(description="keep the network in strict isolation")] | None = None


class PluginMetadata(Limits, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Module-level metadata of a plugin file (read with `ast.literal_eval`, never imported)."""

    version: str | None = None
    #: read the host's processes (`/proc`) under isolation; signals still stay in the run's namespace
    host_processes: bool = False
    #: false: import the plugin in every run instead of forking runs from a template that imported it once
    preload: bool = True
    #: only a configured check runs it (with the check's params): a request may not run the bare plugin
    check_only: bool = False


#: A group of the host, by name or number (resolved, and refused when absent, by `sidecar.groups`).
GroupRef = Annotated[str, Meta(min_length=1, description="a group name or number")] | Annotated[int, Meta(ge=0)]
#: A host path a check's runs read (relative: to the config file's directory).
ReadPath = Annotated[str, Meta(min_length=1, description="a path")]


class CheckTable(Limits, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A `[checks.NAME]` table: a named, configured instance of a plugin."""

    plugin: Annotated[PluginName, Meta(description="the plugin it runs (must exist, and be allowed by "
                                                   "`SIDECAR_PLUGINS` when set)")]
    params: Annotated[Params, Meta(description="keyword arguments of `run()`")] = msgspec.field(default_factory=dict)
    group: Annotated[GroupRef, Meta(description="as root: the primary group of its runs (else the sidecar's "
                                                "`default_group`, else a gid of their own)")] | None = None
    groups: Annotated[list[GroupRef], Meta(description="as root: the supplementary groups of its runs, e.g. "
                                                       "`[\"adm\"]` to read 0640 logs (else the sidecar's "
                                                       "`default_groups`)")] | None = None
    read_paths: Annotated[list[ReadPath], Meta(description="host paths its runs read, bound read-only into "
                                                           "their view (e.g. a log directory under /tmp); "
                                                           "relative to the config file's directory")] = (
        msgspec.field(default_factory=list))
    isolation: Annotated[Literal["default", "strict"], Meta(description="its runs' isolation (else the "
                                                                        "sidecar's)")] | None = None
    host_processes: Annotated[bool, Meta(description="read the host's processes (`/proc`) under isolation "
                                                     "(else as its plugin's metadata says)")] | None = None

    def __post_init__(self) -> None:
        names((self.plugin,), "plugin")


class RunBody(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The body of `POST /plugins/<name>/run`; both keys optional, nothing else allowed."""

    params: Params | None = None
    timeout_seconds: Annotated[Seconds, Meta(description="seconds; above the server's "
                                                         "SIDECAR_MAX_TIMEOUT_SECONDS answers 400")] | None = None


_PATH = re.compile(r" - at `\$(.*)`$")
_WORDS = {"float": "a number", "int": "an integer", "str": "a string", "object": "an object (table)",
          "array": "an array", "bool": "a boolean", "null": "null"}
_TYPE = re.compile(r"`(\w+)(?: \| null)?`")


def _plain(text: str) -> str:
    """msgspec's "Expected `float | null`, got `str`" in words: "expected a number, got a string"."""
    text = _TYPE.sub(lambda m: _WORDS.get(m.group(1), m.group(0)), text)
    text = re.sub(r"(\d)\.0\b", r"\1", text)
    return text[:1].lower() + text[1:]


def _explain(exc: msgspec.ValidationError, data: Any, where: str, kind: Any = None) -> Invalid:
    """Turn msgspec's "Expected `int` >= 1 - at `$.memory_limit_mb`" into a line naming the value."""
    text = str(exc)
    unknown = re.match(r"Object contains unknown field `(.*)`", text)
    if unknown and match_path(text) == "" and hasattr(kind, "__struct_fields__"):
        prefix = f"{where}: " if where else ""
        return Invalid(f"{prefix}unknown key {unknown.group(1)!r}; allowed: "
                       f"{', '.join(sorted(kind.__struct_fields__))}", unknown.group(1))
    match = _PATH.search(text)
    allowed = _plain(text[: match.start()] if match else text)
    path = match.group(1) if match else ""
    key_match = re.match(r"\.([A-Za-z_][A-Za-z0-9_]*)", path)
    key = key_match.group(1) if key_match else None
    prefix = f"{where}: " if where else ""
    if key is not None and isinstance(data, dict) and key in data:
        return Invalid(f"{prefix}{key}{path[len(key) + 1:]} = {short(data[key])} is invalid: {allowed}", key)
    return Invalid(f"{prefix}{allowed}{' at ' + path if path else ''}", key)


def short(value: Any, limit: int = 80) -> str:
    """A value's repr for an error line, cut so a hostile megabyte never lands in a message or a log."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def match_path(text: str) -> str:
    """The `$...` path of a msgspec error message, without the `$` ("" for the document itself)."""
    found = _PATH.search(text)
    return found.group(1) if found else ""


def convert(data: Any, kind: type[T], where: str = "", *, strict: bool = True) -> T:
    """Validate already-decoded data (TOML, literals, env strings with strict=False) against `kind`."""
    try:
        return msgspec.convert(data, kind, strict=strict)
    except msgspec.ValidationError as exc:
        raise _explain(exc, data, where, kind) from None


def depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value, stopping once past `limit` (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def decode_json(raw: bytes, kind: type[T], where: str = "body") -> T:
    """Decode and validate a JSON document in one step; every failure is `Invalid`, never a crash."""
    try:
        value = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        try:
            data = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            data = None
        raise _explain(exc, data, where, kind) from None
    except msgspec.DecodeError as exc:
        raise Invalid(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise Invalid(f"{where} is nested too deeply") from None
    params = getattr(value, "params", None)
    if params is not None:
        check_depth(params, where)
    return value


def check_depth(params: Any, where: str) -> None:
    """Refuse params nested more than `MAX_PARAMS_DEPTH` deep, whether from a run body or a probe's query."""
    if depth(params, MAX_PARAMS_DEPTH) > MAX_PARAMS_DEPTH:
        raise Invalid(f"{where}: params nested more than {MAX_PARAMS_DEPTH} deep", "params")


def json_schema(kind: Any) -> dict[str, Any]:
    """The JSON Schema of a type, inlined (no `$defs`), for the OpenAPI document."""
    schema: dict[str, Any] = msgspec.json.schema(kind)
    defs = schema.pop("$defs", {})
    if "$ref" in schema:
        schema = dict(defs[schema["$ref"].rsplit("/", 1)[1]])
    schema.pop("title", None)
    return schema
