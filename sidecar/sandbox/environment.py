"""The environment plugins see: an allow-list, never the sidecar's own settings or secrets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["ALLOWED", "plugin_environment"]

#: Variables a plugin may need to behave like an ordinary process (locale, proxies, CA bundles).
ALLOWED: frozenset[str] = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
})

#: Numeric libraries reserve address space per thread, which counts against RLIMIT_AS.
_SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def plugin_environment(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """Allow-listed variables plus the operator's `extra` names; `SIDECAR_*` never passes."""
    allowed = ALLOWED | frozenset(extra)
    env = {
        k: v
        for k, v in environ.items()
        if (k in allowed or k.startswith("LC_")) and not k.startswith("SIDECAR_")
    }
    env.update(_SINGLE_THREADED)
    return env
