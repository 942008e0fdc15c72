"""Faults in a fleet: each alert fires for exactly the sidecar at fault, through a real Prometheus.

Three sidecars (the fleet harness of benchmarks/fleet.py) under one Prometheus scraping and evaluating every
second, with the shipped recording rules and a copy of the shipped alerting rules whose `for:` is cut to 0 s.
Every sidecar runs a healthy scheduled check; on top of it, the first one's check times out on every run,
the second one's hits its memory limit on every run, and the third one is killed (SIGKILL of its process
group, as when its host dies). Then `SidecarPluginTimeouts`, `SidecarPluginMemoryErrors` and `SidecarDown`
must each fire for that one instance and no other, and no alert may fire for an instance that is not at
fault in a way that explains it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.fleet import Fleet, fleet, prometheus_binary
from tests.conftest import HOSTILE, ci, poll
from tests.stack.promql import ALERTS_FILE, RECORDING_FILE

pytestmark = pytest.mark.integration

HEALTHY = '[checks.beat]\nplugin = "echo"\nparams = { beat = true }\ninterval_seconds = 2\n'
#: Extra checks of the first two sidecars; the third runs only the healthy one and is killed.
FAULTY = (
    '[checks.slow]\nplugin = "sleep"\nparams = { seconds = 30 }\ntimeout_seconds = 0.5\ninterval_seconds = 2\n',
    '[checks.hungry]\nplugin = "memory_bomb"\nmemory_limit_mb = 200\ninterval_seconds = 2\n',
    "",
)
SLOW, HUNGRY, KILLED = range(3)
#: Alerts a faulty sidecar may also fire, besides the one its fault is about (a check that always fails
#: has an error ratio of 1, and a failed run leaves its check critical).
ALSO = {"SidecarPluginErrorRatioHigh", "SidecarCheckCritical"}




def _alerts_without_for(tmp: Path) -> Path:
    doc = yaml.safe_load(ALERTS_FILE.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    out = tmp / "alerts.yml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def faulty_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = prometheus_binary()
    if binary is None:
        if ci():
            pytest.fail("the `prometheus` binary is missing (Debian package `prometheus`); it is required under CI")
        pytest.skip("the `prometheus` binary is missing (Debian package `prometheus`)")
    tmp = tmp_path_factory.mktemp("fleet-faults")
    with fleet(tmp) as f:
        f.start_sidecars(3, lambda i, port: HEALTHY + FAULTY[i], plugin_path=str(HOSTILE))
        f.start_prometheus(binary, "1s", [RECORDING_FILE, _alerts_without_for(tmp)])
        f.wait_until_all_up(timeout=60)
        f.kill(f.sidecars[KILLED])
        yield f


def test_each_alert_fires_for_exactly_the_faulty_instance(faulty_fleet: Fleet) -> None:
    prom = faulty_fleet.prometheus
    assert prom is not None
    instance = [Fleet.instance(s) for s in faulty_fleet.sidecars]
    expected = {
        "SidecarPluginTimeouts": {instance[SLOW]},
        "SidecarPluginMemoryErrors": {instance[HUNGRY]},
        "SidecarDown": {instance[KILLED]},
    }

    def fired() -> tuple[bool, dict[str, set[str | None]]]:
        firing = prom.firing()
        return all(firing.get(name) for name in expected), firing

    firing = poll("the three alerts to fire", fired, timeout=60, every=0.5)
    for name, instances in expected.items():
        assert firing[name] == instances, (name, firing)
    allowed = {
        instance[SLOW]: {"SidecarPluginTimeouts", *ALSO},
        instance[HUNGRY]: {"SidecarPluginMemoryErrors", *ALSO},
        instance[KILLED]: {"SidecarDown"},
    }
    for name, firing_at in firing.items():
        for inst in firing_at:
            assert inst in allowed and name in allowed[inst], f"{name} fires for {inst}: {firing}"

    # The alerts name the plugin at fault, and SidecarDown's description names the killed sidecar.
    by_name: dict[str, list[dict[str, Any]]] = {}
    for alert in prom.data("/api/v1/alerts")["alerts"]:
        if alert["state"] == "firing":
            by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
    assert {a["labels"]["plugin"] for a in by_name["SidecarPluginTimeouts"]} == {"slow"}
    assert {a["labels"]["plugin"] for a in by_name["SidecarPluginMemoryErrors"]} == {"hungry"}
    (down,) = by_name["SidecarDown"]
    assert instance[KILLED] in down["annotations"]["description"], down
