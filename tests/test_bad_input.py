"""Bad input through real runs: every row is accepted, or rejected with a reason and counted.

Each run goes through `run(...)` on the tiny models and the FnApiRunner; the
assertions read the run's own outputs (rejected-*.jsonl, run_summary.json,
privacy_report.json). CLI mistakes go through `cli.main` and must be one line
on stderr with exit code 2.
"""

import collections
import json

import pytest

from beam_pipeline import cli
from beam_pipeline.run import run
from tests.pipeline_fixtures import read_jsonl, tiny_args, write_reviews_csv
from transforms.read import DUPLICATE_ID_REASON
from transforms.report import NO_BATCH_NOTE

LABELS = "Restaurants,Shopping,5"
MAX_CHARS = 60


def _line(**row):
    return json.dumps(row).encode()


def _good(i, **extra):
    return _line(id=f"g{i}", text=f"the noodles were great, visit number {i}",
                 category="Restaurants" if i % 2 else "Shopping", **extra)


# (raw JSONL line, expected reason or None when the row is accepted)
JSONL_CASES = [
    *[(_good(i), None) for i in range(12)],
    (_good(12, stars=4, note="extra columns are ignored"), None),
    (_line(id="e1", text="", category="Shopping"), "empty text"),
    (_line(id="e2", text="  \t  ", category="Shopping"), "empty text"),
    (b'{"id": "u1", "text": "bad \xff\xfe byte", "category": "Shopping"}', "invalid UTF-8 in text"),
    (_line(id="u2", text="lone \ud800 surrogate", category="Shopping"), "invalid UTF-8 in text"),
    (b'{"id": "u3", "text": "bad label", "category": "Sho\xffpping"}', "invalid UTF-8 in label"),
    (b'{"id": "j1", "text": "no closing brace"', "malformed JSON"),
    (b'["a", "list", "not", "an", "object"]', "a JSON line must be an object"),
    (_line(id="m1", body="no text column", category="Shopping"), "missing text column 'text'"),
    (_line(id="m2", text="no label at all"), "missing label column 'category'"),
    (_line(id="m3", text="null label", category=None), "missing label column 'category'"),
    (_line(text="no id", category="Shopping"), "missing id column 'id'"),
    (_line(id=["x"], text="list id", category="Shopping"), "id column 'id' is not a string"),
    (_line(id="t1", text=42, category="Shopping"), "text column 'text' is not a string (int)"),
    # Labels: strings and whole numbers are categories (5 and 5.0 are "5", as in a CSV).
    (_line(id="l1", text="a numeric label", category=5), None),
    (_line(id="l2", text="a whole float label", category=5.0), None),
    (_line(id="l3", text="a fractional label", category=4.5), "label is not a category (float)"),
    (_line(id="l4", text="a boolean label", category=True), "label is not a category (bool)"),
    (_line(id="l5", text="a list label", category=["Shopping"]), "label is not a category (list)"),
    (_line(id="l6", text="an object label", category={"a": 1}), "label is not a category (dict)"),
    (_line(id="l7", text="an unknown label", category="Cars"), "label not in --label_values"),
    # Over --max_chars: truncated by default, so accepted (and counted as truncated).
    (_line(id="long", text="long " * 40, category="Shopping"), None),
    # Duplicate ids: the first row in file order is kept, later ones are rejected.
    (_line(id="g3", text="same id as an earlier row", category="Shopping"), DUPLICATE_ID_REASON),
    (_line(id="g3", text="and once more", category="Restaurants"), DUPLICATE_ID_REASON),
]


def _assert_routed(summary, rejected, expected_by_source, accepted):
    by_source = {r["source"]: r["reason"] for r in rejected}
    assert len(by_source) == len(rejected), "one rejection per row"
    assert set(by_source) == set(expected_by_source)
    for source, expected in expected_by_source.items():
        assert expected in by_source[source], (source, by_source[source])
    assert summary["records_accepted"] == accepted
    assert summary["records_rejected"] == len(rejected) == len(expected_by_source)
    assert summary["records_rejected_by_reason"] == dict(
        collections.Counter(by_source.values()))


