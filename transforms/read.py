"""Reading the input: files to validated records, with every rejection routed and counted.

The parsing is plain Python (`parse_file` and what it calls), so it has its own
tests; `ReadRecords` wraps it in Beam. A record the pipeline cannot use is
never dropped silently: parsing yields a `Rejected` with a reason, and the
pipeline writes and counts it.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import json
import re
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from mechanisms.randomness import keyed_hash
from beam_pipeline import progress

FORMATS = ("jsonl", "csv", "parquet", "text")
_EXTENSIONS = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
    ".txt": "text", ".text": "text",
}
# Rejected rows keep only this much of the raw input, so a rejection file
# points at the problem without copying whole private records around.
RAW_EXCERPT_CHARS = 80
# A quoted CSV field may span this many lines at most: past it, the row's first
# line is rejected and reading resumes on the next line.
CSV_MAX_ROW_LINES = 64


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


def content_key(record: Record, ids_from_column: bool) -> tuple:
    """A record's key from its own content, for keyed hashes that choose among records.

    Never the row number: adding one row above shifts every later row's number, so a
    key built on it would let one row change which other records are chosen.
    """
    return (record.text, record.label or "", record.unit or "",
            record.record_id if ids_from_column else "")


DUPLICATE_ID_REASON = ("duplicate record id: the first row with this id (in file and row "
                       "order) is kept")


def first_of_same_id(rows) -> tuple[Record, list[Rejected]]:
    """Of the records sharing a (privacy unit, record id): the first in (file, row) order,
    and the rejections of the others. Rows of other units never take part, and adding
    their rows keeps the order of these, so the choice depends on this unit's rows only.
    Ties of the order (same-named files in different folders) go by content."""
    ordered = sorted(rows, key=lambda r: (_source_order(r), r.text, r.label or ""))
    return ordered[0], [Rejected(r.source, DUPLICATE_ID_REASON, record_excerpt(r))
                        for r in ordered[1:]]


def record_excerpt(record: Record) -> str:
    """The raw excerpt of a row rejected after it became a Record."""
    fields = {"id": record.record_id, "text": record.text}
    if record.label is not None:
        fields["label"] = record.label
    if record.unit is not None:
        fields["unit"] = record.unit
    return _excerpt(fields)


def unit_representative(unit_records, secret: str, ids_from_column: bool) -> Record:
    """The one record a privacy unit keeps: the least keyed hash of its content. Records
    with equal keys have equal content, so which of them is returned does not matter."""
    return min(unit_records, key=lambda r: (
        keyed_hash(secret, "unit_bound", *content_key(r, ids_from_column)), r.source))


def _source_order(record: Record):
    name, _, row = record.source.rpartition(":")
    return (name, int(row)) if row.isdigit() else (record.source, 0)


def within_label_values(item: Record | Rejected, labels) -> Record | Rejected:
    """`item`, or its rejection when it is a Record whose label is not in `labels` (the
    public --label_values; None accepts every label)."""
    if isinstance(item, Record) and labels is not None and item.label not in labels:
        return Rejected(item.source, "label not in --label_values", record_excerpt(item))
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
        return Rejected(source, "invalid UTF-8 in text", _excerpt(row))
    text = text.strip()
    if not text:
        return Rejected(source, "empty text", _excerpt(row))
    truncated = False
    if len(text) > schema.max_chars:
        if schema.over_length == "reject":
            return Rejected(source, f"text longer than max_chars={schema.max_chars}",
                            _excerpt(row))
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
            return Rejected(source, "invalid UTF-8 in label", _excerpt(row))
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
    """The first characters of a row, bytes that are not UTF-8 shown escaped (\\xff)."""
    text = json.dumps(row, ensure_ascii=False, default=str) if not isinstance(row, str) else row
    return _escape_surrogates(text[:RAW_EXCERPT_CHARS])


def bytes_excerpt(data: bytes) -> str:
    """The first bytes of a file that cannot be read as rows."""
    return _escape_surrogates(_decode(data[:RAW_EXCERPT_CHARS]))


def _escape_surrogates(text: str) -> str:
    # surrogateescape decodes byte 0xNN as U+DCNN; any other lone surrogate came from a
    # JSON escape. Neither can be written as UTF-8.
    return "".join(
        f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff"
        else f"\\u{ord(ch):04x}" if "\ud800" <= ch <= "\udfff" else ch
        for ch in text)


def _json_error(message: str) -> str:
    """json's message without its dangling position phrase ("Unterminated string starting
    at"): the position would make every row's reason different, and reasons are counted."""
    return re.sub(r"\s+(starting )?at$", "", message)


