"""The collectors' text, checked byte for byte against prometheus-client's own `generate_latest`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from sidecar.collector_text import CollectorText
from sidecar.metrics import _num


class _Changing:
    """A collector whose values change between scrapes (its shape does not, unless told)."""

    def __init__(self) -> None:
        self.n = 0
        self.extra_label = False

    def collect(self) -> Iterator[Metric]:
        self.n += 1
        c = CounterMetricFamily("demo_cpu_seconds", "CPU time, with a \\ backslash\nand a newline", unit="seconds")
        c.add_metric([], 1.5 * self.n)
        yield c
        g = GaugeMetricFamily("demo_open", "Open things", labels=["kind", "path"])
        g.add_metric(["file", 'a "quoted"\\path\n'], self.n)
        g.add_metric(["socket", "x y z"], 1e21 * self.n)
        if self.extra_label:
            g.add_metric(["pipe", "new"], 3)
        yield g
        yield GaugeMetricFamily("demo_special", "Special numbers", value=[float("nan"), float("inf"),
                                                                          -float("inf")][self.n % 3])
        i = InfoMetricFamily("demo", "Build", value={"version": "3.11", "impl": "CPython"})
        yield i
        h = HistogramMetricFamily("demo_latency_seconds", "With _created, which the text format moves",
                                  buckets=[("0.1", 1), ("+Inf", self.n)], sum_value=0.5 * self.n)
        h.add_sample("demo_latency_seconds_created", {}, 1000.0)
        yield h
        t = GaugeMetricFamily("demo_stamped", "A sample with a timestamp")
        t.add_metric([], 2.0, timestamp=1700000000.5)
        yield t


def _registry(*collectors: object) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)  # type: ignore[arg-type]
    return registry


def _expected(registry: CollectorRegistry, openmetrics: bool) -> str:
    if openmetrics:
        text: str = generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
        return text.removesuffix("# EOF\n")
    return generate_latest(registry).decode()


@pytest.mark.parametrize("openmetrics", [False, True])
def test_every_scrape_is_prometheus_clients_text(openmetrics: bool) -> None:
    source = _Changing()
    text = CollectorText(_registry(source), _num)
    twin = _Changing()  # the same values, one scrape behind nothing: prometheus-client renders it
    reference = _registry(twin)
    for scrape in range(5):
        if scrape == 3:
            source.extra_label = twin.extra_label = True  # a new shape: a new template
        assert text.render(openmetrics) == _expected(reference, openmetrics), scrape
    kept = {shape[0] for (_, shape), template in text._templates.items()
            if isinstance(shape, tuple) and template is not None}
    assert {"demo_cpu_seconds", "demo_open", "demo_special", "demo"} <= kept  # the values-only path was taken
    assert "demo_stamped" not in kept  # a timestamp: prometheus-client renders it every time


def test_a_template_that_would_not_reproduce_the_text_is_not_used() -> None:
    source, twin = _Changing(), _Changing()
    text = CollectorText(_registry(source), lambda v: "wrong")
    reference = _registry(twin)
    for _ in range(2):
        assert text.render(False) == _expected(reference, False)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_the_runners_collectors_render_as_prometheus_client_renders_them(openmetrics: bool) -> None:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    text = CollectorText(registry, _num)

    def shape(body: str) -> list[str]:  # values move between two collections; names, labels and order do not
        return [line.rsplit(" ", 1)[0] if not line.startswith("#") else line for line in body.splitlines()]

    for _ in range(3):
        assert shape(text.render(openmetrics)) == shape(_expected(registry, openmetrics))
