"""The plugin side of a sandboxed run: everything that happens after the launcher forks.

A child is forked ahead of need (a "spare"): it confines what does not depend on the run
(process group, death signal, signals, fds), then blocks reading its request. Once it has one
it applies the run's limits, imports the plugin, calls `run(*args, **params)`, and sends one framed
JSON message on its result fd. It never returns: it leaves with `os._exit` so nothing
inherited from the launcher (atexit hooks, buffers) runs.

Imports here are paid by the launcher's image, so heavy modules (traceback) load lazily on
the error path only.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import importlib.util
import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..defaults import MAX_PROCESSES
from ..framing import HEADER, write_all
from . import _warmup
from .outcomes import classify_exception
from .protocol import PluginWire, ResultMessage, RunRequestWire
from .title import set_title

__all__ = ["PLUGIN_ID_BASE", "REQUEST_FD", "RESULT_FD", "Identity", "confine_fds", "drop_privileges", "error_from",
           "load_entry", "read_request", "serve_request", "spare_main", "use_caller_path", "warm_run_path"]

#: Fixed fds in the child: 0-2 are stdin (/dev/null), stdout, stderr pipes.
RESULT_FD = 3
REQUEST_FD = 4
_TEXT_LIMIT = 8_000

#: Runs get uid = gid = PLUGIN_ID_BASE + their pid: unique among live runs (pids are), never a
#: system or login account, and clear of the ranges systemd and container engines allocate.
PLUGIN_ID_BASE = 2_000_000_000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36


#: The groups a launcher's runs take when they drop root: (primary gid, None for their own; supplementary gids).
Identity = tuple[int | None, tuple[int, ...]]


class ResultTooLarge(Exception):
    pass


def drop_privileges(prctl: Any, home: str, identity: Identity = (None, ())) -> None:
    """As root: become a uid nobody else has, with the groups the operator granted (else a gid of its own and
    none), in the order that leaves no way back (see `isolation`)."""
    ident = PLUGIN_ID_BASE + os.getpid()
    group, groups = identity
    os.chown(home, ident, ident)
    os.setgroups(list(groups))
    os.setgid(ident if group is None else group)
    os.setuid(ident)
    if prctl is not None:
        prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a change of uid cleared it


def _confine(memory_limit_mb: int, max_processes: int | None) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if max_processes is None and os.getuid() >= PLUGIN_ID_BASE:
        # A uid of its own (as root): the bound is this run's, or its template's runs' together. Without
        # one, the uid is the sidecar's and the count would include it: the cgroup's pids.max binds instead.
        max_processes = MAX_PROCESSES
    if max_processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))


def _trim(text: str) -> str:
    if len(text) <= _TEXT_LIMIT:
        return text
    half = _TEXT_LIMIT // 2
    return text[:half] + "\n... trimmed ...\n" + text[-half:]


def _error(outcome: str, type_: str, message: str, tb: str | None = None) -> ResultMessage:
    return {"outcome": outcome, "error": {"type": type_, "message": message, "traceback": tb}}


def error_from(exc: BaseException, outcome: str) -> ResultMessage:
    """Drop the frames' locals first (after a MemoryError they still hold the memory), then format."""
    import traceback

    if exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)
    gc.collect()
    tb = _trim("".join(traceback.format_exception(exc)))
    message = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else str(exc)
    return _error(outcome, type(exc).__name__, _trim(message), tb)


def _encode(message: ResultMessage, max_bytes: int) -> bytes:
    """JSON-encode, giving up as soon as the output passes max_bytes (no 300 MB string built twice)."""
    parts: list[str] = []
    size = 0
    for chunk in json.JSONEncoder(ensure_ascii=False, allow_nan=False).iterencode(message):
        size += len(chunk)
        if size > max_bytes:
            raise ResultTooLarge(f"result exceeds the size cap of {max_bytes} bytes")
        parts.append(chunk)
    return "".join(parts).encode("utf-8", "surrogatepass")


