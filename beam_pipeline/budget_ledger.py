"""A lifetime privacy budget for recurring runs over the same privacy units.

A nightly export over the same customers spends privacy budget every night.
The budget ledger is one JSON file (local or gs://) that records, for each
declared privacy-unit domain (`--privacy_unit_domain`, e.g. "customers-eu"),
the formal cost of every run as its dp_accounting event. Before a run starts,
all recorded events of its domain and the run's own are composed with the
Renyi DP accountant; if the cumulative epsilon would pass the domain's
lifetime epsilon, the run is refused.

A domain's lifetime epsilon and its delta are fixed by its first run. The
cumulative epsilon is one figure at one delta: were each run to compose at
its own --delta, a run at a large delta would see the domain's spend as small
and be admitted, and the total at the domain's delta would pass the budget.

Each run leaves a keyed digest of its run secret, never the secret. A run
whose secret the ledger has already seen, in its domain or another, is
refused: the same secret draws the same noise, which cancels out of the
difference of two releases; composition assumes fresh noise.

The spend is RESERVED before the job starts, and never given back: a job
that crashes after reading data has still touched the data, so a crash
cannot make a run free. A run is marked `completed` or `failed` afterwards,
for the operator; both count.

Two runs must not both spend the last of a budget. Every change is a
read-check-write under a lock:
- a local ledger is locked with fcntl.flock on `PATH.lock` (released by the
  kernel if the process dies) and replaced atomically (write, fsync, rename);
- a Cloud Storage ledger is written with `if_generation_match` set to the
  generation that was read; if another run wrote in between, the write fails
  with 412, and the run re-reads, re-checks and tries again.

Beam-free: run.py calls `reserve` before building the pipeline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import random
import re
import tempfile
import time
import uuid
from typing import Any, Callable

import attr
import dp_accounting

from mechanisms import accounting
from beam_pipeline import storage

FORMAT_VERSION = 1
DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STATUSES = ("reserved", "completed", "failed")
GCS_ATTEMPTS = 50
SECRET_DIGEST_LABEL = b"dpsynth budget ledger: run secret digest"


class BudgetLedgerError(ValueError):
    """A ledger that cannot be used, or a run it cannot afford; one line."""


class BudgetExhausted(BudgetLedgerError):
    """The run would take the domain past its lifetime epsilon."""


class SecretReused(BudgetLedgerError):
    """The run's secret was already used by a run in the ledger."""


# ------------------------------------------------------------- DP events


def event_to_json(event: dp_accounting.DpEvent) -> dict:
    """A dp_accounting event as plain JSON: {"type": class name, fields...}."""
    result: dict[str, Any] = {"type": type(event).__name__}
    for field in attr.fields(type(event)):
        value = getattr(event, field.name)
        if isinstance(value, dp_accounting.DpEvent):
            value = event_to_json(value)
        elif isinstance(value, (list, tuple)):
            value = [event_to_json(v) if isinstance(v, dp_accounting.DpEvent) else v
                     for v in value]
        result[field.name] = value
    return result


def event_from_json(data: dict) -> dp_accounting.DpEvent:
    kind = getattr(dp_accounting, str(data.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, dp_accounting.DpEvent)):
        raise BudgetLedgerError(f"the budget ledger holds an unknown DP event {data.get('type')!r}")
    fields = {}
    for name, value in data.items():
        if name == "type":
            continue
        if isinstance(value, dict):
            value = event_from_json(value)
        elif isinstance(value, list):
            value = [event_from_json(v) if isinstance(v, dict) else v for v in value]
        fields[name] = value
    return kind(**fields)


def composed_epsilon(events, delta: float, mechanism_delta: float = 0.0) -> float:
    """Epsilon at `delta` of all events composed sequentially (Renyi DP).

    `mechanism_delta` is the part of delta that the runs' own mechanisms spend
    (median_ptr's stability tests, summed over runs); the rest converts the
    composed curve. The accountant is the privacy ledger's, so every event a
    run records composes here the same way."""
    if delta - mechanism_delta <= 0:
        raise BudgetExhausted(
            f"the runs' stability tests already spend delta {mechanism_delta:.3g}, all of "
            "this run's --delta: raise --delta or stop using median_ptr in this domain")
    return accounting.events_epsilon(events, delta - mechanism_delta)


