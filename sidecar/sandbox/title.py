"""What a sandbox process shows in `ps`: `sidecar: launcher`, `sidecar: spare`, `sidecar: template of NAME`,
`sidecar: spare of NAME` (a template's child forked ahead), `sidecar: run of NAME`.

setproctitle rewrites the command line (`ps -ef`, `ps aux`, `top -c`) and the short name (`ps`, `top`).
Its package's `__init__` imports `logging` (measured in the launcher: ~5 ms and ~1.3 MB more resident, in
a process kept small on purpose); its C extension alone costs ~0.5 ms and ~0.26 MB, so the extension is
loaded directly. A title change then costs ~0.25 µs, once per run. Without setproctitle only the short
name changes (`prctl(PR_SET_NAME)`, 15 bytes).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
from collections.abc import Callable

__all__ = ["set_title"]

_PR_SET_NAME = 15


def _extension() -> Callable[[str], None] | None:
    """setproctitle's C function, loaded without its package (whose import pulls in `logging`)."""
    try:
        spec = importlib.util.find_spec("setproctitle")
    except (ImportError, ValueError):
        return None
    for directory in (spec.submodule_search_locations or ()) if spec else ():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "_setproctitle" + suffix)
            if not os.path.exists(path):
                continue
            name = "setproctitle._setproctitle"
            loader = importlib.machinery.ExtensionFileLoader(name, path)
            found = importlib.util.spec_from_file_location(name, path, loader=loader)
            if found is None:
                return None
            module = importlib.util.module_from_spec(found)
            try:
                loader.exec_module(module)
            except ImportError:
                return None
            setter: Callable[[str], None] = module.setproctitle
            return setter
    return None


def _short_name_only() -> Callable[[str], None]:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
        return lambda title: None
    return lambda title: prctl(_PR_SET_NAME, title.encode()[:15], 0, 0, 0)


_setter: Callable[[str], None] | None = None


def set_title(title: str) -> None:
    """Show `title` in `ps` for this process (the first call, in the launcher, loads the extension; its forks
    inherit it)."""
    global _setter
    if _setter is None:
        _setter = _extension() or _short_name_only()
    try:
        _setter(title)
    except Exception:  # noqa: S110 - a title is a courtesy: it never fails a run
        pass