def _load(plugin: PluginWire) -> Any:
    path = plugin.get("path")
    if path:
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        spec = importlib.util.spec_from_file_location(f"sidecar_plugin_{plugin['name']}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load plugin file {path!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    name = str(plugin["module"])
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        # The launcher starts without site hooks (-S) to stay small; editable installs and other
        # .pth-based hooks only appear once `site` has run, so give them one chance.
        import site

        site.main()
        return importlib.import_module(name)


def use_caller_path(caller_path: list[str] | None) -> None:
    """The caller's import path first, so `module:attr` resolves as it would there."""
    if caller_path:
        sys.path[:] = [*caller_path, *(p for p in sys.path if p not in caller_path)]


def load_entry(plugin: PluginWire) -> Any:
    """Import the plugin and return its callable (`run`, or the reference's attribute)."""
    func = getattr(_load(plugin), str(plugin.get("attr") or "run"), None)
    if not callable(func):
        raise ImportError(f"plugin {plugin['name']!r} has no callable `run`")
    return func


def _execute(request: RunRequestWire, preloaded: Any = None) -> ResultMessage:
    """Run the request; `preloaded` is the callable a template imported already (then nothing is imported)."""
    func = preloaded
    if func is None:
        plugin = request["plugin"]
        use_caller_path(request.get("sys_path"))
        try:
            func = load_entry(plugin)
        except BaseException as exc:  # noqa: B036 - every failure to load is a reportable outcome
            return error_from(exc, classify_exception(exc, during_import=True))
    if request.get("mode") == "import":
        return {"outcome": "success", "result": None}
    try:
        result = func(*request.get("args", ()), **request.get("params", {}))
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            # Raised while binding the arguments, before `run` started: the params do not fit it.
            return _error("value", "TypeError", f"parameters do not match run(): {exc}")
        return error_from(exc, classify_exception(exc))
    except BaseException as exc:  # noqa: B036 - SystemExit and KeyboardInterrupt are outcomes too
        return error_from(exc, classify_exception(exc))
    message: ResultMessage = {"outcome": "success", "result": result}
    report = _reported()
    if report is not None:
        message["report"] = report
    return message


def _reported() -> Any:
    """What the plugin reported through `sidecar.check` in this run, if it imported it (the runner
    validates it; a report that cannot be taken is left out, never failing the run): None if nothing."""
    check = sys.modules.get("sidecar.check")
    try:
        return check.take() if check is not None else None
    except Exception:
        return None


def _payload(message: ResultMessage, max_bytes: int) -> bytes:
    try:
        return _encode(message, max_bytes)
    except ResultTooLarge as exc:
        return _encode(_error("value", "ResultTooLarge", str(exc)), max_bytes)
    except (TypeError, ValueError) as exc:
        return _encode(_error("value", "ResultNotSerializable", f"result is not JSON-serialisable: {exc}"),
                       max_bytes)
    except RecursionError:
        return _encode(_error("value", "ResultNotSerializable", "result is nested too deeply"), max_bytes)
    except MemoryError:
        return _encode(_error("memory", "MemoryError", "out of memory while encoding the result"), max_bytes)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # noqa: B036 - a broken stdout must not lose the result
            pass


def _warm_up() -> None:
    """Walk the run path once on a stand-in plugin (see `_warmup`); failures here do not matter."""
    refs: tuple[PluginWire, ...] = ({"name": "warmup", "path": _warmup.__file__, "module": None, "attr": "run"},
                                    {"name": "warmup", "path": None, "module": _warmup.__name__, "attr": "run"})
    try:
        for ref in refs:
            module = _load(ref)
            _encode({"outcome": "success", "result": module.run(x=1)}, 1 << 20)
        sys.modules.pop("sidecar_plugin_warmup", None)
        if sys.path and sys.path[0] == os.path.dirname(_warmup.__file__):
            del sys.path[0]
    except Exception:  # noqa: S110
        pass


def warm_run_path() -> None:
    """A template's spare, before its request: decode a request and encode a result once, so that the run
    finds those pages already its own (no plugin code runs; the plugin's own pages fault in its run)."""
    try:
        wire = json.dumps({"plugin": {"name": "warm", "path": None, "module": None, "attr": "run"},
                           "params": {"x": 1}, "args": [], "memory_limit_mb": 1, "max_result_bytes": 1 << 20})
        request = json.loads(wire)
        message: ResultMessage = {"outcome": "success", "result": {"warm": True, "params": request["params"]}}
        message["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        HEADER.pack(len(_payload(message, 1 << 20)))
    except Exception:  # noqa: S110 - a warm-up that fails costs nothing but its pages
        pass


def read_request() -> RunRequestWire | None:
    data = bytearray()
    while True:
        chunk = os.read(REQUEST_FD, 1 << 16)
        if not chunk:
            break
        data += chunk
    if len(data) < HEADER.size:
        return None
    request: RunRequestWire = json.loads(bytes(data[HEADER.size :]))  # from the caller: trusted
    return request


def become_unit(prctl: Any) -> None:
    """A session of our own (no other run can join its process groups, nor it theirs), and a child
    subreaper: whatever we start stays in our process tree, `setsid` daemons included, until the end."""
    os.setsid()
    if prctl is not None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def await_end() -> NoReturn:
    """The result is out: stay (holding our tree together) until the unit is ended; with no child left
    (so no descendant: an orphan would be re-parented to us), leave at once, so that our exit overlaps
    the caller reading the result instead of following its kill."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        os._exit(0)
    except BaseException:  # noqa: B036,S110 - a plugin's handler may raise: keep the tree and wait
        pass
    while True:
        try:
            signal.pause()
        except BaseException:  # noqa: B036,S110 - a plugin's handler may raise: keep waiting
            pass


def confine_fds(fds: tuple[int, int, int, int], keep_others: bool = False) -> None:
    """Default signals, and fds 0-4 as the run expects them; every other fd closed
    (`keep_others`: only the ones given, so a template's run keeps the fds its plugin opened at import)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Move our fds out of the way first: dup2 onto 1-4 must not clobber one we still need.
    result_w, out_w, err_w, request_r = (fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in fds)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(result_w, RESULT_FD, inheritable=False)
    os.dup2(request_r, REQUEST_FD, inheritable=False)
    if keep_others:
        for fd in {*fds, result_w, out_w, err_w, request_r, devnull} - {0, 1, 2, RESULT_FD, REQUEST_FD}:
            os.close(fd)
    else:
        os.closerange(REQUEST_FD + 1, 1 << 16)


def serve_request(request: RunRequestWire, preloaded: Any = None) -> None:
    """Apply the run's limits, run it, and write its one framed result message."""
    _confine(int(request["memory_limit_mb"]), request.get("max_processes"))
    gc.enable()
    message = _execute(request, preloaded)
    _flush_std()
    # Peak memory from the child's own rusage, so the launcher can answer before the exit.
    message["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    payload = _payload(message, int(request["max_result_bytes"]))
    write_all(RESULT_FD, HEADER.pack(len(payload)) + payload)


def spare_main(fds: tuple[int, int, int, int], prctl: Any, tmp: str, drop: Identity | None = None,
               join: Callable[[], None] | None = None) -> NoReturn:
    """Entry point in a forked spare. fds = (result_w, stdout_w, stderr_w, request_r); `tmp` is its own;
    `drop`: as root, the groups of the identity it drops to (None: it keeps the launcher's); `join` moves it
    into its unit's cgroups (as root, first: it raises where it cannot, and then no run)."""
    code = 0
    try:
        if join is not None:
            join()
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the launcher
        become_unit(prctl)
        confine_fds(fds)
        os.environ["TMPDIR"] = os.environ["HOME"] = tmp
        if drop is not None:  # before the warm-up: no code runs here as root that a plugin could have touched
            drop_privileges(prctl, tmp, drop)

        _warm_up()
        set_title("sidecar: spare")
        request = read_request()
        if request is None:  # retired spare
            os._exit(0)
        set_title(f"sidecar: run of {request['plugin']['name']}")
        serve_request(request)
        await_end()
    except BaseException:  # noqa: B036 - the launcher reports a missing result as a crash
        code = 70
    os._exit(code)
