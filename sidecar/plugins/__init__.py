"""Plugin discovery and the registry of runnable entries (plugins and configured checks)."""

from __future__ import annotations

from .registry import Entry, Registry, discover

__all__ = ["Entry", "Registry", "discover"]
