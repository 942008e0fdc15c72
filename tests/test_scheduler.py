"""The scheduler on its own: slots, offsets, overlap and saturation counting, surviving faults.

Runs are fake (a callback), intervals short; every wait is a poll for a condition, never a sleep
standing in for one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from sidecar.scheduler import Scheduler, Slots, first_offset

INTERVAL = 0.2


def wait_for(predicate: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# -- slots ---------------------------------------------------------------------------------------------


def test_try_acquire_never_waits_and_release_frees() -> None:
    slots = Slots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    assert slots.in_use == 2
    slots.release()
    assert slots.try_acquire()
    slots.release()
    slots.release()
    assert slots.in_use == 0
    with pytest.raises(RuntimeError):
        slots.release()


def test_acquire_times_out_and_leaves_no_waiter() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    assert slots.acquire(0.05) is False
    assert slots.waiting == 0
    slots.release()
    assert slots.acquire(0.0) is True


def test_a_freed_slot_goes_to_the_oldest_waiter_not_to_a_caller_that_does_not_wait() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    order: list[str] = []

    def waiter(name: str) -> None:
        assert slots.acquire(30)
        order.append(name)

    first = threading.Thread(target=waiter, args=("first",))
    first.start()
    wait_for(lambda: slots.waiting == 1)
    second = threading.Thread(target=waiter, args=("second",))
    second.start()
    wait_for(lambda: slots.waiting == 2)
    slots.release()  # handed to "first": the slot is never free for try_acquire meanwhile
    assert not slots.try_acquire()
    first.join(30)
    assert order == ["first"]
    slots.release()
    second.join(30)
    assert order == ["first", "second"]
    slots.release()
    assert slots.in_use == 0


# -- offsets -------------------------------------------------------------------------------------------


def test_first_offset_is_inside_the_interval_and_spreads_names() -> None:
    offsets = [first_offset(f"check_{i}", 60.0) for i in range(200)]
    assert all(0.0 <= o < 60.0 for o in offsets)
    assert len({round(o, 6) for o in offsets}) == 200
    assert min(offsets) < 15.0 and max(offsets) > 45.0  # spread, not bunched
    assert first_offset("disk", 30.0) == pytest.approx(first_offset("disk", 60.0) / 2)


def test_first_offset_is_stable_across_processes() -> None:
    code = "from sidecar.scheduler import first_offset; print(repr(first_offset('disk', 60.0)))"
    outs = {subprocess.check_output([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, text=True)
            for seed in ("1", "2", "3")}
    assert outs == {repr(first_offset("disk", 60.0)) + "\n"}


# -- the loop ------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """The scheduler's callbacks: what ran, what was rejected and why, how many faults."""

    hold: dict[str, threading.Event] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)
    runs: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, name: str) -> None:
        if name in self.fail:
            raise RuntimeError(f"scheduling {name} broke")
        if name in self.hold:
            assert self.hold[name].wait(30)
        with self.lock:
            self.runs[name] += 1

    def reject(self, name: str, reason: str) -> None:
        with self.lock:
            self.rejected[name, reason] += 1

    def error(self) -> None:
        with self.lock:
            self.errors += 1


@pytest.fixture
def started() -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(checks: list[tuple[str, float]], slots: Slots, rec: Recorder) -> Scheduler:
        s = Scheduler(checks, slots, rec.run, rec.reject, rec.error)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_three_checks_two_slots_all_keep_running(started: Callable[..., Scheduler]) -> None:
    rec, slots = Recorder(), Slots(2)
    started([("a", INTERVAL), ("b", INTERVAL), ("c", INTERVAL)], slots, rec)
    wait_for(lambda: min(rec.runs[n] for n in "abc") >= 5)
    assert rec.errors == 0


def test_a_tick_while_running_is_an_overlap(started: Callable[..., Scheduler]) -> None:
    rec, slots = Recorder(), Slots(2)
    rec.hold["slow"] = threading.Event()
    started([("slow", INTERVAL), ("quick", INTERVAL)], slots, rec)
    wait_for(lambda: rec.rejected["slow", "overlap"] >= 3 and rec.runs["quick"] >= 3)
    assert rec.runs["slow"] == 0  # still in its first run: never started a second one beside it
    rec.hold["slow"].set()
    wait_for(lambda: rec.runs["slow"] >= 2)
    assert rec.rejected["slow", "saturated"] == 0


