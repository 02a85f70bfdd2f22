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
    _by_stage: dict = {}
    _lock = threading.Lock()

    def __init__(self, phase: str, unit: str):
        self.phase, self.unit = phase, unit
        self.started = self.last_report = time.time()
        self.done = 0

    @classmethod
    def of(cls, stage_id: str, phase: str, unit: str) -> "Progress":
        with cls._lock:
            return cls._by_stage.setdefault(stage_id, cls(phase, unit))

    def add(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            now = time.time()
            if now - self.last_report < PROGRESS_EVERY_SECONDS:
                return
            self.last_report = now
            done, rate = self.done, self.done / max(now - self.started, 1e-9)
        _LOG.info("%s: %d %s so far, %.1f/s", self.phase, done, self.unit, rate)


def counter(phase: str, unit: str):
    """A picklable callable for one stage: `tick(count)` adds to the stage's progress."""
    stage_id = uuid.uuid4().hex
    return lambda count=1: Progress.of(stage_id, phase, unit).add(count)


def announce(message: str, *args) -> None:
    """One line at a stage boundary (counts only, never a record)."""
    _LOG.info(message, *args)
