"""`sidecar serve` (the service lands with the HTTP API)."""

from __future__ import annotations

import sys

from .config import Settings


def serve(settings: Settings) -> int:
    print("sidecar serve: not available in this build yet", file=sys.stderr)
    return 2
