"""Checks of the input's header and first rows, before any budget is reserved or any model
loads: the named columns exist, the input is not empty, and the bytes decode.

What is read, per file: a CSV's header and a JSONL's first records (within the first
SAMPLE_BYTES), a Parquet file's schema from its footer, and whether the first
SAMPLE_BYTES decode. "Empty" means that no file holds anything but white space: a CSV
with a header and no row is not empty, so whether a run starts never depends on how many
rows follow a header. A mistake there would otherwise cost a whole run, and with a
budget ledger its epsilon, for nothing. docs/privacy.md says what the outcome depends on.
"""

from __future__ import annotations

import codecs
import json

from transforms import read as rec

# Enough for the header and the first rows of any real export; small enough that a check
# of many files reads little.
SAMPLE_BYTES = 64 * 1024
FIRST_RECORDS = 20
# Tried in this order on a sample that does not decode: cp1252 is what spreadsheets on
# Windows write, and latin-1 decodes any byte, so one of them is always named.
LIKELY_ENCODINGS = ("utf-8", "cp1252", "latin-1")
# A file in the wrong encoding fails on every row with a character outside ASCII, which
# in real text is a large share of the rows; a few corrupt rows below this share are
# rejected one by one by the parser, as before.
WRONG_ENCODING_SHARE = 0.1


class InputCheckError(ValueError):
    """What is wrong with the input, in one line that says what to pass instead."""


def check_input(paths, *, schema: rec.RecordSchema, declared_format: str | None,
                encoding: str, open_file, option: str = "--input") -> None:
    """Raises InputCheckError unless every file has the named columns and decodes, and at
    least one holds a row. `open_file(path)` returns a readable binary file."""
    holds_bytes = False
    for path in paths:
        file_format = rec.format_of(path, declared_format)
        with open_file(path) as handle:
            if file_format == "parquet":
                columns, filled = _parquet_header(handle, path), True
            else:
                columns, filled = _head(handle.read(SAMPLE_BYTES), path, file_format,
                                      encoding, schema)
        if columns is not None:
            _require_columns(columns, schema, path, file_format)
        holds_bytes = holds_bytes or filled
    if not holds_bytes:
        files = f"its {len(paths)} files are" if len(paths) > 1 else "the file is"
        raise InputCheckError(f"{option} is empty: {files} empty or white space only")


def _head(head: bytes, path: str, file_format: str, encoding: str, schema):
    """(columns, or None when there are none to check; whether the file holds more than
    white space)."""
    complete = len(head) < SAMPLE_BYTES
    if not complete and b"\n" in head:
        head = head[:head.rindex(b"\n") + 1]
    text = _decoded(head, path, encoding, final=complete)
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [line.rstrip("\r") for line in text.split("\n")]
    filled = [index for index, line in enumerate(lines) if line.strip()]
    if file_format == "text":
        return (schema.text_column,), bool(filled)
    if file_format == "jsonl":
        return _jsonl_columns(lines, filled, path), bool(filled)
    if not filled:
        return None, False
    try:
        header, _ = rec.scan_csv_row(lines, filled[0])
    except rec.CsvRowError as error:
        raise InputCheckError(f"{_name(path)}: the CSV header cannot be read: {error}") from None
    return header, True


def _decoded(head: bytes, path: str, encoding: str, *, final: bool) -> str:
    failing, lines = _undecodable_lines(head, encoding)
    if failing and len(failing) >= WRONG_ENCODING_SHARE * lines:
        likely = _likely_encoding(head, encoding, final)
        hint = (f"it looks like {likely}: pass --encoding {likely}" if likely
                else "pass its --encoding")
        where = (f"lines {failing[0]} and {len(failing) - 1} more of the first {lines} do "
                 f"not decode" if len(failing) > 1 else f"line {failing[0]} does not decode")
        raise InputCheckError(f"{_name(path)} is not {encoding}: {where}; {hint}")
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    return decoder.decode(head, final=final)


def _undecodable_lines(head: bytes, encoding: str) -> tuple[list, int]:
    """(numbers of the lines that do not decode, lines with anything on them)."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or \
            b"\n".decode(encoding, errors="replace") != "\n":
        # Not ASCII-compatible on one side: lines cannot be told apart in bytes.
        try:
            head.decode(encoding)
        except UnicodeDecodeError:
            return [1], 1
        return [], 1
    failing, filled = [], 0
    for number, line in enumerate(head.split(b"\n"), start=1):
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        if not line.strip():
            continue
        filled += 1
        try:
            line.decode(encoding)
        except UnicodeDecodeError as error:
            if error.reason != "unexpected end of data" or number < head.count(b"\n") + 1:
                failing.append(number)
    return failing, filled


def _likely_encoding(head: bytes, encoding: str, final: bool) -> str | None:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for candidate in LIKELY_ENCODINGS:
        if codecs.lookup(candidate).name == codecs.lookup(encoding).name:
            continue
        try:
            codecs.getincrementaldecoder(candidate)(errors="strict").decode(head, final=final)
        except UnicodeDecodeError:
            continue
        return candidate
    return None


def _jsonl_columns(lines, filled, path) -> set | None:
    columns, objects = set(), 0
    for index in filled[:FIRST_RECORDS]:
        try:
            row = json.loads(lines[index])
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            columns.update(row)
            objects += 1
    if filled and not objects:
        raise InputCheckError(f"{_name(path)} is not JSON Lines: none of its first "
                              f"{min(len(filled), FIRST_RECORDS)} lines is a JSON object; "
                              f"pass --input_format if it is another format")
    return columns if objects else None


def _parquet_header(handle, path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(handle).metadata
    except (pa.ArrowException, OSError):
        return None  # the job rejects an unreadable file by name, as any bad row
    return metadata.schema.to_arrow_schema().names


_OPTIONS = (("text_column", "--text_column"), ("label_column", "--label_column"),
            ("id_column", "--id_column"), ("unit_column", "--privacy_unit_column"))


def _require_columns(columns, schema, path: str, file_format: str) -> None:
    for field, option in _OPTIONS:
        column = getattr(schema, field)
        if column is None or column in columns:
            continue
        if file_format == "text":
            raise InputCheckError(f"{option} {column}: a plain text file has one column, the "
                                  f"text; use CSV, JSONL or Parquet for more")
        where = "header" if file_format == "csv" else (
            "schema" if file_format == "parquet" else f"first {FIRST_RECORDS} records")
        names = ", ".join(sorted(columns) if file_format == "jsonl" else columns)
        verb = "have" if file_format == "jsonl" else "has"
        raise InputCheckError(f"{option} {column} is not a column of {_name(path)}: its "
                              f"{where} {verb} {names or 'no columns'}")


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]
