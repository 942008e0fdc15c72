"""A burst of run calls against the real service: no 500, no hang, and the runner's threads and
file descriptors come back to their idle level afterwards (the relay is bounded at both ends).

The sidecar gets one run slot: the sandbox keeps a channel to its launcher per run in flight (a
pool bounded by the slots, warm after the first runs), so what the burst can move is the relay.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from sidecar import defaults
from tests.conftest import LiveServer, make_live_server, poll

pytestmark = pytest.mark.integration

CLIENTS = 300
CALLS = 900


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = make_live_server(tmp_path_factory.mktemp("burst"), max_concurrent_runs="1")
    server.start()
    yield server
    server.stop()


def _runner_load(server: LiveServer) -> tuple[int, int]:
    """(threads, open fds) of the runner: the `sidecar serve` process itself."""
    assert server.proc is not None
    pid = server.proc.pid
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def _run(server: LiveServer) -> tuple[int, str]:
    req = urllib.request.Request(server.url + "/plugins/echo/run", data=b'{"params": {"n": 1}}', method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())["outcome"]
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())["error"]["code"]


def test_a_burst_of_runs_answers_and_the_runner_comes_back_to_idle(one_slot: LiveServer) -> None:
    for _ in range(5):  # warm: the plugin's template, each worker's first connections
        _run(one_slot)
        assert one_slot.request("GET", "/metrics")[0] == 200
    idle_threads, idle_fds = _runner_load(one_slot)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = Counter(pool.map(lambda _: _run(one_slot), range(CALLS)))
    assert sum(answers.values()) == CALLS
    assert {status for status, _ in answers} <= {200, 503}, answers  # never a 500
    assert {code for status, code in answers if status == 503} <= {"saturated", "runner_unavailable"}, answers
    assert answers[(200, "success")] > 0, answers
    # Each worker may keep a few idle connections to the runner (a thread and an fd each there).
    slack = 2 * defaults.RUNNER_IDLE_CONNECTIONS
    poll("the runner's threads and fds to come back to their idle level",
         lambda: ((load := _runner_load(one_slot))[0] <= idle_threads + slack
                  and load[1] <= idle_fds + slack, (load, (idle_threads, idle_fds), answers)))
