"""Small things a first run trips over: folders as --input, what a rejection keeps, model
folders, help texts and the note on an empty input."""

import re

import pytest

from beam_pipeline import cli
from beam_pipeline.run import run
from tests.pipeline_fixtures import read_jsonl, tiny_args, write_reviews_csv
from tests.test_bad_input import JSONL_CASES
from tests.test_cloud_storage import sharded_input  # noqa: F401 - a fixture
from transforms import read as rec
from transforms.report import run_notes


@pytest.mark.parametrize("slash", ["", "/"], ids=["bare", "trailing-slash"])
def test_a_folder_as_input_is_read_as_the_files_inside_it(tmp_path, slash):
    folder = tmp_path / "exports"
    folder.mkdir()
    write_reviews_csv(folder / "a.csv", n=6, seed=1)
    write_reviews_csv(folder / "b.csv", n=5, seed=2)
    (folder / "nested").mkdir()   # a folder inside is not a file to read
    summary = run(tiny_args(f"{folder}{slash}", tmp_path / "out", "--clustering", "uniform"),
                  say=lambda _: None)
    assert summary["records_accepted"] == 11 and summary["records_rejected"] == 0


def test_a_folder_without_files_is_refused_saying_so(tmp_path, capsys):
    (tmp_path / "exports" / "2026-01-01").mkdir(parents=True)
    code = cli.main(["run", *tiny_args(f"{tmp_path / 'exports'}/", tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is a folder with no files directly inside it" in err


def _rejections(data: bytes, file_format: str, labels=None, **schema):
    schema = rec.RecordSchema(**{"label_column": "category", "id_column": "id", **schema})
    items = [rec.within_label_values(item, labels)
             for item in rec.parse_file(f"in.{file_format}", data, schema, file_format)]
    return ([item for item in items if isinstance(item, rec.Rejected)],
            [item for item in items if isinstance(item, rec.Record)])


def test_every_rejection_keeps_a_raw_excerpt():
    data = b"\n".join(line for line, _ in JSONL_CASES) + b"\n"
    rejected, records = _rejections(data, "jsonl", labels=frozenset({"Restaurants", "Shopping",
                                                                     "5"}),
                                    max_chars=60, over_length="reject")
    by_id = {}
    for record in records:
        by_id.setdefault(record.record_id, []).append(record)
    rejected += [r for rows in by_id.values() for r in rec.first_of_same_id(rows)[1]]
    rejected += list(rec.parse_file("in.parquet", b"PAR1 \xff not parquet",
                                    rec.RecordSchema(), "parquet"))
    reasons = {r.reason for r in rejected}
    for expected in ("empty text", "invalid UTF-8 in text", "invalid UTF-8 in label",
                     "label not in --label_values", rec.DUPLICATE_ID_REASON,
                     "text longer than max_chars=60", "unreadable Parquet file (ArrowInvalid)"):
        assert expected in reasons, reasons
    assert [r.reason for r in rejected if not r.raw_excerpt] == []
    for r in rejected:
        r.raw_excerpt.encode("utf-8")   # writable: no lone surrogate left
    undecodable = next(r for r in rejected if r.reason == "invalid UTF-8 in text")
    assert "bad \\xff\\xfe byte" in undecodable.raw_excerpt


def test_json_reasons_are_whole_phrases():
    rejected, _ = _rejections(b'{"text": "never closed\n{"text": "tab\there"}\n', "jsonl",
                              label_column=None, id_column=None)
    assert [r.reason for r in rejected] == ["malformed JSON: Unterminated string",
                                            "malformed JSON: Invalid control character"]


@pytest.mark.parametrize("reference, message", [
    ("./no-such-model", "the model folder './no-such-model' does not exist"),
    ("{folder}", "is not a keras-hub preset: it has no config.json or metadata.json"),
    ("{file}", "is a file: name a keras-hub preset folder"),
], ids=["missing-folder", "folder-not-a-preset", "a-file"])
def test_lm_folder_mistakes_say_which(tmp_path, capsys, reference, message):
    (tmp_path / "weights.bin").write_bytes(b"")
    reviews = write_reviews_csv(tmp_path / "reviews.csv", n=4)
    reference = reference.format(folder=tmp_path, file=tmp_path / "weights.bin")
    code = cli.main(["run", *tiny_args(reviews, tmp_path / "out"), "--lm", reference])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err


@pytest.mark.parametrize("command", ["run", "audit"])
def test_help_texts_state_a_default_once(capsys, command):
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    entries = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    repeated = [e.split()[0] for e in entries if len(re.findall("default", e, re.I)) > 1]
    assert repeated == []
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 2000)" in " ".join(text.split())   # --max_chars keeps its default


def test_the_empty_input_note_does_not_point_at_an_empty_rejected_file():
    notes = run_notes({"records_accepted": 0, "records_rejected": 0}, batch_size=8)
    assert notes[0] == "No record was accepted: the input holds no rows."
    notes = run_notes({"records_accepted": 0, "records_rejected": 3}, batch_size=8)
    assert "rejected-*.jsonl" in notes[0]


def test_an_input_without_rows_finishes_with_the_right_note(tmp_path):
    # An empty file is refused before the run (tests/test_input_check.py); a CSV header
    # without rows is not empty, and runs.
    data = tmp_path / "header_only.csv"
    data.write_bytes(b"id,text\n")
    lines = []
    summary = run(tiny_args(data, tmp_path / "out", "--clustering", "uniform"),
                  say=lines.append)
    assert summary["records_accepted"] == summary["records_rejected"] == 0
    assert read_jsonl(tmp_path / "out", "rejected") == []
    assert not any("rejected-" in line for line in lines), lines
    assert any("the input holds no rows" in line for line in lines), lines


@pytest.mark.parametrize("slash", ["", "/"], ids=["bare", "trailing-slash"])
def test_gs_folder_input_is_its_files_or_refused(sharded_input, tmp_path, capsys, slash):
    folder = f"gs://{sharded_input}/exports/2026-11-20{slash}"
    code = cli.main(["run", *tiny_args(folder, tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    # The folder's files are matched, and the marker file among them has no format.
    assert "cannot tell the format of" in err and "2026-11-20/_SUCCESS" in err, err


def test_a_gs_output_with_outputs_is_refused(sharded_input, tmp_path, capsys):
    from tests.test_cloud_storage import upload

    (tmp_path / "summary.json").write_text("{}")
    upload(sharded_input, "out/run_summary.json", tmp_path / "summary.json")
    code = cli.main(["run", *tiny_args(f"gs://{sharded_input}/exports/2026-11-20/part-*.csv",
                                       f"gs://{sharded_input}/out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already holds the outputs of a run (run_summary.json)" in err, err
