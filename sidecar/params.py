"""The one rule for parameters given as text (`--param KEY=VALUE`, `/probe?param.KEY=VALUE`)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_value"]


def parse_value(raw: str) -> Any:
    """VALUE as JSON when it is valid JSON (numbers, booleans, lists, objects), else the string itself."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return raw
