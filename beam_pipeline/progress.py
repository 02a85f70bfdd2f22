"""Progress lines for the stages that can run for minutes: reading, embedding, sampling.

A stage's elements pass through many bundles and, on some runners, several threads
of one worker process; the count lives in the module (one per process), keyed by
the stage, and a line is logged at most every PROGRESS_EVERY_SECONDS. A stage that
ends sooner logs none: the end-of-stage counts say the rest.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

PROGRESS_EVERY_SECONDS = 10.0
_LOG = logging.getLogger("dpsynth.progress")


class Progress:
    """One stage's count in this process. With a `rate_unit`, the rate is of what
    `add(rate_count=...)` counts (tokens while batches are counted), and a line with the
    planned `total` is also logged when the count reaches it."""

    _by_stage: dict = {}
    _lock = threading.Lock()

    def __init__(self, phase: str, unit: str, rate_unit: str | None = None):
        self.phase, self.unit, self.rate_unit = phase, unit, rate_unit
        self.started = self.last_report = time.time()
        self.done = self.rate_done = 0

    @classmethod
    def of(cls, stage_id: str, phase: str, unit: str, rate_unit: str | None = None
           ) -> "Progress":
        with cls._lock:
            return cls._by_stage.setdefault(stage_id, cls(phase, unit, rate_unit))

    def add(self, count: int = 1, *, total: int | None = None,
            rate_count: int | None = None) -> None:
        with self._lock:
            self.done += count
            self.rate_done += count if rate_count is None else rate_count
            now = time.time()
            finished = total is not None and self.done >= total
            if now - self.last_report < PROGRESS_EVERY_SECONDS and not finished:
                return
            self.last_report = now
            done, rate = self.done, self.rate_done / max(now - self.started, 1e-9)
        if total is None:
            _LOG.info("%s: %d %s so far, %.1f/s", self.phase, done, self.unit, rate)
        else:
            _LOG.info("%s: %d/%d %s done, %.1f %s/s", self.phase, done, total, self.unit,
                      rate, self.rate_unit or self.unit)


def counter(phase: str, unit: str, rate_unit: str | None = None):
    """A picklable callable for one stage: `tick(count, total=..., rate_count=...)` adds to
    the stage's progress; `tick(0)` starts its clock."""
    stage_id = uuid.uuid4().hex
    return lambda count=1, **kwargs: Progress.of(stage_id, phase, unit, rate_unit).add(
        count, **kwargs)


def announce(message: str, *args) -> None:
    """One line at a stage boundary (counts only, never a record)."""
    _LOG.info(message, *args)