# ------------------------------------------------------------- the ledger


@dataclasses.dataclass(frozen=True)
class RunCost:
    """What one run spends: its composed DP event and the figures beside it."""
    event: dp_accounting.DpEvent
    epsilon: float
    delta: float
    description: dict = dataclasses.field(default_factory=dict)
    mechanism_delta: float = 0.0     # the part of delta the run's mechanisms spend


@dataclasses.dataclass(frozen=True)
class Reservation:
    """The outcome of `reserve`: this run's cost and the domain's cumulative cost."""
    ledger: str
    domain: str
    run_id: str
    lifetime_epsilon: float
    delta: float
    run_epsilon: float
    cumulative_epsilon_before: float
    cumulative_epsilon: float
    runs_before: int

    @property
    def remaining_epsilon(self) -> float:
        return max(0.0, self.lifetime_epsilon - self.cumulative_epsilon)

    def to_report(self) -> dict:
        """The `lifetime_budget` section of the privacy report."""
        return {
            "ledger": self.ledger,
            "privacy_unit_domain": self.domain,
            "run_id": self.run_id,
            "lifetime_epsilon": self.lifetime_epsilon,
            "delta": self.delta,
            "this_run_epsilon": self.run_epsilon,
            "cumulative_epsilon_before_this_run": self.cumulative_epsilon_before,
            "cumulative_epsilon": self.cumulative_epsilon,
            "remaining_epsilon": self.remaining_epsilon,
            "earlier_runs": self.runs_before,
            "composition": "all recorded runs of the domain and this one, composed "
                           "with the Renyi DP accountant at the domain's delta; reserved "
                           "before the job started, so it counts even if the job fails",
        }


def check_domain(name: str) -> str:
    if not name or not DOMAIN_PATTERN.match(name):
        raise BudgetLedgerError(
            f"--privacy_unit_domain {name!r} must be 1-128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit (e.g. customers-eu)")
    return name


def secret_digest(secret: str, domain: str) -> str:
    """What the ledger keeps of a run secret: enough to recognise it, nothing to recover it.

    The label keeps these digests apart from any other use of the secret; the
    domain in the key keeps one secret's digests in two domains unrelated."""
    key = SECRET_DIGEST_LABEL + b"\x1f" + domain.encode("utf-8")
    return hmac.new(key, secret.encode("utf-8"), hashlib.sha256).hexdigest()


def domain_delta(entry: dict, first_delta: float) -> float:
    """The delta all of a domain's runs are composed at (`first_delta` for a new domain)."""
    if "delta" in entry:
        return float(entry["delta"])
    # Ledgers written before domains kept a delta: the first recorded run set it.
    if entry["runs"]:
        return float(entry["runs"][0]["delta"])
    return float(first_delta)


