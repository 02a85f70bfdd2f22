"""Parsing and validating input records, Beam-free.

A record the pipeline cannot use is never dropped silently: parsing yields a
`Rejected` with a reason, and the pipeline writes and counts it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any, Iterator

FORMATS = ("jsonl", "csv", "parquet", "text")
_EXTENSIONS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
    ".txt": "text", ".text": "text",
}
# Rejected rows keep only this much of the raw input, so a rejection file
# points at the problem without copying whole private records around.
RAW_EXCERPT_CHARS = 80


@dataclasses.dataclass(frozen=True)
class Record:
    record_id: str
    text: str
    label: str | None = None
    unit: str | None = None
    source: str = ""     # "<file>:<row>", for ordering and for error messages


@dataclasses.dataclass(frozen=True)
class Rejected:
    source: str          # "<file>:<row>"
    reason: str
    raw_excerpt: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


@dataclasses.dataclass(frozen=True)
class RecordSchema:
    text_column: str = "text"
    label_column: str | None = None
    id_column: str | None = None
    unit_column: str | None = None
    max_chars: int = 4000
    over_length: str = "truncate"     # or "reject"

    def __post_init__(self):
        if self.over_length not in ("truncate", "reject"):
            raise ValueError("over_length must be 'truncate' or 'reject'")
        if self.max_chars < 1:
            raise ValueError("max_chars must be >= 1")


def format_of(path: str, declared: str | None = None) -> str:
    if declared:
        if declared not in FORMATS:
            raise ValueError(f"unknown input format '{declared}': use one of {', '.join(FORMATS)}")
        return declared
    lower = path.lower()
    for extension, name in _EXTENSIONS.items():
        if lower.endswith(extension):
            return name
    raise ValueError(
        f"cannot tell the format of '{path}' from its name: pass --input_format "
        f"({', '.join(FORMATS)})")


def parse_file(path: str, data: bytes, schema: RecordSchema, file_format: str
               ) -> Iterator[Record | Rejected]:
    """Every row of one input file, as a Record or a Rejected."""
    name = path.rsplit("/", 1)[-1]
    for row_number, row in iter_rows(data, file_format, schema.text_column):
        source = f"{name}:{row_number}"
        if isinstance(row, Rejected):
            yield dataclasses.replace(row, source=source)
        else:
            yield to_record(row, source, schema)


def iter_rows(data: bytes, file_format: str, text_column: str = "text"
              ) -> Iterator[tuple[int, dict | Rejected]]:
    """(row number, raw row) for every row of one file; a row that cannot be parsed is a
    Rejected without a source. Plain text gives one row per line, under `text_column`."""
    if file_format == "parquet":
        return _parquet_rows(data)
    if file_format == "csv":
        return _csv_rows(data)
    if file_format == "jsonl":
        return _jsonl_rows(data)
    return _text_rows(data, text_column)


def to_record(row: dict, source: str, schema: RecordSchema) -> Record | Rejected:
    text = row.get(schema.text_column)
    if schema.text_column not in row:
        return Rejected(source, f"missing text column '{schema.text_column}'", _excerpt(row))
    if not isinstance(text, str):
        return Rejected(source, f"text column '{schema.text_column}' is not a string "
                                f"({type(text).__name__})", _excerpt(row))
    if _has_invalid_utf8(text):
        return Rejected(source, "invalid UTF-8 in text")
    text = text.strip()
    if not text:
        return Rejected(source, "empty text")
    if len(text) > schema.max_chars:
        if schema.over_length == "reject":
            return Rejected(source, f"text longer than max_chars={schema.max_chars}")
        text = text[:schema.max_chars]
    label = None
    if schema.label_column:
        label = row.get(schema.label_column)
        if label is None or (isinstance(label, str) and not label.strip()):
            return Rejected(source, f"missing label column '{schema.label_column}'", _excerpt(row))
        if isinstance(label, (dict, list, float)) and not _is_whole(label):
            return Rejected(source, f"label is not a category ({type(label).__name__})", _excerpt(row))
        label = _category(label)
        if _has_invalid_utf8(label):
            return Rejected(source, "invalid UTF-8 in label")
    record_id = source
    if schema.id_column:
        value = row.get(schema.id_column)
        if value is None or str(value).strip() == "":
            return Rejected(source, f"missing id column '{schema.id_column}'", _excerpt(row))
        record_id = str(value)
    unit = None
    if schema.unit_column:
        value = row.get(schema.unit_column)
        if value is None or str(value).strip() == "":
            return Rejected(source, f"missing privacy unit column '{schema.unit_column}'",
                            _excerpt(row))
        unit = str(value)
    return Record(record_id=record_id, text=text, label=label, unit=unit, source=source)


def _is_whole(value) -> bool:
    return isinstance(value, float) and value.is_integer()


def _category(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _has_invalid_utf8(text: str) -> bool:
    # Bytes that were not UTF-8 are decoded as lone surrogates (surrogateescape).
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _excerpt(row) -> str:
    text = json.dumps(row, ensure_ascii=False, default=str) if not isinstance(row, str) else row
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text[:RAW_EXCERPT_CHARS]


def _jsonl_rows(data: bytes):
    for number, line in enumerate(_decode(data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, Rejected("", f"malformed JSON: {error.msg}", _excerpt(line))
            continue
        if not isinstance(row, dict):
            yield number, Rejected("", "a JSON line must be an object", _excerpt(line))
            continue
        yield number, row


def _csv_rows(data: bytes):
    text = _decode(data)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        yield 1, Rejected("", f"malformed CSV header: {error}")
        return
    row_number = 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            row_number += 1
            yield row_number, Rejected("", f"malformed CSV row: {error}")
            continue
        row_number += 1
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            yield row_number, Rejected(
                "", f"CSV row has {len(values)} fields, the header has {len(header)}",
                _excerpt(",".join(values)))
            continue
        yield row_number, dict(zip(header, values))


def _parquet_rows(data: bytes):
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


def _text_rows(data: bytes, text_column: str):
    for number, line in enumerate(_decode(data).splitlines(), start=1):
        if line.strip():
            yield number, {text_column: line}


def as_json_dict(record: Record) -> dict[str, Any]:
    return dataclasses.asdict(record)
