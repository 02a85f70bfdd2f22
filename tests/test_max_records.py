"""--max_records: a keyed sample of privacy units at a rate set by a noisy count.

Keeping the first N rows let one added row push another out (neighbours then
differ by two records); the sample keeps each unit on its own. The neighbour
property itself is fuzzed in tests/test_neighbour_fuzz.py.
"""

import numpy as np
import pytest

from beam_pipeline.plan import make_plan, plan_ledger
from beam_pipeline.run import pipeline_options, run
from tests.pipeline_fixtures import read_jsonl, tiny_args, write_reviews_csv
from mechanisms import record_cap
from transforms.record_cap import unit_key
from transforms.read import Record

SECRET = "ca9" * 11


def _records(n):
    return [Record(f"r{i}", f"review number {i}", "A") for i in range(n)]


def test_whether_a_unit_is_kept_depends_on_its_own_content_and_the_rate_only():
    records = _records(300)
    kept = {r.text for r in records
            if record_cap.is_kept(SECRET, unit_key(r, False), 0.4)}
    # Adding or removing other records changes nothing for these, in any order.
    others = _records(600)[300:]
    kept_with_others = {r.text for r in records[::-1] + others
                        if record_cap.is_kept(SECRET, unit_key(r, False), 0.4)}
    assert kept == kept_with_others & {r.text for r in records}
    # The row number is not part of the key: the same text at another position is the same.
    moved = Record("r0", "review number 0", "A", source="elsewhere.csv:99")
    assert unit_key(moved, False) == unit_key(records[0], False)
    # With a unit column the unit's name is the key, so all its records share one fate.
    assert unit_key(Record("a", "x", unit="u7"), True) == unit_key(
        Record("b", "y", unit="u7"), True)


def test_the_sample_keeps_about_max_records_units():
    n, cap = 1000, 200
    records = _records(n)
    kept_counts = []
    for seed in range(20):
        secret = f"{seed:032x}"
        rate = record_cap.keep_rate(cap, record_cap.noisy_unit_count(n, 10.0, secret))
        kept_counts.append(sum(record_cap.is_kept(secret, unit_key(r, False), rate)
                               for r in records))
    mean, spread = float(np.mean(kept_counts)), float(np.std(kept_counts))
    print(f"kept {mean:.1f} +- {spread:.1f} of {n} for --max_records {cap} over 20 secrets")
    # Binomial(1000, 0.2) has sd 12.6; the mean of 20 runs is within 4 sd of 200.
    assert abs(mean - cap) < 4 * 12.6 / np.sqrt(20) + 3
    assert 5 < spread < 25


def test_no_cap_below_the_noisy_count():
    assert record_cap.keep_rate(100, 40.0) == 1.0
    assert record_cap.keep_rate(100, -3.0) == 1.0
    assert record_cap.keep_rate(100, 400.0) == pytest.approx(0.25)


def test_the_noisy_count_is_charged_in_the_ledger(tmp_path):
    data = write_reviews_csv(tmp_path / "r.csv", n=8)
    base = tiny_args(data, tmp_path / "o", "--clustering", "uniform", "--aggregator", "mean")
    plain = plan_ledger(make_plan(pipeline_options(base)))
    capped = plan_ledger(make_plan(pipeline_options(base + ["--max_records", "5",
                                                            "--max_records_noise", "3"])))
    entries = [e for e in capped.entries if e.stage == record_cap.STAGE]
    assert [e.parameters["noise_stddev"] for e in entries] == [3.0]
    assert not [e for e in plain.entries if e.stage == record_cap.STAGE]
    assert capped.epsilon() > plain.epsilon()


def test_the_job_counts_what_the_cap_left_out(tmp_path):
    data = write_reviews_csv(tmp_path / "r.csv", n=48)
    out = tmp_path / "out"
    summary = run(tiny_args(data, out, "--clustering", "uniform", "--aggregator", "mean",
                            "--max_records", "20", "--max_records_noise", "1"),
                  say=lambda _: None)
    assert summary["records_accepted"] == 48
    kept = summary["records_embedded"]
    assert summary["records_over_max_records"] == 48 - kept
    assert 8 <= kept <= 32, kept         # about 20: Binomial(48, ~0.42)
    report = (out / "privacy_report.json").read_text()
    assert record_cap.STAGE in report
    assert read_jsonl(out, "synthetic")
