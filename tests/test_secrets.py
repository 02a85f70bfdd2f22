"""No private text, and never the run secret, in logs, output streams, metrics or reports.

Canary phrases (random, unique, 40+ characters) are the private texts. The
job runs with every Python logger at DEBUG, and the test then looks for any
20-character window of any private text, and for the secret, in:
- every log record (message and traceback), from the root logger down,
  apache_beam, absl, tensorflow and keras included;
- everything written to stdout and stderr (file descriptors, so native
  libraries are caught too);
- the reasons of rejected rows (the rejected rows' `raw_excerpt` is the
  operator's copy of a few bytes of the bad row, documented as private);
- every Beam metric: namespace, name and step, and the values of string sets;
- privacy_report.json, privacy_report.md and run_summary.json.
"""

import json
import logging
import secrets

import apache_beam as beam
import pytest

from beam_pipeline.run import run
from tests.pipeline_fixtures import read_jsonl, tiny_args

WINDOW = 20
LOGGERS = ("", "apache_beam", "absl", "tensorflow", "keras", "urllib3", "offline_models",
           "transforms", "beam_pipeline")


def canary() -> str:
    return "canary " + " ".join(secrets.token_hex(4) for _ in range(6))


def windows(text: str, size: int = WINDOW):
    return {text[i:i + size] for i in range(len(text) - size + 1)}


def leaks(haystack: str, private_texts) -> list[str]:
    """Every window of a private text found in the haystack."""
    return sorted({w for text in private_texts for w in windows(text) if w in haystack})


def test_leak_helper_finds_any_20_character_window():
    text = canary()
    assert leaks(f"<{text[13:33]}>", [text]) == [text[13:33]]
    assert leaks(f"<{text[13:32]}>", [text]) == []


class _Everything(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))  # the message, args and any traceback


@pytest.fixture
def all_logs():
    handler = _Everything()
    saved = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.level, logger.propagate)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        logger.propagate = False  # each logger is captured once, by its own handler
    yield handler
    for name, (level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def metrics_of_the_run(monkeypatch):
    results = []
    original = beam.Pipeline.run

    def run_and_keep(pipeline, *args, **kwargs):
        result = original(pipeline, *args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(beam.Pipeline, "run", run_and_keep)
    return results


def test_no_private_text_or_secret_leaves_through_logs_metrics_or_reports(
        tmp_path, capfd, all_logs, metrics_of_the_run):
    good = [canary() for _ in range(40)]
    rows = [{"id": f"r{i}", "text": text, "category": ("Restaurants", "Shopping")[i % 2]}
            for i, text in enumerate(good)]
    # Rejected rows that carry private text too.
    long_text = " ".join(canary() for _ in range(4))
    rejected_texts = [canary() for _ in range(4)]
    bad_lines = [
        json.dumps({"id": "x1", "text": long_text, "category": "Shopping"}),       # too long
        json.dumps({"id": "x2", "text": rejected_texts[0], "category": "Cars"}),   # label
        json.dumps({"id": "r0", "text": rejected_texts[1], "category": "Shopping"}),  # dup id
        '{"id": "x3", "text": "' + rejected_texts[2] + '", "category": ',       # bad JSON
        json.dumps({"id": "x4", "text": rejected_texts[3], "category": [1, 2]}),  # label type
    ]
    data = tmp_path / "private.jsonl"
    data.write_text("\n".join([json.dumps(r) for r in rows] + bad_lines) + "\n")
    private = good + [long_text] + rejected_texts
    run_secret = secrets.token_hex(32)
    out = tmp_path / "out"
    summary = run(tiny_args(data, out, "--clustering", "public_centers", "--aggregator", "median",
                            "--label_column", "category", "--label_values",
                            "Restaurants,Shopping", "--id_column", "id", "--max_chars", "120",
                            "--over_length", "reject", secret=run_secret), say=print)
    assert summary["records_accepted"] == 40 and summary["records_rejected"] == 5

    rejected = read_jsonl(out, "rejected")
    [result] = metrics_of_the_run
    metrics = result.metrics().query()
    metric_text = []
    for kind, entries in metrics.items():
        for entry in entries:
            metric_text.append(f"{kind} {entry.key.step} {entry.key.metric.namespace} "
                               f"{entry.key.metric.name}")
            if kind == "string_sets":
                metric_text.extend(str(v) for v in (entry.committed or ()))
    assert any("records_rejected" in line for line in metric_text)
    captured = capfd.readouterr()
    places = {
        "logs": "\n".join(all_logs.lines),
        "stdout": captured.out,
        "stderr": captured.err,
        "reject reasons": "\n".join(r["reason"] for r in rejected),
        "metrics": "\n".join(metric_text),
        **{name: (out / name).read_text(encoding="utf-8")
           for name in ("privacy_report.json", "privacy_report.md", "run_summary.json")},
    }
    # The capture is real: the job logged at DEBUG and printed its summary line.
    assert len(all_logs.lines) > 50 and any(" DEBUG " in line for line in all_logs.lines)
    assert "dpsynth: done in" in captured.out
    for place, text in places.items():
        assert leaks(text, private) == [], place
        assert run_secret not in text and leaks(text, [run_secret]) == [], place
