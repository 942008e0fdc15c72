"""The exposition text of prometheus-client collectors, formatting only the values on each scrape.

The runner's `process_*` and `python_*` series come from prometheus-client's process, platform and GC
collectors. Their values change from one scrape to the next, but their shape (names, labels, HELP, TYPE)
does not; prometheus-client's `generate_latest` nevertheless re-validates and re-escapes every name and
label on every scrape, which was most of those series' cost (measured: 84 us of a 139 us render, six
plugins). So each family's text is rendered once by prometheus-client itself, kept as a template (its
header lines, and each sample line up to its value), and later scrapes of the same shape only append
the values. The output is prometheus-client's own, byte for byte: a template is kept only when filling
it with the values it was made from reproduces that text exactly, and a family it does not fit (a new
label, a timestamp, an exemplar, a sample that the text format moves elsewhere) is rendered by
prometheus-client as before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

__all__ = ["CollectorText"]


@dataclass(frozen=True)
class _Template:
    header: str
    prefixes: tuple[str, ...]  # each sample's line up to (and with) the space before its value


class _One:
    """A registry of one family, for prometheus-client's `generate_latest`."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self.metric]


def _shape(metric: Metric) -> Hashable | None:
    """What a family's text depends on besides its values; None when a sample carries more than a value."""
    samples: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for s in metric.samples:
        if s.timestamp is not None or s.exemplar is not None or getattr(s, "native_histogram", None) is not None:
            return None
        samples.append((s.name, tuple(sorted(s.labels.items())) if s.labels else ()))
    return (metric.name, metric.type, metric.documentation, metric.unit, tuple(samples))


class CollectorText:
    """The text of `registry`'s families in either exposition format, as `generate_latest` writes it.

    `number` must format a value exactly as prometheus-client's `floatToGoString` (the caller's `_num`,
    tested against it); a template is checked with it before it is kept.
    """

    def __init__(self, registry: Collector, number: Callable[[float], str]) -> None:
        self._registry = registry
        self._number = number
        self._templates: dict[tuple[bool, Hashable], _Template | None] = {}

    def render(self, openmetrics: bool) -> str:
        """Every family's lines (without OpenMetrics' `# EOF`); raises what collecting raises."""
        out: list[str] = []
        num = self._number
        for metric in self._registry.collect():
            shape = _shape(metric)
            template = None
            if shape is not None:
                key = (openmetrics, shape)
                if key in self._templates:
                    template = self._templates[key]
                else:
                    template = self._templates[key] = self._template(metric, openmetrics)
            if template is None:
                out.append(_generate(metric, openmetrics))
                continue
            out.append(template.header)
            out.extend(f"{prefix}{num(s.value)}\n" for prefix, s in zip(template.prefixes, metric.samples, strict=True))
        return "".join(out)

    def _template(self, metric: Metric, openmetrics: bool) -> _Template | None:
        text = _generate(metric, openmetrics)
        lines = text.splitlines(keepends=True)
        n = len(metric.samples)
        head, body = lines[: len(lines) - n], lines[len(lines) - n :]
        if any(not line.startswith("#") for line in head) or any(line.startswith("#") for line in body):
            return None
        prefixes = tuple(line[: line.rindex(" ") + 1] for line in body)
        template = _Template("".join(head), prefixes)
        filled = template.header + "".join(f"{p}{self._number(s.value)}\n"
                                           for p, s in zip(prefixes, metric.samples, strict=True))
        return template if filled == text else None


def _generate(metric: Metric, openmetrics: bool) -> str:
    """prometheus-client's own text of one family (looked up at call time, so tests can stand in for it)."""
    if openmetrics:
        from prometheus_client.openmetrics import exposition as om

        body: Any = om.generate_latest(_One(metric))  # type: ignore[no-untyped-call]
        return str(body.decode()).removesuffix("# EOF\n")
    from prometheus_client import exposition

    return exposition.generate_latest(_One(metric)).decode()
