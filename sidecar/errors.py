"""The one exception tree of the sidecar.

    SidecarError                   base; carries an HTTP status and a stable error code
    ├── ConfigError                400 config: bad setting, config file or plugin path (fails at start;
    │                              a refused reload answers 400)
    ├── PluginNotFound             404 unknown_plugin
    ├── BadRequest                 400 bad_request (malformed body, bad params, timeout over the cap)
    ├── Unauthorized               401 unauthorized
    ├── PayloadTooLarge            413 payload_too_large
    ├── Saturated                  503 saturated (all sandbox slots busy; carries retry_after)
    ├── RunnerUnavailable          503 runner_unavailable (the runner process is gone)
    ├── Stopping                   503 stopping (the sidecar is stopping: it takes no new runs)
    └── StoreUnavailable           503 store_unavailable (history unreadable; at start: unusable data dir)

Errors cross the runner's socket as dicts (`to_dict`) and are rebuilt on the other side
(`SidecarError.from_dict`), so a gunicorn worker raises the same class the runner did.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "ConfigError",
    "PayloadTooLarge",
    "PluginNotFound",
    "RunnerUnavailable",
    "Saturated",
    "SidecarError",
    "Stopping",
    "StoreUnavailable",
    "Unauthorized",
]


class SidecarError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    _by_code: ClassVar[dict[str, type[SidecarError]]] = {}

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SidecarError._by_code[cls.code] = cls

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            d["retry_after"] = self.retry_after
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SidecarError:
        cls = SidecarError._by_code.get(str(d.get("code")), SidecarError)
        return cls(str(d.get("message", "")), retry_after=d.get("retry_after"))


class ConfigError(SidecarError):
    status = 400
    code = "config"


class PluginNotFound(SidecarError):
    status = 404
    code = "unknown_plugin"


class BadRequest(SidecarError):
    status = 400
    code = "bad_request"


class Unauthorized(SidecarError):
    status = 401
    code = "unauthorized"


class PayloadTooLarge(SidecarError):
    status = 413
    code = "payload_too_large"


class Saturated(SidecarError):
    status = 503
    code = "saturated"


class RunnerUnavailable(SidecarError):
    status = 503
    code = "runner_unavailable"


class Stopping(SidecarError):
    status = 503
    code = "stopping"


class StoreUnavailable(SidecarError):
    status = 503
    code = "store_unavailable"