def test_jsonl_rows_are_accepted_or_rejected_with_a_reason(tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_bytes(b"\n".join(line for line, _ in JSONL_CASES) + b"\n")
    out = tmp_path / "out"
    summary = run(tiny_args(data, out, "--clustering", "uniform", "--label_column", "category",
                            "--label_values", LABELS, "--id_column", "id",
                            "--max_chars", str(MAX_CHARS)), say=lambda _: None)
    expected = {f"mixed.jsonl:{n}": reason
                for n, (_, reason) in enumerate(JSONL_CASES, start=1) if reason}
    accepted = sum(reason is None for _, reason in JSONL_CASES)
    _assert_routed(summary, read_jsonl(out, "rejected"), expected, accepted)
    # Of the three rows with id "g3", the first (row 4) is kept and the two later ones rejected.
    assert [s for s, reason in expected.items() if reason == DUPLICATE_ID_REASON] == [
        f"mixed.jsonl:{len(JSONL_CASES) - 1}", f"mixed.jsonl:{len(JSONL_CASES)}"]
    assert "mixed.jsonl:4" not in expected
    assert summary["records_truncated"] == 1
    assert summary["records_embedded"] == accepted
    assert {r["label"] for r in read_jsonl(out, "synthetic")} <= {"Restaurants", "Shopping", "5"}


def _csv(path, rows, bom=False):
    text = "\n".join(rows) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def test_csv_rows_files_and_the_reject_policy(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = [f"c{i},a review about the shoes on sale {i},Shopping" for i in range(10)]
    # A byte-order mark before the header is dropped, not glued to the first column name.
    _csv(folder / "a.csv", ["id,text,category", *good[:5],
                            "r1,too,many,fields,Shopping",             # row 7
                            "r2,too few",                              # row 8
                            'r3,"a stray "quote in the middle,Shopping',  # row 9
                            "r4,,Shopping",                            # row 10
                            "r5," + "far too long " * 10 + ",Shopping"], bom=True)  # row 11
    _csv(folder / "b.csv", ["id,text,category", *good[5:],
                            "c0,a second file repeating an id,Shopping"])  # row 7
    (folder / "c.parquet").write_bytes(b"PAR1 this is not a parquet file")
    out = tmp_path / "out"
    summary = run(tiny_args(folder / "*", out, "--clustering", "uniform", "--label_column",
                            "category", "--label_values", LABELS, "--id_column", "id",
                            "--max_chars", str(MAX_CHARS),
                            "--over_length", "reject"), say=lambda _: None)
    expected = {
        "a.csv:7": "CSV row has 5 fields, the header has 3",
        "a.csv:8": "CSV row has 2 fields, the header has 3",
        "a.csv:9": "malformed CSV row",
        "a.csv:10": "empty text",
        "a.csv:11": f"text longer than max_chars={MAX_CHARS}",
        "b.csv:7": DUPLICATE_ID_REASON,
        "c.parquet": "unreadable Parquet file",
    }
    _assert_routed(summary, read_jsonl(out, "rejected"), expected, accepted=10)
    assert summary["records_truncated"] == 0


def test_fewer_records_than_one_batch_finishes_and_says_so(tmp_path):
    data = tmp_path / "three.jsonl"
    data.write_bytes(b"\n".join(_good(i) for i in range(3)) + b"\n")
    out = tmp_path / "out"
    lines = []
    # A tiny histogram noise makes the noisy count 3 +- 0.01: floor(3 / 4) = 0 batches.
    summary = run(tiny_args(data, out, "--clustering", "uniform", "--histogram_noise", "0.01"),
                  say=lines.append)
    assert summary["records_accepted"] == 3 and summary["planned_batches"] == 0
    assert summary["synthetic_records"] == 0 and read_jsonl(out, "synthetic") == []
    assert any("fewer accepted records (3) than one batch (--batch_size 4)" in note
               for note in summary["notes"])
    report = json.loads((out / "privacy_report.json").read_text())
    assert NO_BATCH_NOTE in report["notes"]
    assert report["tokens"]["generation"]["batches"] == 0
    assert "No batch was planned" in (out / "privacy_report.md").read_text()
    assert any("note: No batch was planned" in line for line in lines)


def test_an_input_with_no_usable_record_finishes_and_says_so(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_bytes(b'{"text": ""}\n{"text": "   "}\n{broken\n')
    out = tmp_path / "out"
    summary = run(tiny_args(data, out, "--clustering", "uniform"), say=lambda _: None)
    assert summary["records_accepted"] == 0 and summary["records_rejected"] == 3
    assert summary["synthetic_records"] == summary["planned_batches"]
    assert "No record was accepted: see rejected-*.jsonl for the reasons." in summary["notes"]


@pytest.mark.parametrize("mistake, message", [
    ({"input": "missing.csv"}, "matches no file"),
    ({"input": "notes.xlsx"}, "cannot tell the format of"),
    ({"output": "a-file/out"}, "cannot write to --output"),
    (["--target_epsilon", "0"], "--target_epsilon must be > 0"),
    (["--target_epsilon", "-1.5"], "--target_epsilon must be > 0"),
    (["--batch_size", "1"], "--batch_size must be at least 2"),
    (["--batch_size", "two"], "argument --batch_size: invalid int value: 'two'"),
    (["--lm", "gpt-17"], "unknown model 'gpt-17'"),
    (["--encoder", "bert-9000"], "unknown model 'bert-9000'"),
    (["--prompt_template", "Review: nothing to fill"], "no {text} placeholder"),
    (["--label_column", "category"], "--label_column needs --label_values"),
], ids=["missing-input", "unknown-format", "unwritable-output", "epsilon-0", "epsilon-negative",
        "batch-size-1", "batch-size-not-a-number", "unknown-lm", "unknown-encoder",
        "template-without-text", "label-column-without-public-values"])
def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, capsys, mistake, message):
    reviews = write_reviews_csv(tmp_path / "reviews.csv", n=8)
    (tmp_path / "notes.xlsx").write_bytes(b"not a spreadsheet")
    (tmp_path / "a-file").write_text("a file where a directory should be")
    paths = {"input": reviews, "output": tmp_path / "out"}
    extra = []
    if isinstance(mistake, dict):
        paths.update({k: tmp_path / v for k, v in mistake.items()})
    else:
        extra = mistake
    code = cli.main(["run", *tiny_args(paths["input"], paths["output"]), *extra])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dpsynth: error: ") and message in err
    assert "Traceback" not in captured.err + captured.out