def _lines(data: bytes) -> list[str]:
    """Physical lines: split at line feeds only (a CR before one is dropped), so that a
    character such as U+2028 inside one row never splits it into two."""
    lines = _decode(data).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _jsonl_rows(data: bytes):
    for number, line in enumerate(_lines(data), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, Rejected("", f"malformed JSON: {_json_error(error.msg)}",
                                   _excerpt(line))
            continue
        except RecursionError:
            yield number, Rejected("", "malformed JSON: nested too deeply", _excerpt(line))
            continue
        if not isinstance(row, dict):
            yield number, Rejected("", "a JSON line must be an object", _excerpt(line))
            continue
        yield number, row


def _csv_rows(data: bytes):
    """CSV rows numbered by their first line. A row that cannot be read is rejected
    alone, by its first line, and reading resumes on the next line: see `scan_csv_row`
    for why no malformed row can pull well-formed rows after it into itself."""
    lines = _lines(data)
    if not lines:
        return
    try:
        header, end = scan_csv_row(lines, 0)
    except CsvRowError as error:
        yield 1, Rejected("", f"malformed CSV header: {error}", _excerpt(lines[0]))
        return
    index = end + 1
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
        number = index + 1
        try:
            values, end = scan_csv_row(lines, index)
        except CsvRowError as error:
            yield number, Rejected("", f"malformed CSV row: {error}", _excerpt(lines[index]))
            index += 1
            continue
        if len(values) != len(header):
            yield number, Rejected(
                "", f"CSV row has {len(values)} fields, the header has {len(header)}",
                _excerpt(lines[index]))
            index += 1
            continue
        yield number, dict(zip(header, values))
        index = end + 1


class CsvRowError(ValueError):
    """Why the row starting at a line is not well-formed CSV; never quotes the row."""


def scan_csv_row(lines: list[str], start: int, max_lines: int = CSV_MAX_ROW_LINES
                 ) -> tuple[list[str], int]:
    """(fields, index of the last line) of the CSV row that starts at `lines[start]`.

    RFC 4180 quoting, with line breaks allowed inside quoted fields, and three rules
    more than Python's csv module, all about one row's own text:
    - a quote inside an unquoted field is an error (RFC 4180 asks for such fields
      to be quoted);
    - a quoted field's text may not begin with a comma or a line break, nor with
      quotes followed by one;
    - a quoted field must close within `max_lines` lines.
    Why: a stray opening quote puts the reader inside a quoted field while the text
    below is outside one. The quote that then ends the field is the opening quote of
    a well-formed field below, and the second rule makes what follows it an error
    (tests/test_csv_framing.py checks this exhaustively on short texts). So a
    malformed row never reads a well-formed row below it as its own text: its first
    line is rejected and the next line is read afresh.
    """
    if '"' not in lines[start]:   # the common row: no quoting to follow
        return lines[start].split(","), start
    fields: list[str] = []
    field: list[str] = []
    state = _START
    index = start
    while True:
        line = lines[index]
        length = len(line)
        for position, char in enumerate(line):
            if state == _START:
                if char == '"':
                    state = _QUOTED
                    _check_quoted_start(line, position + 1)
                elif char == ",":
                    fields.append("")
                else:
                    field.append(char)
                    state = _PLAIN
            elif state == _PLAIN:
                if char == ",":
                    fields.append("".join(field))
                    field, state = [], _START
                elif char == '"':
                    raise CsvRowError("a quote inside an unquoted field (quote the field "
                                      "and double the quote)")
                else:
                    field.append(char)
            elif state == _QUOTED:
                if char == '"':
                    state = _QUOTE
                else:
                    field.append(char)
            elif char == '"':   # _QUOTE, and the quote is doubled: a quote in the text
                field.append('"')
                state = _QUOTED
            elif char == ",":
                fields.append("".join(field))
                field, state = [], _START
            else:
                raise CsvRowError("a closing quote must be followed by a comma or the end of "
                                  "the line")
        if state == _QUOTED:
            if index + 1 >= len(lines):
                raise CsvRowError("a quoted field is not closed")
            if index + 1 - start >= max_lines:
                raise CsvRowError(f"a quoted field is not closed within {max_lines} lines")
            field.append("\n")
            index += 1
            continue
        fields.append("".join(field))
        return fields, index


_START, _PLAIN, _QUOTED, _QUOTE = range(4)


def _check_quoted_start(line: str, position: int) -> None:
    """The second rule of `scan_csv_row`, at the first character after an opening quote."""
    while line.startswith('""', position):
        position += 2
    if position >= len(line) or line[position] == ",":
        raise CsvRowError("a quoted field may not begin with a comma or a line break")


def _parquet_rows(data: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        yield 0, Rejected("", f"unreadable Parquet file ({type(error).__name__})",
                          bytes_excerpt(data))
        return
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


def _text_rows(data: bytes, text_column: str):
    for number, line in enumerate(_lines(data), start=1):
        if line.strip():
            yield number, {text_column: line}


def as_json_dict(record: Record) -> dict[str, Any]:
    return dataclasses.asdict(record)


# ------------------------------------------------------------------- Beam stages


REJECTED_TAG = "rejected"
NAMESPACE = "dpsynth"


def reencode_as_utf8(data: bytes, encoding: str) -> bytes:
    """The bytes of a CSV, JSONL or text file in UTF-8, which the parser reads. A byte the
    encoding does not define stays as it was, so its row is rejected as not decoding."""
    if encoding in ("utf-8", "utf_8"):
        return data
    return data.decode(encoding, errors="surrogateescape").encode("utf-8", errors="surrogateescape")


class _ParseFile(beam.DoFn):
    def __init__(self, schema: RecordSchema, declared_format: str | None,
                 label_values: tuple[str, ...] | None, encoding: str = "utf-8"):
        self._schema = schema
        self._encoding = encoding
        self._format = declared_format
        self._labels = frozenset(label_values) if label_values else None
        self._read = Metrics.counter(NAMESPACE, "records_read")
        self._rejected = Metrics.counter(NAMESPACE, "records_rejected")
        self._truncated = Metrics.counter(NAMESPACE, "records_truncated")
        self._progress = progress.counter("reading", "rows parsed")

    def process(self, readable_file):
        path = readable_file.metadata.path
        try:
            file_format = format_of(path, self._format)
        except ValueError:  # the run checks the names first; a file may appear since
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, Rejected(
                path.rsplit("/", 1)[-1], "unknown file format: pass --input_format",
                bytes_excerpt(readable_file.read())))
            return
        data = readable_file.read()
        if file_format != "parquet":
            data = reencode_as_utf8(data, self._encoding)
        for item in parse_file(path, data, self._schema, file_format):
            item = within_label_values(item, self._labels)
            self._progress()
            if isinstance(item, Rejected):
                self._rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTED_TAG, item)
            else:
                self._read.inc()
                if item.truncated:
                    self._truncated.inc()
                yield item


