import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.read import Record, RecordSchema, Rejected, format_of, parse_file


def _parse(data: bytes, file_format: str, **schema):
    return list(parse_file("dir/input." + file_format, data, RecordSchema(**schema), file_format))


def test_csv_with_quoted_newlines_and_ragged_rows():
    data = (b'id,text,category\n'
            b'1,"first line\nsecond line",A\n'
            b'2,too,many,fields\n'
            b'3,plain,B\n')
    items = _parse(data, "csv", label_column="category", id_column="id")
    assert items[0] == Record("1", "first line\nsecond line", "A", None, "input.csv:2")
    assert isinstance(items[1], Rejected) and "4 fields" in items[1].reason
    assert items[2].record_id == "3" and items[2].label == "B"


def test_parquet_rows_and_label_types():
    table = pa.table({"text": ["a review", "another", "third"], "stars": [5, 4.0, 3.5]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    items = _parse(buffer.getvalue(), "parquet", label_column="stars")
    assert [i.label for i in items[:2]] == ["5", "4"]
    assert isinstance(items[2], Rejected) and "not a category" in items[2].reason


def test_plain_text_one_record_per_nonempty_line():
    items = _parse(b"one\n\n  \ntwo\n", "text")
    assert [(i.text, i.source) for i in items] == [("one", "input.text:1"), ("two", "input.text:4")]


def test_over_length_truncates_by_default_and_rejects_on_request():
    data = json.dumps({"text": "x" * 50}).encode()
    [truncated] = _parse(data, "jsonl", max_chars=10)
    assert truncated.text == "x" * 10
    [rejected] = _parse(data, "jsonl", max_chars=10, over_length="reject")
    assert isinstance(rejected, Rejected) and "max_chars=10" in rejected.reason


def test_missing_columns_and_ids_are_rejected_with_reasons():
    rows = [{"text": "ok"}, {"text": "no id"}, {"text": "no unit", "id": "7"}]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    reasons = [i.reason for i in _parse(data, "jsonl", id_column="id", unit_column="user")]
    assert reasons == ["missing id column 'id'"] * 2 + ["missing privacy unit column 'user'"]


def test_rejections_carry_only_a_short_excerpt():
    long_row = json.dumps({"body": "secret " * 100})
    [rejected] = _parse(long_row.encode(), "jsonl")
    assert len(rejected.raw_excerpt) <= 80


def test_format_comes_from_the_extension_or_is_a_clear_error():
    assert format_of("gs://b/x/part-0001.parquet") == "parquet"
    assert format_of("data.NDJSON") == "jsonl"
    with pytest.raises(ValueError, match="--input_format"):
        format_of("data.xlsx")
