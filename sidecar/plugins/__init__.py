"""Plugin discovery and the registry of runnable entries (plugins and configured checks)."""

from __future__ import annotations

from .registry import NAME_PATTERN, Entry, Registry, discover

__all__ = ["NAME_PATTERN", "Entry", "Registry", "discover"]
