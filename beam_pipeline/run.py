"""`dpsynth run`: check the configuration, then run the Beam job and summarise it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time

import apache_beam as beam
import dp_accounting
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions, WorkerOptions

from beam_pipeline import budget_ledger
from beam_pipeline.options import LOGIT_AGGREGATION, PRIVATE_EVOLUTION, DpSynthOptions
from beam_pipeline.pipeline import build_pipeline, embedding_dimension, report_parameters
from beam_pipeline.input_check import InputCheckError, check_input
from beam_pipeline.plan import PlanError, check_budget, describe_plan, make_plan, plan_ledger
from offline_models import registry
from offline_models.loading import TINY_ENCODER, TINY_LM
from transforms.read import format_of
from beam_pipeline import storage
from transforms.write import existing_outputs, remove_staging

# The embedded runner: Beam's DirectRunner may first try the Prism runner,
# which downloads a binary; FnApiRunner runs in this process (or, with
# --direct_running_mode multi_processing, in local worker processes).
DEFAULT_RUNNER = "FnApiRunner"
# Short names for runners this project provides; Beam resolves a dotted path itself.
PROJECT_RUNNERS = {"dask": "beam_pipeline.dask_runner.DaskRunner"}
# Beam's worker operations log every element they process at DEBUG
# (apache_beam/runners/worker/operations.py), and elements hold private text.
# These loggers stay at INFO whatever the log level, here and on the workers.
ELEMENT_LOGGERS = ("apache_beam.runners.worker.operations",)


def pipeline_options(argv) -> DpSynthOptions:
    options = DpSynthOptions(argv)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    standard.runner = PROJECT_RUNNERS.get(standard.runner.lower(), standard.runner)
    worker = options.view_as(WorkerOptions)
    worker.sdk_harness_log_level_overrides = {
        **(worker.sdk_harness_log_level_overrides or {}),
        **{name: "INFO" for name in ELEMENT_LOGGERS}}
    return options


def local_worker_log() -> str:
    """Where Beam's local worker processes write their own stderr (see below)."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"dpsynth-workers-{os.getpid()}.log")


def local_workers_ignore_ctrl_c() -> None:
    """A terminal's Ctrl-C reaches every process of its foreground group, so each of
    Beam's local worker processes (--direct_running_mode multi_processing) printed a
    traceback of its own. They are started with SIGINT ignored (inherited through exec,
    and kept by Python); this process stops the job and they exit with it.

    Their stderr goes to `local_worker_log()`: when the job is stopped while a worker
    releases a bundle, Beam's worker prints the resulting KeyError traceback to stderr.
    Their log records still reach this process through Beam's logging channel, and a
    failed bundle's error through the job's result."""
    import shlex

    from apache_beam.runners.portability import local_job_service

    worker = local_job_service.SubprocessSdkWorker
    if getattr(worker.__init__, "ignores_ctrl_c", False):
        return
    original = worker.__init__

    def init(self, worker_command_line: bytes, *args, **kwargs):
        log = shlex.quote(local_worker_log()).encode()
        original(self, b"trap '' INT; exec " + worker_command_line + b" 2>>" + log,
                 *args, **kwargs)

    init.ignores_ctrl_c = True
    worker.__init__ = init


def silence_element_logging() -> None:
    """No log line of this process shows an element (see ELEMENT_LOGGERS)."""
    for name in ELEMENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def preflight(plan) -> None:
    """User mistakes that would otherwise surface as tracebacks deep in a job."""
    try:
        storage.check_bucket(plan.input, "--input")
        storage.check_bucket(plan.output, "--output")
        if plan.public_input:
            storage.check_bucket(plan.public_input, "--public_input")
        if plan.budget_ledger:
            storage.check_bucket(plan.budget_ledger, "--budget_ledger")
    except storage.StorageError as error:
        raise PlanError(str(error)) from None
    inputs = _require_match("--input", plan.input)
    if not plan.input_format:
        for path in inputs:
            try:
                format_of(path)
            except ValueError as error:
                raise PlanError(str(error)) from None
    try:
        check_input(inputs, schema=plan.schema, declared_format=plan.input_format,
                    encoding=plan.encoding, open_file=FileSystems.open)
    except InputCheckError as error:
        raise PlanError(f"--input: {error}") from None
    if plan.public_input:
        _require_match("--public_input", plan.public_input)
    for reference, resolve in ((plan.lm, registry.resolve_lm),
                               (plan.encoder, registry.resolve_encoder)):
        if reference not in (TINY_LM, TINY_ENCODER):
            resolve(reference)
    embedding_dimension(plan)  # an encoder whose dimension cannot be read fails here
    probe = FileSystems.join(plan.output, ".dpsynth-write-check")
    try:
        if not plan.output.startswith("gs://"):
            os.makedirs(plan.output, exist_ok=True)
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        storage.delete(probe)
    except Exception as error:  # noqa: BLE001
        raise PlanError(f"cannot write to --output {plan.output} ({storage.first_line(error)}): "
                        "choose a directory you can write to") from None


