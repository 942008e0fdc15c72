"""`sidecar serve | run | list | check | bench | settings` — a stable interface scripts rely on.

`run`, `check` and `bench` run plugins in the sandbox `serve` would use with the same settings (its
isolation and identity); `--unisolated` runs them as this process, for debugging, and says so.

Exit codes: 0 success; 1 a run failed, or `check` found a problem (a bad setting, check table or
plugin metadata, an unknown plugin, a plugin that does not import); 2 usage error (unknown flag or
plugin, bad parameter, missing config file) and `serve` refusing a bad configuration, with a
one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .config import SETTINGS, ConfigFileMissing, Settings, in_force, load_settings, settings_table
from .errors import ConfigError, SidecarError
from .params import parse_value
from .schema import Invalid

if TYPE_CHECKING:
    from .plugins import Registry
    from .plugins.preflight import Finding
    from .sandbox.client import Sandbox

__all__ = ["main"]


class UsageError(Exception):
    pass


def _parse_param(raw: str) -> tuple[str, Any]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise UsageError(f"--param expects KEY=VALUE, got {raw!r}")
    try:
        return key, parse_value(value)
    except Invalid as exc:
        raise UsageError(f"--param {key}: {exc}") from None


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.params_json:
        try:
            loaded = json.loads(args.params_json)
        except ValueError as exc:
            raise UsageError(f"--params-json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError("--params-json must be a JSON object")
        params.update(loaded)
    for raw in args.param or ():
        key, value = _parse_param(raw)
        params[key] = value
    return params


def _settings(args: argparse.Namespace) -> Settings:
    cli = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    if getattr(args, "plugin_path", None):
        cli["plugin_path"] = os.pathsep.join(args.plugin_path)
    return load_settings(cli)


def _sandbox(settings: Settings, args: argparse.Namespace) -> Sandbox:
    """The sandbox `serve` would use (`sidecar.sandboxing`), or with `--unisolated` none of its isolation,
    said on stderr so that no one takes what follows for what `serve` does."""
    from .sandbox.isolation import require_available
    from .sandboxing import sandbox_for

    if args.unisolated:
        print(f"sidecar: unisolated: plugins run as this process does (uid {os.geteuid()}, the host's /tmp and "
              "files, no namespaces): `serve` isolates them, so what happens here may not happen there",
              file=sys.stderr)
    else:
        require_available(settings.isolation)  # as `serve` refuses to start without what strict mode needs
    return sandbox_for(settings, unisolated=args.unisolated)


def _cmd_run(args: argparse.Namespace) -> int:
    from .plugins import discover
    from .sandboxing import request_for

    settings = _settings(args)
    registry = discover(settings)
    if args.name not in registry.entries:
        raise UsageError(f"unknown plugin {args.name!r} (known: {', '.join(registry.names()) or 'none'})")
    entry = registry.get(args.name)
    timeout, memory = registry.limits(entry, args.timeout)
    if args.memory_mb is not None:
        if args.memory_mb <= 0:
            raise UsageError("--memory-mb must be > 0")
        memory = args.memory_mb
    request = request_for(entry, settings, {**entry.params, **_params(args)}, timeout, memory)
    with _sandbox(settings, args) as sandbox:
        result = sandbox.run(request)
    result = type(result).from_dict({**result.to_dict(), "plugin": entry.name})
    if args.json:
        print(json.dumps(result.to_answer()))
    else:
        if result.stdout.text:
            sys.stderr.write(result.stdout.text)
        if result.stderr.text:
            sys.stderr.write(result.stderr.text)
        if result.ok:
            print(json.dumps(result.result, indent=2))
        else:
            err = result.error
            print(f"{entry.name}: {result.outcome.value}: {err.type + ': ' + err.message if err else ''}",
                  file=sys.stderr)
    return 0 if result.ok else 1


def _cmd_list(args: argparse.Namespace) -> int:
    from .plugins import discover

    registry = discover(_settings(args))
    for error in registry.errors:  # `check` and `serve` refuse these; listing goes on, saying so
        print(f"sidecar: warning: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps([e.to_dict() for e in registry], indent=2))
        return 0
    for e in registry:
        flag = f"  [problem: {e.metadata.issues}]" if e.metadata.issues else ""
        print(f"{e.name:<24} {e.source:<12} {e.description}{flag}")
    return 0


def _predictions(settings: Settings, registry: Registry) -> list[Finding]:
    """What served runs would hit that an import does not show: check params against `run()`, paths the run
    cannot see, plugin files its identity cannot read (`sidecar.plugins.preflight`)."""
    from .plugins.preflight import check_params, check_paths, check_readable, run_signature
    from .sandboxing import hidden_paths

    found: list[Finding] = []
    hidden = hidden_paths(settings)
    for entry in registry:
        source = None
        if entry.ref.path is not None:
            try:
                source = Path(entry.ref.path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                source = None  # listed with its problem already; its runs end `import`
            if os.geteuid() == 0 and entry.source == "path":  # as root, each run takes a uid of its own
                found += check_readable(entry.location, entry.ref.path)
        if entry.source != "check":
            continue
        where = f"{settings.config or 'config'}: [checks.{entry.name}]"
        signature = run_signature(source, entry.ref.attr) if source is not None else None
        if signature is not None:
            found += check_params(where, entry.plugin, entry.params, signature)
        found += check_paths(where, entry.plugin, entry.params, hidden, granted=entry.read_paths)
    return found


def _cmd_check(args: argparse.Namespace) -> int:
    from .plugins import discover
    from .sandboxing import request_for

    try:
        settings = _settings(args)
    except ConfigFileMissing as exc:
        raise UsageError(exc.message) from None
    except ConfigError as exc:  # a problem found in the configuration, not a usage error
        print(f"INVALID {exc.message}")
        return 1
    registry = discover(settings)
    broken = 0
    for error in [*registry.errors, *(f.line() for f in _predictions(settings, registry))]:
        broken += 1
        print(f"INVALID {error}")
    with _sandbox(settings, args) as sandbox:
        for entry in registry:
            if entry.source == "check":
                continue
            if entry.metadata.issues:  # refused without a sandbox, in `serve` too
                broken += 1
                print(f"BROKEN  {entry.name}: {entry.location}: {entry.metadata.issues}")
                continue
            timeout = min(10.0, settings.max_timeout_seconds)
            result = sandbox.run(request_for(entry, settings, {}, timeout, settings.default_memory_limit_mb,
                                             mode="import"))
            if result.ok:
                print(f"ok      {entry.name}")
            else:
                broken += 1
                detail = f"{result.error.type}: {result.error.message}" if result.error else ""
                print(f"BROKEN  {entry.name}: {result.outcome.value}: {detail.splitlines()[0] if detail else ''}")
    for where, why in registry.rejected:
        broken += 1
        print(f"REJECTED {where}: {why}")
    return 1 if broken else 0


def _refusal(settings: Settings) -> str | None:
    """Why `serve` must not start with these settings (a bad check table or plugin metadata), if so."""
    from .plugins import discover

    errors = discover(settings).errors
    if not errors:
        return None
    others = len(errors) - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''}: run `sidecar check`)" if others else ""
    return errors[0] + more


def _cmd_bench(args: argparse.Namespace) -> int:
    """Time sandboxed runs of one plugin from this process: what a run costs on this machine."""
    import statistics
    import time
    from collections import Counter

    from .plugins import discover
    from .sandboxing import request_for

    settings = _settings(args)
    registry = discover(settings)
    if args.name not in registry.entries:
        raise UsageError(f"unknown plugin {args.name!r}")
    if args.runs < 1:
        raise UsageError("--runs must be >= 1")
    entry = registry.get(args.name)
    timeout, memory = registry.limits(entry)
    request = request_for(entry, settings, {**entry.params, **_params(args)}, timeout, memory)
    outcomes: Counter[str] = Counter()
    times: list[float] = []
    with _sandbox(settings, args) as sandbox:
        sandbox.run(request)  # start the launcher outside the measurement
        for _ in range(args.runs):
            t = time.perf_counter()
            outcomes[sandbox.run(request).outcome.value] += 1
            times.append((time.perf_counter() - t) * 1000.0)
    times.sort()
    report = {"plugin": entry.name, "runs": args.runs, "median_ms": statistics.median(times),
              "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))], "outcomes": dict(outcomes),
              "isolated": not args.unisolated}
    if args.json:
        print(json.dumps(report))
    else:
        how = "unisolated" if args.unisolated else "isolated as `serve` runs it"
        print(f"{entry.name}: {args.runs} runs ({how}), median {report['median_ms']:.2f} ms, "
              f"p99 {report['p99_ms']:.2f} ms, " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    refusal = _refusal(settings)
    if refusal is not None:
        raise ConfigError(refusal)
    from .serve import serve

    return serve(settings, reload_source=lambda: _settings(args))


def _cmd_settings(args: argparse.Namespace) -> int:
    from .sandbox.containment import describe, detect, release
    from .sandbox.isolation import namespaces_unavailable
    from .sandbox.run_tmp import can_mount
    from .sandbox.run_tmp import describe as describe_tmp

    print(settings_table())
    print("\nIn force here (flags, SIDECAR_* environment, config file, defaults):\n")
    print(in_force(_settings(args)))
    found = detect()  # what a sandbox started here would get
    release(found)
    bwrap = shutil.which("bwrap")
    namespaces = bwrap is not None and namespaces_unavailable(bwrap) is None
    print(f"\nContainment on this host: {describe(found)}; {describe_tmp(can_mount(), namespaces)}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sidecar", description="Run plugins in guarded sandboxes and make every run observable.")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def plugin_path(p: argparse.ArgumentParser) -> None:
        p.add_argument("--plugin-path", action="append", metavar="DIR", help="extra plugin directory (repeatable)")
        p.add_argument("--config", metavar="FILE", help="TOML file with settings and checks")

    def unisolated(p: argparse.ArgumentParser) -> None:
        p.add_argument("--unisolated", action="store_true",
                       help="debugging: run plugins without the isolation and identity `serve` gives them "
                            "(namespaces, a uid per run); the output says so")

    run = sub.add_parser("run", help="run one plugin once, in the sandbox `serve` would run it in")
    run.add_argument("name")
    run.add_argument("--param", action="append", metavar="KEY=VALUE",
                     help="a parameter; VALUE is parsed as JSON when it is valid JSON, else kept as a string")
    run.add_argument("--params-json", metavar="JSON", help="parameters as one JSON object")
    run.add_argument("--timeout", type=float, metavar="SECONDS")
    run.add_argument("--memory-mb", type=int, metavar="MB")
    run.add_argument("--json", action="store_true", help="print the result object as one JSON document")
    plugin_path(run)
    unisolated(run)
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("list", help="list discovered plugins and checks")
    lst.add_argument("--json", action="store_true")
    plugin_path(lst)
    lst.set_defaults(func=_cmd_list)

    chk = sub.add_parser("check", help="validate settings, checks and plugin metadata, import every plugin in the "
                                       "sandbox; exit 1 on any problem")
    plugin_path(chk)
    unisolated(chk)
    chk.set_defaults(func=_cmd_check)

    bench = sub.add_parser("bench", help="time sandboxed runs of one plugin (median, p99), isolated as in `serve`")
    bench.add_argument("name")
    bench.add_argument("--runs", type=int, default=200)
    bench.add_argument("--param", action="append", metavar="KEY=VALUE")
    bench.add_argument("--params-json", metavar="JSON")
    bench.add_argument("--json", action="store_true")
    plugin_path(bench)
    unisolated(bench)
    bench.set_defaults(func=_cmd_bench)

    serve = sub.add_parser("serve", help="serve the HTTP API and /metrics under gunicorn",
                           epilog="Every option is also an environment variable SIDECAR_<NAME> and a TOML key.")
    for s in SETTINGS:
        if s.name in ("plugin_path", "config"):
            continue
        default = (s.default_doc or repr(s.default)).replace("`", "")
        serve.add_argument(s.flag, dest=s.name, metavar=s.name.upper(),
                           help=f"{s.help} [env {s.env}; default {default}]")
    plugin_path(serve)
    serve.set_defaults(func=_cmd_serve)

    st = sub.add_parser("settings", help="print the settings table (Markdown), then the values in force")
    plugin_path(st)
    st.set_defaults(func=_cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except UsageError as exc:
        print(f"sidecar: error: {exc}", file=sys.stderr)
        return 2
    except SidecarError as exc:
        print(f"sidecar: error: {exc.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`sidecar settings | head -1`): stop quietly, and keep the interpreter's final
        # flush from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
