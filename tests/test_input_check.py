"""Mistakes in the input's header or bytes stop a run before any budget is reserved or any
model loads: one line, exit code 2, nothing written, the ledger untouched."""

import json

import pytest

from beam_pipeline import cli
from beam_pipeline import run as run_module
from tests.pipeline_fixtures import FIXED_SECRET, write_reviews_csv
from transforms import read as rec

# Text a Windows spreadsheet writes: euro signs, curly quotes and a dash, all outside ASCII.
WINDOWS_ROWS = ["id,body,product",
                "t1,\u201cThe invoice shows \u20ac40 twice\u201d \u2013 please fix,Billing",
                "t2,Login fails after the update,Accounts",
                "t3,It\u2019s charging \u20ac5 a month,Billing"]


@pytest.fixture
def no_models_no_job(monkeypatch):
    """Any model resolution or pipeline construction fails the test: the checks must come
    first."""
    def forbidden(*_args, **_kwargs):
        raise AssertionError("a model or the job was reached before the input checks")

    monkeypatch.setattr(run_module.registry, "resolve_lm", forbidden)
    monkeypatch.setattr(run_module.registry, "resolve_encoder", forbidden)
    monkeypatch.setattr(run_module, "embedding_dimension", forbidden)
    monkeypatch.setattr(run_module.beam, "Pipeline", forbidden)


def _run(tmp_path, input_path, *extra):
    ledger = tmp_path / "ledger.json"
    args = ["run", "--input", str(input_path), "--output", str(tmp_path / "out"),
            "--run_secret", FIXED_SECRET, "--budget_ledger", str(ledger),
            "--privacy_unit_domain", "tickets", "--lifetime_epsilon", "40", *extra]
    return cli.main(args), ledger


def _refused(capsys, code, tmp_path, ledger, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not ledger.exists() and not ledger.with_suffix(".json.lock").exists()
    assert not (tmp_path / "out").exists()
    return err


def test_a_wrong_text_column_stops_before_the_ledger_and_the_models(
        tmp_path, capsys, no_models_no_job):
    data = write_reviews_csv(tmp_path / "tickets.csv", n=8)
    code, ledger = _run(tmp_path, data, "--text_column", "body")
    _refused(capsys, code, tmp_path, ledger, "--text_column body is not a column of tickets.csv",
             "id, text, category, stars")


def test_a_wrong_label_column_of_jsonl_records_is_named(tmp_path, capsys, no_models_no_job):
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "product": "Billing"}) + "\n"
                            for i in range(3)), encoding="utf-8")
    code, ledger = _run(tmp_path, data, "--label_column", "category",
                        "--label_values", "Billing")
    _refused(capsys, code, tmp_path, ledger, "--label_column category is not a column",
             "first 20 records have product, text")


def test_a_parquet_schema_without_the_text_column_is_refused(tmp_path, capsys, no_models_no_job):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "tickets.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), data)
    code, ledger = _run(tmp_path, data)
    _refused(capsys, code, tmp_path, ledger, "--text_column text is not a column",
             "schema has body")


def test_plain_text_has_no_label_column(tmp_path, capsys, no_models_no_job):
    data = tmp_path / "tickets.txt"
    data.write_text("one\ntwo\n", encoding="utf-8")
    code, ledger = _run(tmp_path, data, "--label_column", "product", "--label_values", "a")
    _refused(capsys, code, tmp_path, ledger, "a plain text file has one column")


@pytest.mark.parametrize("name", ["tickets.csv", "tickets.jsonl", "tickets.txt"])
def test_an_empty_file_stops_before_the_ledger_and_the_models(
        tmp_path, capsys, no_models_no_job, name):
    data = tmp_path / name
    data.write_bytes(b" \n")
    code, ledger = _run(tmp_path, data)
    _refused(capsys, code, tmp_path, ledger, "is empty")


def test_a_header_without_rows_is_not_refused(tmp_path):
    """Whether a run starts depends on the header only, never on how many rows follow it."""
    from beam_pipeline.input_check import check_input

    data = tmp_path / "tickets.csv"
    data.write_text("id,text\n", encoding="utf-8")
    check_input([str(data)], schema=rec.RecordSchema(), declared_format=None,
                encoding="utf-8", open_file=lambda path: open(path, "rb"))


def test_a_windows_1252_csv_stops_and_names_its_encoding(tmp_path, capsys, no_models_no_job):
    data = tmp_path / "tickets.csv"
    data.write_bytes(("\r\n".join(WINDOWS_ROWS) + "\r\n").encode("cp1252"))
    code, ledger = _run(tmp_path, data, "--text_column", "body", "--label_column", "product",
                        "--label_values", "Billing,Accounts")
    _refused(capsys, code, tmp_path, ledger, "tickets.csv is not utf-8",
             "lines 2 and 1 more of the first 4 do not decode", "pass --encoding cp1252")


def test_a_few_corrupt_rows_are_left_to_the_parser_to_reject(tmp_path):
    """One bad byte in a UTF-8 file is a corrupt row, rejected alone, not a wrong encoding."""
    from beam_pipeline.input_check import check_input

    data = tmp_path / "tickets.csv"
    rows = [b"id,text", *(f"r{i},fine text {i}".encode() for i in range(19)), b"r19,bad \xff"]
    data.write_bytes(b"\n".join(rows) + b"\n")
    check_input([str(data)], schema=rec.RecordSchema(), declared_format=None,
                encoding="utf-8", open_file=lambda path: open(path, "rb"))


def test_an_unknown_encoding_is_one_line(tmp_path, capsys, no_models_no_job):
    data = write_reviews_csv(tmp_path / "tickets.csv", n=4)
    code, ledger = _run(tmp_path, data, "--encoding", "klingon")
    _refused(capsys, code, tmp_path, ledger, "--encoding klingon is not an encoding")


def test_with_its_encoding_every_windows_row_is_read_intact():
    from transforms.read import reencode_as_utf8

    data = ("\r\n".join(WINDOWS_ROWS) + "\r\n").encode("cp1252")
    schema = rec.RecordSchema(text_column="body", label_column="product")
    items = list(rec.parse_file("t.csv", reencode_as_utf8(data, "cp1252"), schema, "csv"))
    assert all(isinstance(item, rec.Record) for item in items)
    assert [item.text for item in items][0] == WINDOWS_ROWS[1].split(",")[1]
    assert "\u20ac5" in items[2].text


def test_the_encoding_passes_the_check_and_reaches_the_reader(tmp_path, monkeypatch):
    """With --encoding cp1252 the same file passes the checks and the job's reader is told."""
    data = tmp_path / "tickets.csv"
    data.write_bytes(("\r\n".join(WINDOWS_ROWS) + "\r\n").encode("cp1252"))
    from beam_pipeline.plan import make_plan

    plan = make_plan(run_module.pipeline_options([
        "--input", str(data), "--output", str(tmp_path / "out"), "--text_column", "body",
        "--encoding", "cp1252", "--lm", "tiny-llama3", "--encoder", "tiny-bert"]))
    assert plan.encoding == "cp1252"
    run_module.preflight(plan)