def with_folder_input(plan):
    """The plan with a folder as --input read as the files directly inside it, the same
    with or without a final slash (Beam matches a bare folder as one unreadable file)."""
    pattern = plan.input
    if any(char in pattern for char in "*?["):
        return plan
    if storage.is_gcs(pattern):
        try:
            is_folder = pattern.endswith("/") or (
                not FileSystems.match([pattern])[0].metadata_list
                and bool(storage.list_files(pattern)))
        except Exception:  # noqa: BLE001 - a missing bucket is preflight's to explain
            return plan
    else:
        is_folder = os.path.isdir(pattern)
    if not is_folder:
        return plan
    if not storage.list_files(pattern):
        raise PlanError(f"--input {pattern} is a folder with no files directly inside it: "
                        "name the files, e.g. with a glob such as folder/*/*.csv")
    return dataclasses.replace(plan, input=storage.join(pattern.rstrip("/"), "*"))


def refuse_earlier_outputs(plan, overwrite: bool) -> list[str]:
    """The outputs of an earlier run in --output, which only --overwrite may replace: a
    re-run would otherwise mix its files with, or silently replace, the earlier ones."""
    try:
        earlier = existing_outputs(plan.output)
    except Exception:  # noqa: BLE001 - an unreachable folder is preflight's to explain
        return []
    if earlier and not overwrite:
        names = ", ".join(path.rsplit("/", 1)[-1] for path in earlier[:3])
        raise PlanError(f"--output {plan.output} already holds the outputs of a run ({names}"
                        f"{', ...' if len(earlier) > 3 else ''}): pass --overwrite to replace "
                        "them, or choose another folder")
    return earlier


def _require_match(option: str, pattern: str) -> list[str]:
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # noqa: BLE001 - any filesystem error means a bad path here
        raise PlanError(f"cannot read {option} {pattern}: {storage.first_line(error)}") from None
    if not matched:
        raise PlanError(f"{option} {pattern} matches no file")
    return [metadata.path for metadata in matched]


def reserve_budget(plan, epsilon: float):
    """Records this run's cost in the budget ledger before the job starts (None without one).

    Reserving first means a job that fails after touching the data still counts."""
    if not plan.budget_ledger:
        return None
    ledger = plan_ledger(plan)
    cost = budget_ledger.RunCost(
        event=dp_accounting.ComposedDpEvent([e.event for e in ledger.entries]),
        epsilon=epsilon, delta=plan.delta, mechanism_delta=ledger.mechanism_delta,
        description={"input": plan.input, "output": plan.output,
                     "parameters": report_parameters(plan)})
    try:
        return budget_ledger.reserve(plan.budget_ledger, domain=plan.privacy_unit_domain,
                                     lifetime_epsilon=plan.lifetime_epsilon, cost=cost,
                                     secret=plan.secret, run_id=plan.run_id)
    except budget_ledger.BudgetLedgerError as error:
        raise PlanError(str(error)) from None


def describe_method(plan) -> str:
    if plan.method == PRIVATE_EVOLUTION:
        e = plan.evolution
        candidates = (f", {e.candidates} candidates each ({e.voting_population} vote)"
                      if e.candidates > 1 else "")
        return (f"private evolution, {e.rounds} round(s), population {e.population}"
                f"{candidates}, variation {plan.variation}, vote noise {e.vote_noise:.4g}")
    if plan.method == LOGIT_AGGREGATION:
        return (f"{plan.clustering.mode} + {plan.generation.aggregator}, "
                f"s={plan.generation.expected_batch_size}")
    return "no text"


