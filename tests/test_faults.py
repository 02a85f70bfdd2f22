"""A failed generation attempt is run again and releases the same bytes, counted once."""

import json
import math

from beam_pipeline.run import run
from tests.pipeline_fixtures import synthetic_bytes, tiny_args, write_reviews_csv
from transforms.generate import FAULT_ENV

MULTI_PROCESSING = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
BATCHES_PER_CALL = 2


def test_failed_first_attempts_are_retried_without_changing_the_release(tmp_path, monkeypatch):
    """Every generation call fails once, after the model ran, on two worker processes.

    Why the retry happens: Beam 2.77's FnApiRunner, which runs the job here
    (in worker subprocesses with --direct_running_mode multi_processing, as
    the DirectRunner does for batch jobs), never retries a bundle: a bundle
    whose worker reports an error becomes a RuntimeError that fails the job
    (fn_runner.py, `BundleManager.process_bundle`: `if result.error: raise
    RuntimeError(...)`; bundle retries are apache/beam issue #18640, open).
    Only the legacy BundleBasedDirectRunner retries (4 attempts), and
    Dataflow and Flink retry bundles themselves. So generation retries a
    failed model call itself (`CausalLmHandler`, GENERATION_CALL_ATTEMPTS),
    each attempt on fresh copies of the requests.

    The fault (DPSYNTH_FAIL_FIRST_ATTEMPT) raises after a call's model run
    has advanced every chooser, which is the worst moment: an attempt that
    reused those choosers would count tokens twice, and one that drew fresh
    randomness would release other tokens. The keyed randomness makes the
    second attempt release exactly the first attempt's tokens.
    """
    reviews = write_reviews_csv(tmp_path / "reviews.csv", n=48)
    args = ["--clustering", "uniform", "--aggregator", "median", "--max_new_tokens", "5",
            "--generation_batches_per_call", str(BATCHES_PER_CALL), *MULTI_PROCESSING]
    clean = tmp_path / "clean"
    clean_summary = run(tiny_args(reviews, clean, *args, secret="5eed" * 8), say=lambda _: None)

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(FAULT_ENV, str(markers))
    faulty = tmp_path / "faulty"
    faulty_summary = run(tiny_args(reviews, faulty, *args, secret="5eed" * 8),
                         say=lambda _: None)

    planned = clean_summary["planned_batches"]
    assert planned >= 4
    # The fault fired once in every model call (the marker is written just before raising),
    # and the job still finished.
    assert len(list(markers.iterdir())) == math.ceil(planned / BATCHES_PER_CALL)
    assert synthetic_bytes(faulty) == synthetic_bytes(clean) != b""
    for name in ("privacy_report.json", "privacy_report.md"):
        assert (faulty / name).read_bytes() == (clean / name).read_bytes()
    # Each batch is counted once: one synthetic record and one ledger entry per planned batch,
    # and the same tokens as the fault-free run.
    report = json.loads((faulty / "privacy_report.json").read_text())
    assert report["tokens"]["generation"]["batches"] == planned
    assert faulty_summary["synthetic_records"] == planned == faulty_summary["planned_batches"]
    for key in ("tokens", "private_tokens", "public_tokens"):
        assert faulty_summary[key] == clean_summary[key] == report["tokens"]["generation"][key]