def reserve(path: str, *, domain: str, lifetime_epsilon: float, cost: RunCost, secret: str,
            run_id: str | None = None, store=None) -> Reservation:
    """Records `cost` for `domain`, or raises BudgetLedgerError if the run may not start.

    BudgetExhausted if it does not fit, SecretReused if a run of the ledger
    had `secret`, plain BudgetLedgerError if its lifetime or delta differ
    from the domain's."""
    check_domain(domain)
    if not secret:
        raise BudgetLedgerError("a run needs a secret to be recorded in the budget ledger")
    if not lifetime_epsilon > 0:
        raise BudgetLedgerError("--lifetime_epsilon must be > 0")
    run_id = run_id or uuid.uuid4().hex
    store = store or open_store(path)
    outcome: dict[str, Reservation] = {}

    def add_run(state: dict) -> dict:
        entry = state["domains"].setdefault(
            domain, {"lifetime_epsilon": float(lifetime_epsilon), "delta": float(cost.delta),
                     "runs": []})
        recorded = float(entry["lifetime_epsilon"])
        if recorded != float(lifetime_epsilon):
            raise BudgetLedgerError(
                f"the budget ledger {path} gives domain {domain!r} a lifetime epsilon of "
                f"{recorded:g}; pass --lifetime_epsilon {recorded:g} (changing a lifetime "
                "budget is done by editing the ledger, deliberately)")
        delta = domain_delta(entry, cost.delta)
        if float(cost.delta) != delta:
            raise BudgetLedgerError(
                f"the budget ledger {path} composes domain {domain!r} at delta {delta!r}; pass "
                f"--delta {delta!r} (at another delta the domain's spend is another figure, and "
                "a run at a larger one would look cheaper than it is)")
        entry["delta"] = delta
        _refuse_a_used_secret(state, secret, path)
        earlier = [event_from_json(run["dp_event"]) for run in entry["runs"]]
        earlier_delta = sum(float(run.get("mechanism_delta", 0.0)) for run in entry["runs"])
        before = composed_epsilon(earlier, delta, earlier_delta) if earlier else 0.0
        after = composed_epsilon([*earlier, cost.event], delta,
                                 earlier_delta + cost.mechanism_delta)
        if after > lifetime_epsilon:
            raise BudgetExhausted(
                f"privacy budget of domain {domain!r} exhausted: {len(earlier)} earlier "
                f"run(s) spent epsilon {before:.4g} and this run costs {cost.epsilon:.4g}, "
                f"together {after:.4g} at delta {delta:g}, more than --lifetime_epsilon "
                f"{lifetime_epsilon:g} (ledger {path})")
        entry["runs"].append({
            "run_id": run_id,
            "reserved_at": _now(),
            "status": "reserved",
            "epsilon": cost.epsilon,
            "delta": cost.delta,
            "mechanism_delta": cost.mechanism_delta,
            "secret_digest": secret_digest(secret, domain),
            "dp_event": event_to_json(cost.event),
            **cost.description,
        })
        outcome["reservation"] = Reservation(
            ledger=path, domain=domain, run_id=run_id, lifetime_epsilon=float(lifetime_epsilon),
            delta=delta, run_epsilon=cost.epsilon, cumulative_epsilon_before=before,
            cumulative_epsilon=after, runs_before=len(earlier))
        return state

    store.update(add_run)
    return outcome["reservation"]


def _refuse_a_used_secret(state: dict, secret: str, path: str) -> None:
    """SecretReused if any run in the ledger had `secret`, in this domain or another.

    Within a domain, reused noise cancels between two releases about the same
    people. Across domains it is as bad: the difference of two releases with
    the same noise is noise-free, and one domain's data may be known."""
    for name, entry in state["domains"].items():
        digest = secret_digest(secret, name)
        for run in entry.get("runs", []):
            if run.get("secret_digest") == digest:
                raise SecretReused(
                    f"run {run['run_id']} of domain {name!r} already used this --run_secret "
                    f"(ledger {path}): the same secret draws the same noise, which cancels "
                    "between two releases; leave --run_secret unset for a fresh one")


