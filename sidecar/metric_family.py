"""What one metric family is, apart from the families themselves (`metrics.FAMILIES`, `probe.FAMILIES`).

A module that imports nothing, so that `probe` (which `values` imports) and `metrics` can both declare
families without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family"]


@dataclass(frozen=True)
class Family:
    """One metric family: what the scrape's HELP and TYPE say, and what the reference table in docs/ says.

    `values` names the fixed set a label takes its values from (the same tuples the rendering iterates),
    `doc` what a reader needs beyond the HELP text (when the family is absent, its buckets); the docs
    generator (`scripts/gen_docs.py`) builds the metrics table from both.
    """

    name: str  # sample base name; counters' samples add _total
    type: str
    help: str
    labels: tuple[str, ...] = ("plugin",)
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    doc: str = ""
