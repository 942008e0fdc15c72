"""The scheduler: every scheduled check runs on its interval, fairly, and the loop never dies.

One loop thread keeps each check's next tick. A tick hands the check to a short-lived thread that
waits for a sandbox slot — first come, first served, up to the check's next tick — runs it, and
ends; at most one such thread per check exists, so threads are bounded by the number of checks
and none is held idle.

- First ticks are spread over the interval: a check's offset from the scheduler's start is a
  stable hash of its name mapped into `[0, interval)`, so checks sharing an interval do not all
  start at the same instant, and the spread is the same on every restart.
- A tick that finds the check still running is skipped and counted as `overlap`. A wait that
  reaches the next tick without a slot gives up, counted as `saturated`, and that tick starts a
  fresh wait (a slot handed over at that very instant runs, and the tick counts as `overlap`).
- API calls never wait: they take a free slot or get 503 at once. A slot freed while a scheduled
  run waits goes to the oldest waiter, so bursts of API calls cannot starve a check.
- An exception while scheduling one check is logged and counted; the loop goes on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Scheduler", "Slots", "first_offset"]

log = logging.getLogger(__name__)

#: How soon a check whose scheduling raised is tried again when its next tick is unknown.
RETRY_AFTER_ERROR_SECONDS = 1.0


class Slots:
    """The sandbox slots of one sidecar: `try_acquire` never waits, `acquire` queues in order.

    A release hands the slot straight to the oldest waiter, so a free slot never coexists with a
    waiter and a non-waiting caller cannot take a slot a waiter was promised.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._waiters: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self.capacity - self._free

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def try_acquire(self) -> bool:
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            return False

    def acquire(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a slot, behind every earlier waiter."""
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            granted = threading.Event()
            self._waiters.append(granted)
        if granted.wait(timeout):
            return True
        with self._lock:
            if granted.is_set():  # handed over just as the wait timed out
                return True
            self._waiters.remove(granted)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            elif self._free < self.capacity:
                self._free += 1
            else:
                raise RuntimeError("released a sandbox slot that was not taken")


def first_offset(name: str, interval: float) -> float:
    """Where in `[0, interval)` a check's first tick falls: stable across processes (unlike `hash()`)."""
    digest = hashlib.blake2b(name.encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big") / float(1 << 48) * interval


IDLE, WAITING, RUNNING = "idle", "waiting", "running"


@dataclass
class _Check:
    name: str
    interval: float
    due: float  # monotonic time of the next tick
    state: str = IDLE
    wait_until: float = 0.0  # while waiting: give up at this tick
    ticked: bool = False  # the tick that ends the current wait has arrived


class Scheduler:
    """Ticks `(name, interval)` checks; `run(name)` is called holding a slot, `reject(name, reason)`
    counts a skipped tick, `error()` counts a fault of the scheduler itself."""

    def __init__(self, checks: Iterable[tuple[str, float]], slots: Slots, run: Callable[[str], None],
                 reject: Callable[[str, str], None], error: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._slots = slots
        self._run = run
        self._reject = reject
        self._error = error
        self._clock = clock
        start = clock()
        self._checks = [_Check(name, interval, start + first_offset(name, interval)) for name, interval in checks]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop() and set_checks(): the loop looks again at once
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def set_checks(self, checks: Iterable[tuple[str, float]]) -> None:
        """Replace the scheduled checks (a reload). A kept check keeps its state, and its phase unless its
        interval changed; a new or re-timed one gets its first tick as at start-up; a removed one stops
        ticking (a wait or run in flight ends on its own)."""
        start = self._clock()
        with self._lock:
            current = {c.name: c for c in self._checks}
            updated = []
            for name, interval in checks:
                check = current.get(name)
                if check is None:
                    check = _Check(name, interval, start + first_offset(name, interval))
                elif check.interval != interval:
                    check.interval, check.due = interval, start + first_offset(name, interval)
                updated.append(check)
            self._checks = updated  # a new list: a loop pass still iterating the old one is unaffected
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = RETRY_AFTER_ERROR_SECONDS
            try:
                now = self._clock()
                for check in self._checks:
                    if not check.due > now:  # due, or not a number: _tick raises and the guard retries later
                        self._guarded_tick(check, now)
                wait = min((c.due for c in self._checks), default=math.inf) - self._clock()
            except Exception:
                log.exception("the scheduler loop failed; it goes on")
                self._error()
            self._wake.wait(min(max(wait, 0.001), 60.0) if math.isfinite(wait) else RETRY_AFTER_ERROR_SECONDS)
            self._wake.clear()

    def _guarded_tick(self, check: _Check, now: float) -> None:
        try:
            self._tick(check, now)
        except Exception:
            log.exception("scheduling check %s failed; the other checks go on", check.name)
            self._error()
            if not check.due > now:  # never advanced (or not a number): try again soon, not in a spin
                check.due = now + RETRY_AFTER_ERROR_SECONDS

    def _tick(self, check: _Check, now: float) -> None:
        # Next tick first, keeping the phase; ticks missed while the loop was held are skipped, not bunched.
        # (math.floor raises on a NaN or infinite interval: the guard counts it.)
        check.due += check.interval * (math.floor((now - check.due) / check.interval) + 1)
        with self._lock:
            state = check.state
            if state == IDLE:
                check.state, check.wait_until = WAITING, check.due
            elif state == WAITING:
                check.ticked = True  # that wait ends at this tick; the waiter waits again for this one
        if state == RUNNING:
            self._reject(check.name, "overlap")
        if state != IDLE:
            return
        try:
            threading.Thread(target=self._attempt, args=(check,), name=f"check-{check.name}", daemon=True).start()
        except BaseException:
            with self._lock:
                check.state = IDLE
            raise

    def _attempt(self, check: _Check) -> None:
        """Wait for a slot up to the next tick (again, if that tick came meanwhile), then run once.

        This thread owns the check's state from the tick that started it until it sets it back to idle.
        """
        owned = True
        try:
            while True:
                got = self._slots.acquire(max(0.0, check.wait_until - self._clock()))
                with self._lock:
                    if got:
                        check.state, late, check.ticked = RUNNING, check.ticked, False
                        break
                    again, check.ticked = check.ticked and not self._stop.is_set(), False
                    if again:
                        check.wait_until = check.due
                    else:
                        check.state, owned = IDLE, False
                self._reject(check.name, "saturated")
                if not again:
                    return
            try:
                if late:  # the slot came just as the next tick did: that tick is this run's overlap
                    self._reject(check.name, "overlap")
                if not self._stop.is_set():
                    self._run(check.name)
            finally:
                self._slots.release()
        except Exception:
            log.exception("scheduled run of %s failed; the check stays scheduled", check.name)
            self._error()
        finally:
            if owned:
                with self._lock:
                    check.state = IDLE