def set_status(path: str, domain: str, run_id: str, status: str, store=None) -> None:
    """Marks a reserved run completed or failed; its spend stays either way."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")

    def mark(state: dict) -> dict:
        for run in state["domains"].get(domain, {}).get("runs", []):
            if run["run_id"] == run_id:
                run["status"] = status
                run["finished_at"] = _now()
        return state

    (store or open_store(path)).update(mark)


def read_ledger(path: str) -> dict:
    return (open_store(path)).read()[0]


# ------------------------------------------------------------- storage


def _empty() -> dict:
    return {"format": "dpsynth privacy budget ledger", "version": FORMAT_VERSION,
            "domains": {}}


def _parse(text: str, path: str) -> dict:
    try:
        state = json.loads(text)
    except ValueError:
        raise BudgetLedgerError(f"the budget ledger {path} is not valid JSON") from None
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION \
            or not isinstance(state.get("domains"), dict):
        raise BudgetLedgerError(f"{path} is not a dpsynth budget ledger (version "
                                f"{FORMAT_VERSION})")
    return state


def _dump(state: dict) -> bytes:
    return (json.dumps(state, indent=2, sort_keys=True) + "\n").encode("utf-8")


def open_store(path: str):
    if not path:
        raise BudgetLedgerError("--budget_ledger is empty")
    return GcsLedgerStore(path) if storage.is_gcs(path) else LocalLedgerStore(path)


class LocalLedgerStore:
    """A ledger file on a local (or locally mounted) filesystem."""

    def __init__(self, path: str, lock_timeout: float = 120.0):
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self.lock_timeout = lock_timeout
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise BudgetLedgerError(f"the folder of --budget_ledger {path} does not exist")

    def read(self) -> tuple[dict, None]:
        if not os.path.exists(self.path):
            return _empty(), None
        with open(self.path, encoding="utf-8") as handle:
            return _parse(handle.read(), self.path), None

    def update(self, change: Callable[[dict], dict]) -> dict:
        try:
            return self._update(change)
        except PermissionError as error:
            raise BudgetLedgerError(f"cannot write --budget_ledger {self.path}: "
                                    f"{error.strerror}") from None

    def _update(self, change: Callable[[dict], dict]) -> dict:
        with open(self.lock_path, "a+") as lock:
            self._lock(lock)
            try:
                state = change(self.read()[0])
                self._write(state)
                return state
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _lock(self, lock) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BudgetLedgerError(
                        f"the budget ledger {self.path} stayed locked for "
                        f"{self.lock_timeout:g} s by another run") from None
                time.sleep(0.05)

    def _write(self, state: dict) -> None:
        directory = os.path.dirname(self.path)
        handle, temporary = tempfile.mkstemp(prefix=".ledger-", dir=directory)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(_dump(state))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise


class GcsLedgerStore:
    """A ledger object on Cloud Storage, changed by generation-matched writes."""

    def __init__(self, path: str, client=None):
        self.path = path
        self.bucket_name, self.name = storage.split_gcs(path)
        if not self.name or self.name.endswith("/"):
            raise BudgetLedgerError(f"--budget_ledger {path} must name an object, not a folder")
        self._client = client

    @property
    def client(self):
        return self._client or storage.gcs_client()

    def _blob(self):
        return self.client.bucket(self.bucket_name).blob(self.name)

    def read(self) -> tuple[dict, int]:
        """The ledger and its generation (0: no object yet)."""
        from google.api_core import exceptions

        blob = self._blob()
        try:
            data = blob.download_as_bytes()
        except exceptions.NotFound:
            if self.client.lookup_bucket(self.bucket_name) is None:
                raise BudgetLedgerError(f"the bucket gs://{self.bucket_name} of "
                                        f"--budget_ledger does not exist") from None
            return _empty(), 0
        except exceptions.GoogleAPICallError as error:
            raise BudgetLedgerError(f"cannot read --budget_ledger {self.path}: "
                                    f"{storage.first_line(error)}") from None
        return _parse(data.decode("utf-8"), self.path), int(blob.generation)

    def update(self, change: Callable[[dict], dict]) -> dict:
        from google.api_core import exceptions

        for attempt in range(GCS_ATTEMPTS):
            state, generation = self.read()
            state = change(state)
            try:
                self._blob().upload_from_string(_dump(state), content_type="application/json",
                                                if_generation_match=generation)
                return state
            except exceptions.PreconditionFailed:
                # Another run changed the ledger since we read it: read and check again.
                time.sleep(random.uniform(0.05, 0.2) * min(attempt + 1, 10))
            except exceptions.GoogleAPICallError as error:
                raise BudgetLedgerError(f"cannot write --budget_ledger {self.path}: "
                                        f"{storage.first_line(error)}") from None
        raise BudgetLedgerError(f"the budget ledger {self.path} kept changing under this run "
                                f"({GCS_ATTEMPTS} attempts); try again")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
