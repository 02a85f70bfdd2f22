"""Parsing and validating input records, Beam-free.

A record the pipeline cannot use is never dropped silently: parsing yields a
`Rejected` with a reason, and the pipeline writes and counts it.
"""

from __future__ import annotations

import codecs
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
# Python's csv module rejects fields over 128 KiB; a long text should meet
# --max_chars and --over_length instead.
CSV_FIELD_LIMIT = 1 << 26


@dataclasses.dataclass(frozen=True)
class Record:
    record_id: str
    text: str = dataclasses.field(repr=False)   # private: never in a repr, log or error
    label: str | None = None
    unit: str | None = None
    source: str = ""     # "<file>:<row>", for ordering and for error messages
    truncated: bool = False   # the text was cut to max_chars


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A row the pipeline cannot use.

    `reason` names the problem and never quotes the row: reasons go to logs,
    counts and the run summary. Only `raw_excerpt` holds a little of the row,
    for the operator's rejected-rows file.
    """

    source: str          # "<file>:<row>", or "<file>" for a file that cannot be read
    reason: str
    raw_excerpt: str = dataclasses.field(default="", repr=False)

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
    for _, item in parse_rows(path, data, schema, file_format):
        yield item


def parse_rows(path: str, data: bytes, schema: RecordSchema, file_format: str
               ) -> Iterator[tuple[dict | None, Record | Rejected]]:
    """Every row of one input file: (the raw row, None when it could not be read; the row
    as a Record or a Rejected)."""
    name = path.rsplit("/", 1)[-1]
    for row_number, row in iter_rows(data, file_format, schema.text_column):
        source = f"{name}:{row_number}" if row_number else name
        if isinstance(row, Rejected):
            yield None, dataclasses.replace(row, source=source)
        else:
            yield row, to_record(row, source, schema)


def within_label_values(item: Record | Rejected, labels) -> Record | Rejected:
    """`item`, or its rejection when it is a Record whose label is not in `labels` (the
    public --label_values; None accepts every label)."""
    if isinstance(item, Record) and labels is not None and item.label not in labels:
        return Rejected(item.source, "label not in --label_values")
    return item


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
    """One row as a Record, or a Rejected saying what is wrong with it.

    Labels, ids and privacy units may be strings or whole numbers (JSON 5 and
    5.0 both become "5", as the CSV text "5" does); booleans, fractions, lists,
    objects and null are rejected, never turned into a category by str().
    """
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
    truncated = False
    if len(text) > schema.max_chars:
        if schema.over_length == "reject":
            return Rejected(source, f"text longer than max_chars={schema.max_chars}")
        text, truncated = text[:schema.max_chars], True
    label = None
    if schema.label_column:
        label = row.get(schema.label_column)
        if label is None or (isinstance(label, str) and not label.strip()):
            return Rejected(source, f"missing label column '{schema.label_column}'", _excerpt(row))
        if not _is_category(label):
            return Rejected(source, f"label is not a category ({type(label).__name__}): use a "
                                    "string or a whole number", _excerpt(row))
        label = _category(label)
        if _has_invalid_utf8(label):
            return Rejected(source, "invalid UTF-8 in label")
    record_id = source
    if schema.id_column:
        record_id = _key_value(row, schema.id_column, "id")
        if isinstance(record_id, Rejected):
            return dataclasses.replace(record_id, source=source, raw_excerpt=_excerpt(row))
    unit = None
    if schema.unit_column:
        unit = _key_value(row, schema.unit_column, "privacy unit")
        if isinstance(unit, Rejected):
            return dataclasses.replace(unit, source=source, raw_excerpt=_excerpt(row))
    return Record(record_id=record_id, text=text, label=label, unit=unit, source=source,
                  truncated=truncated)


def _key_value(row: dict, column: str, kind: str) -> str | Rejected:
    """An id or privacy-unit value: a non-empty string or whole number."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return Rejected("", f"missing {kind} column '{column}'")
    if not _is_category(value):
        return Rejected("", f"{kind} column '{column}' is not a string or whole number "
                            f"({type(value).__name__})")
    value = _category(value)
    if _has_invalid_utf8(value):
        return Rejected("", f"invalid UTF-8 in {kind} column '{column}'")
    return value


def _is_category(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (str, int)) or (isinstance(value, float) and value.is_integer())


def _category(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _has_invalid_utf8(text: str) -> bool:
    # Bytes that were not UTF-8 are decoded as lone surrogates (surrogateescape);
    # a JSON escape such as "\ud800" gives one too. Neither can be written out.
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _decode(data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):  # spreadsheet exports often start with one
        data = data[len(codecs.BOM_UTF8):]
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
        except RecursionError:
            yield number, Rejected("", "malformed JSON: nested too deeply", _excerpt(line))
            continue
        if not isinstance(row, dict):
            yield number, Rejected("", "a JSON line must be an object", _excerpt(line))
            continue
        yield number, row


def _csv_rows(data: bytes):
    text = _decode(data)
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    # strict: a stray quote is a malformed row, not silently glued to the next field
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        yield 0, Rejected("", f"unreadable Parquet file ({type(error).__name__})")
        return
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


def _text_rows(data: bytes, text_column: str):
    for number, line in enumerate(_decode(data).splitlines(), start=1):
        if line.strip():
            yield number, {text_column: line}


def as_json_dict(record: Record) -> dict[str, Any]:
    return dataclasses.asdict(record)