class ReadRecords(beam.PTransform):
    """Matches files, parses rows into `Record`s; unusable rows go to the `rejected` output.

    With an id column, rows repeating an earlier row's id (within the same
    privacy unit) are rejected: see `DropDuplicateIds`.
    """

    def __init__(self, pattern: str, schema: RecordSchema, *, input_format: str | None = None,
                 label_values: tuple[str, ...] | None = None, encoding: str = "utf-8"):
        super().__init__()
        self._encoding = encoding
        self._pattern = pattern
        self._schema = schema
        self._format = input_format
        self._labels = label_values

    def expand(self, pbegin):
        parsed = (pbegin
                  | "MatchFiles" >> fileio.MatchFiles(self._pattern)
                  | "ReadMatches" >> fileio.ReadMatches()
                  | "Reshuffle" >> beam.Reshuffle()
                  | "Parse" >> beam.ParDo(_ParseFile(self._schema, self._format, self._labels,
                                                  self._encoding))
                  .with_outputs(REJECTED_TAG, main="records"))
        records, rejected = parsed.records, parsed[REJECTED_TAG]
        if self._schema.id_column:
            unique = records | "DropDuplicateIds" >> DropDuplicateIds()
            records = unique.records
            rejected = ((rejected, unique[REJECTED_TAG])
                        | "AllRejected" >> beam.Flatten())
        return {"records": records, REJECTED_TAG: rejected}



class DropDuplicateIds(beam.PTransform):
    """Keeps, of the rows sharing a (privacy unit, record id), the first in (file, row) order.

    The others go to the `rejected` output. Rows of different privacy units
    are never compared, so which row is kept depends on that unit's own rows
    only (docs/privacy.md). Ties of the order (same-named files in different
    folders) are broken by the row's content, so the choice is deterministic.
    """

    def expand(self, records):
        rejected_counter = Metrics.counter(NAMESPACE, "records_rejected")

        def keep_first(keyed):
            _, rows = keyed
            kept, duplicates = first_of_same_id(rows)
            yield kept
            for duplicate in duplicates:
                rejected_counter.inc()
                yield beam.pvalue.TaggedOutput(REJECTED_TAG, duplicate)

        return (records
                | "KeyByUnitAndId" >> beam.Map(lambda r: ((r.unit, r.record_id), r))
                | "GroupById" >> beam.GroupByKey()
                | "KeepFirst" >> beam.FlatMap(keep_first).with_outputs(REJECTED_TAG,
                                                                       main="records"))