def test_a_check_without_a_slot_waits_then_gives_up_as_saturated(started: Callable[..., Scheduler]) -> None:
    rec, slots = Recorder(), Slots(1)
    assert slots.try_acquire()  # the API holds the only slot
    started([("starved", INTERVAL)], slots, rec)
    wait_for(lambda: rec.rejected["starved", "saturated"] >= 3)
    assert rec.runs["starved"] == 0
    assert slots.waiting <= 1  # one waiter per check, never a pile
    slots.release()
    wait_for(lambda: rec.runs["starved"] >= 2)
    assert rec.rejected["starved", "overlap"] <= rec.rejected["starved", "saturated"]


def test_a_waiting_check_gets_the_next_free_slot_within_its_interval(started: Callable[..., Scheduler]) -> None:
    rec, slots = Recorder(), Slots(1)
    assert slots.try_acquire()
    started([("patient", 2.0)], slots, rec)
    wait_for(lambda: slots.waiting == 1)
    slots.release()  # freed long before the next tick: the waiter runs
    wait_for(lambda: rec.runs["patient"] == 1)
    assert rec.rejected["patient", "saturated"] == 0


def test_a_check_whose_run_raises_does_not_stop_the_others(started: Callable[..., Scheduler]) -> None:
    rec, slots = Recorder(), Slots(2)
    rec.fail.add("broken")
    started([("broken", INTERVAL), ("fine", INTERVAL)], slots, rec)
    wait_for(lambda: rec.errors >= 3 and rec.runs["fine"] >= 3)
    assert slots.in_use <= 1  # the broken check's slot is given back every time


def test_a_check_whose_tick_raises_does_not_stop_the_loop(started: Callable[..., Scheduler]) -> None:
    rec, slots = Recorder(), Slots(2)
    # A NaN interval makes computing the next tick raise: the loop counts it, retries later, goes on.
    scheduler = started([("nan", float("nan")), ("fine", INTERVAL)], slots, rec)
    wait_for(lambda: rec.errors >= 1 and rec.runs["fine"] >= 5)
    assert scheduler.alive


def test_a_reject_callback_that_raises_is_counted_and_the_check_recovers(started: Callable[..., Scheduler]) -> None:
    rec, slots = Recorder(), Slots(1)
    rec.hold["slow"] = threading.Event()
    original = rec.reject

    def broken_reject(name: str, reason: str) -> None:
        original(name, reason)
        raise KeyError(name)

    rec.reject = broken_reject  # type: ignore[method-assign]
    scheduler = Scheduler([("slow", INTERVAL)], slots, rec.run, rec.reject, rec.error)
    scheduler.start()
    try:
        wait_for(lambda: rec.errors >= 2)  # overlap ticks while held: each reject raises, each is counted
        rec.hold["slow"].set()
        wait_for(lambda: rec.runs["slow"] >= 2)
        assert scheduler.alive
    finally:
        scheduler.stop()


def test_no_checks_is_no_fault(started: Callable[..., Scheduler]) -> None:
    rec = Recorder()
    scheduler = started([], Slots(1), rec)
    assert scheduler.alive
    scheduler.stop()
    assert not scheduler.alive and rec.errors == 0


def test_set_checks_adds_removes_and_keeps_a_running_check_from_overlapping(started: Callable[..., Scheduler]) -> None:
    rec, slots = Recorder(), Slots(2)
    rec.hold["slow"] = threading.Event()
    scheduler = started([("slow", INTERVAL), ("gone", INTERVAL)], slots, rec)
    wait_for(lambda: rec.runs["gone"] >= 1 and rec.rejected["slow", "overlap"] >= 1)
    # A reload: "slow" stays (re-timed, still in its first run), "gone" goes, "new" comes.
    scheduler.set_checks([("slow", INTERVAL * 2), ("new", INTERVAL)])
    wait_for(lambda: rec.runs["new"] >= 3)
    gone = rec.runs["gone"]
    wait_for(lambda: rec.runs["new"] >= 6)
    assert rec.runs["gone"] <= gone + 1  # at most a run already ticked before the swap
    assert rec.runs["slow"] == 0  # kept its state: never started beside its own first run
    rec.hold["slow"].set()
    wait_for(lambda: rec.runs["slow"] >= 2)
    assert rec.errors == 0