def run(argv, *, say=print, wait: bool = True) -> dict:
    """Runs the job; with wait=False (a flex template launch) only submits it."""
    silence_element_logging()
    local_workers_ignore_ctrl_c()
    options = pipeline_options(argv)
    plan = with_folder_input(make_plan(options))
    earlier = refuse_earlier_outputs(plan, options.view_as(DpSynthOptions).overwrite)
    epsilon = check_budget(plan)
    for line in describe_plan(plan, epsilon):
        say(f"dpsynth: {line}")
    preflight(plan)
    runner = options.view_as(StandardOptions).runner
    mode = options.view_as(DirectOptions).direct_running_mode
    say(f"dpsynth: {describe_method(plan)}, formal epsilon {epsilon:.4g} at delta "
        f"{plan.delta:g}; runner {runner} ({mode})")
    reservation = reserve_budget(plan, epsilon)
    if reservation:
        plan = dataclasses.replace(plan, lifetime_budget=reservation.to_report())
        say(f"dpsynth: domain {reservation.domain}: epsilon {reservation.cumulative_epsilon:.4g} "
            f"of the lifetime {reservation.lifetime_epsilon:g} spent with this run "
            f"({reservation.runs_before} earlier run(s)); reserved in {plan.budget_ledger}")
    for path in earlier:
        storage.delete(path)
    started = time.time()
    ctrl_c = _CtrlCWatch()
    try:
        with ctrl_c:
            pipeline = beam.Pipeline(options=options)
            build_pipeline(pipeline, plan)
            result = pipeline.run()
            if not wait:
                say(f"dpsynth: job submitted; outputs will appear in {plan.output} when it "
                    "succeeds")
                return {"submitted": True, "run_id": plan.run_id, "output": plan.output}
            result.wait_until_finish()
    except BaseException as error:
        _mark(plan, "failed")
        if isinstance(error, KeyboardInterrupt) or ctrl_c.pressed:
            remove_staging(plan.output, plan.run_id)
            # A stage that Ctrl-C stops mid-element reaches us as Beam's RuntimeError
            # "KeyboardInterrupt [while running ...]": it is still an interruption.
            if not isinstance(error, KeyboardInterrupt):
                raise KeyboardInterrupt from error
        raise
    _mark(plan, "completed")
    elapsed = time.time() - started
    summary_path = FileSystems.join(plan.output, "run_summary.json")
    with FileSystems.open(summary_path) as handle:
        summary = json.loads(handle.read().decode("utf-8"))
    summary["wall_seconds"] = round(elapsed, 1)
    made = f"{summary['synthetic_records']} synthetic records"
    if "synthetic_embeddings" in summary:
        made += f" and {summary['synthetic_embeddings']} synthetic embeddings"
    used = summary.get("records_embedded", summary["records_accepted"])
    sampled = (f"{used} of {summary['records_accepted']} accepted records"
               if used != summary["records_accepted"] else f"{used} records")
    say(f"dpsynth: done in {elapsed:.0f} s: {made} from {sampled} "
        f"({summary['records_rejected']} rejected)")
    for note in summary.get("notes", []):
        say(f"dpsynth: note: {note}")
    say(f"dpsynth: outputs in {plan.output}; formal epsilon {epsilon:.4g} at delta "
        f"{plan.delta:g}")
    return summary


class _CtrlCWatch:
    """Notes whether Ctrl-C reached this process while the job ran, whatever exception
    Beam turns the KeyboardInterrupt into; Python's own handler still raises it."""

    def __init__(self):
        self.pressed = False
        self._previous = None

    def __enter__(self):
        # Only where Ctrl-C would interrupt anyway: a process that ignores SIGINT (or
        # leaves it to the system) keeps doing so.
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):
                self._previous = previous
                signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum, frame):
        self.pressed = True
        self._previous(signum, frame)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _mark(plan, status: str) -> None:
    """Notes how a reserved run ended; its spend stays in the ledger either way."""
    if not plan.lifetime_budget:
        return
    try:
        budget_ledger.set_status(plan.budget_ledger, plan.privacy_unit_domain, plan.run_id, status)
    except Exception as error:  # noqa: BLE001 - the job's own outcome matters more
        logging.warning("could not mark run %s %s in %s: %s", plan.run_id, status,
                        plan.budget_ledger, storage.first_line(error))


class _DropBeamNoise(logging.Filter):
    """RunInference warns on every batch that it cannot read memory usage here, each
    local worker process that it has no semi-persistent directory (it needs none), and a
    stage stopped by Ctrl-C logs the interrupt."""

    NOISE = ("memory usage cannot be fetched", "No semi_persistent_directory found")

    def filter(self, record):
        message = record.getMessage()
        if any(noise in message for noise in self.NOISE):
            return False
        # Ctrl-C: a stage that was running logs the KeyboardInterrupt with its traceback;
        # dpsynth says in one line that the run was interrupted.
        interrupted = record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt)
        return not (interrupted or message.split("\n", 1)[0].startswith("KeyboardInterrupt"))


def configure_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropBeamNoise())
    for noisy in ("apache_beam", "absl", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Retracing notices are expected: each batch shape bucket compiles once.
    for noisy in ("tensorflow", "keras"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
