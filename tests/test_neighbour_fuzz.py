"""Every step before the first release is stable under adding or removing one row.

METHOD.md section 0: parsing, the label filter, duplicate ids, truncation, unit
bounding and the record cap together may change the records used by at most the
added or removed row's record (with a unit or id column: at most that unit's
records). Checked by fuzzing: random well-formed files in each input format, and
neighbours made by inserting one row (well-formed or malformed: stray and unclosed
quotes, wrong field counts, bad UTF-8, broken JSON, wrong types) or removing one.

The steps run here are the Beam-free functions that the Beam stages call
(transforms/read.py, transforms/record_cap.py); the last test checks that the
job's own stages (beam_pipeline/pipeline.usable_records) give the same records.
"""

from __future__ import annotations

import collections
import io
import json
import random

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.pipeline import usable_records
from beam_pipeline.plan import make_plan
from beam_pipeline.run import pipeline_options
from tests.pipeline_fixtures import tiny_args
from mechanisms import record_cap
from transforms.record_cap import unit_key
from transforms import read as rec

SECRET = "5eed" * 8
LABELS = ("A", "B", "C")
PAIRS_PER_FORMAT = 1500
PIECES = ["good", "food", "a", "b", " ", ",", '"', "'", "é", "€", "\u2028", "\x0c", "\t"]
MULTILINE_PIECES = PIECES + ["\n"]


# ------------------------------------------------------------------ the steps


def used_records(files: dict[str, bytes], config: dict) -> collections.Counter:
    """The records the job would use, by content, from the Beam-free steps in job order."""
    schema, ids_from_column = config["schema"], config["schema"].id_column is not None
    records = []
    labels = LABELS if schema.label_column else None
    for name, data in sorted(files.items()):
        for item in rec.parse_file(name, data, schema, config["format"]):
            item = rec.within_label_values(item, labels)
            if isinstance(item, rec.Record):
                records.append(item)
    if ids_from_column:
        by_id = collections.defaultdict(list)
        for record in records:
            by_id[(record.unit, record.record_id)].append(record)
        records = [rec.first_of_same_id(rows)[0] for rows in by_id.values()]
    if schema.unit_column:
        by_unit = collections.defaultdict(list)
        for record in records:
            by_unit[record.unit].append(record)
        records = [rec.unit_representative(rows, SECRET, ids_from_column)
                   for rows in by_unit.values()]
    if config["cap_rate"] is not None:
        records = [r for r in records
                   if record_cap.is_kept(SECRET, unit_key(r, ids_from_column),
                                         config["cap_rate"])]
    return collections.Counter(_identity(r, ids_from_column) for r in records)


def _identity(record: rec.Record, ids_from_column: bool) -> tuple:
    # Row numbers are not part of a record: they shift when a row is added above.
    return rec.content_key(record, ids_from_column)


def _owner(identity: tuple, schema: rec.RecordSchema):
    """Whose record this is: the privacy unit, else the id (ids then name units)."""
    _, _, unit, record_id = identity
    if schema.unit_column:
        return ("unit", unit)
    if schema.id_column:
        return ("id", record_id)
    return None


def assert_neighbours(smaller, larger, row_identity, schema, context):
    """`larger` has one row more than `smaller`: nothing else may change."""
    removed = smaller - larger
    added = larger - smaller
    owner = _owner(row_identity, schema) if row_identity else None
    if owner is None:
        assert not removed and sum(added.values()) <= 1, (context, removed, added)
        if row_identity is None:
            assert not added, (context, added)
        else:
            assert set(added) <= {row_identity}, (context, added)
        return
    # Only the row's own unit (or id) may change, and it keeps at most one record.
    changed = {_owner(i, schema) for i in removed} | {_owner(i, schema) for i in added}
    assert changed <= {owner}, (context, removed, added)
    mine = sum(n for i, n in larger.items() if _owner(i, schema) == owner)
    assert mine <= 1 or not (schema.unit_column or schema.id_column), (context, larger)


# ---------------------------------------------------------------- random rows


def _text(rng, multiline: bool) -> str:
    pieces = MULTILINE_PIECES if multiline else PIECES
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))


def _row(rng, multiline: bool) -> dict:
    return {"id": f"i{rng.randint(0, 6)}", "text": _text(rng, multiline),
            "label": rng.choice(LABELS + ("Z",)),        # Z is outside the label domain
            "unit": f"u{rng.randint(0, 5)}"}


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"\n\r') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_row(row: dict) -> bytes:
    return (",".join(_csv_field(row[c]) for c in ("id", "text", "label", "unit")) + "\n"
            ).encode("utf-8")


def _reads_alone_as(row: dict, chunk: bytes) -> bool:
    """Whether the reader's dialect reads this row's CSV as exactly its fields (a text that
    begins with a comma, for one, is a malformed row in it)."""
    lines = chunk.decode("utf-8").split("\n")[:-1]
    try:
        fields, end = rec.scan_csv_row(lines, 0)
    except rec.CsvRowError:
        return False
    return end == len(lines) - 1 and fields == [row[c] for c in ("id", "text", "label", "unit")]


def _good_chunk(fmt: str, rng):
    """(bytes of one well-formed row, its content identity or None if it is rejected)."""
    while True:
        row = _row(rng, multiline=fmt in ("csv", "jsonl"))
        if fmt == "csv":
            chunk = _csv_row(row)
            if not _reads_alone_as(row, chunk):
                continue
        elif fmt == "jsonl":
            chunk = (json.dumps(row, ensure_ascii=rng.random() < 0.5) + "\n").encode("utf-8")
        elif fmt == "text":
            chunk = (row["text"] + "\n").encode("utf-8")
        else:
            chunk = row
        return chunk


def _bad_chunk(fmt: str, rng):
    """One malformed row of the format."""
    kind = rng.randrange(6)
    if fmt == "csv":
        return [
            b'i1,"an unclosed quote,A,u1\n',
            b'i2,a stray "quote,B,u2\n',
            b"i3,too,many,fields,here,A\n",
            b"i4,too few\n",
            b"i5,bad \xff\xfe utf-8,A,u3\n",
            b'i6,",starts with a comma",A,u4\n',
        ][kind] if rng.random() < 0.7 else _csv_row(_row(rng, True)).replace(b'"', b"", 1)
    if fmt == "jsonl":
        return [
            b'{"id": "i1", "text": "broken\n',
            b"[1, 2, 3]\n",
            b'{"id": "i2", "text": 5, "label": "A"}\n',
            b'{"id": "i3", "text": "bad \xff utf-8", "label": "A", "unit": "u1"}\n',
            b'{"id": "i4", "text": "x", "label": true, "unit": "u1"}\n',
            b"[" * 5000 + b"\n",
        ][kind]
    if fmt == "text":
        return [b"bad \xff\xfe utf-8\n", b"   \n", b"\r\n", b"x" * 300 + b"\n",
                b"\xc3\n", b"form\x0cfeed \xe2\x80\xa8 line\n"][kind]
    return [
        {"id": "i1", "text": None, "label": "A", "unit": "u1"},
        {"id": "i2", "text": "", "label": "B", "unit": "u2"},
        {"id": "i3", "text": "no label", "label": None, "unit": "u3"},
        {"id": None, "text": "no id", "label": "A", "unit": "u4"},
        {"id": "i5", "text": "no unit", "label": "C", "unit": None},
        {"id": "i6", "text": "   ", "label": "A", "unit": "u5"},
    ][kind]


def _file(fmt: str, chunks: list) -> bytes:
    if fmt == "csv":
        return b"id,text,label,unit\n" + b"".join(chunks)
    if fmt == "parquet":
        columns = {c: pa.array([row[c] for row in chunks], type=pa.string())
                   for c in ("id", "text", "label", "unit")}
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns), buffer)
        return buffer.getvalue()
    return b"".join(chunks)


def _config(fmt: str, rng) -> dict:
    columns = fmt != "text"     # plain text has the text column only
    schema = rec.RecordSchema(
        text_column="text", label_column="label" if columns else None,
        id_column="id" if columns and rng.random() < 0.5 else None,
        unit_column="unit" if columns and rng.random() < 0.5 else None,
        max_chars=rng.choice([4, 8, 4000]), over_length=rng.choice(["truncate", "reject"]))
    return {"format": fmt, "schema": schema,
            "cap_rate": rng.choice([None, 0.3, 0.7])}


def _identity_of(chunk, config) -> tuple | None:
    """The content identity of one row read alone, or None when it is rejected."""
    fmt = config["format"]
    items = list(rec.parse_file("row." + fmt, _file(fmt, [chunk]), config["schema"], fmt))
    records = [i for i in items if isinstance(i, rec.Record)]
    if config["schema"].label_column:
        records = [r for r in records if r.label in LABELS]
    if len(records) != 1:
        return None
    return _identity(records[0], config["schema"].id_column is not None)


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "text", "parquet"])
def test_adding_or_removing_one_row_changes_only_that_row(fmt):
    rng = random.Random(f"neighbours-{fmt}")
    tried = collections.Counter()
    with_records = 0
    for trial in range(PAIRS_PER_FORMAT):
        config = _config(fmt, rng)
        chunks = [_good_chunk(fmt, rng) for _ in range(rng.randint(0, 12))]
        # Some base files already hold one malformed row; then only well-formed rows
        # are added or removed (two malformed rows can pair up: docs/privacy.md).
        base_has_bad = rng.random() < 0.3
        if base_has_bad:
            chunks.insert(rng.randint(0, len(chunks)), _bad_chunk(fmt, rng))
        position = rng.randint(0, len(chunks))
        malformed = not base_has_bad and rng.random() < 0.5
        row = _bad_chunk(fmt, rng) if malformed else _good_chunk(fmt, rng)
        larger = chunks[:position] + [row] + chunks[position:]
        name = f"input.{fmt}"
        used_small = used_records({name: _file(fmt, chunks)}, config)
        used_large = used_records({name: _file(fmt, larger)}, config)
        context = (fmt, trial, config, position, row)
        assert_neighbours(used_small, used_large, _identity_of(row, config),
                          config["schema"], context)
        with_records += bool(used_small)
        tried["malformed row added" if malformed else "well-formed row added"] += 1
        # The same pair read the other way round is a removal; also remove a random row.
        if chunks:
            index = rng.randrange(len(chunks))
            fewer = chunks[:index] + chunks[index + 1:]
            assert_neighbours(used_records({name: _file(fmt, fewer)}, config), used_small,
                              _identity_of(chunks[index], config), config["schema"],
                              (fmt, trial, config, "removed", index))
            tried["row removed"] += 1
    print(f"{fmt}: {sum(tried.values())} neighbouring pairs: {dict(tried)}; "
          f"{with_records} of {PAIRS_PER_FORMAT} base files had records in use")
    assert sum(tried.values()) >= PAIRS_PER_FORMAT
    assert with_records >= PAIRS_PER_FORMAT // 2   # the check is not vacuous


def test_the_old_first_rows_cap_and_row_number_keys_would_fail_this_check():
    """The check has teeth: keeping the first N rows lets an added row push one out."""
    def first_rows(files, config, limit=3):
        used = used_records(files, {**config, "cap_rate": None})
        keep = list(used.elements())[:limit]
        return collections.Counter(keep)
    config = {"format": "text", "schema": rec.RecordSchema(), "cap_rate": None}
    base = {"input.text": b"one\ntwo\nthree\n"}
    added = {"input.text": b"zero\none\ntwo\nthree\n"}
    with pytest.raises(AssertionError):
        assert_neighbours(first_rows(base, config), first_rows(added, config),
                          ("zero", "", "", ""), config["schema"], "first rows")


def test_the_jobs_own_stages_use_the_same_records(tmp_path):
    """usable_records (ReadRecords, BoundContributions, CapRecords on FnApiRunner) against
    the Beam-free steps above, with the cap's rate from the job's own noisy count."""
    rng = random.Random("wiring")
    chunks = [_good_chunk("csv", rng) for _ in range(40)] + [_bad_chunk("csv", rng)]
    path = tmp_path / "input.csv"
    path.write_bytes(_file("csv", chunks))
    argv = tiny_args(path, tmp_path / "out", "--label_column", "label",
                     "--label_values", ",".join(LABELS), "--id_column", "id",
                     "--privacy_unit_column", "unit", "--max_records", "3",
                     "--max_records_noise", "0.5", secret=SECRET)
    plan = make_plan(pipeline_options(argv))
    config = {"format": "csv", "schema": plan.schema, "cap_rate": None}
    units = sum(used_records({path.name: path.read_bytes()}, config).values())
    rate = record_cap.keep_rate(3, record_cap.noisy_unit_count(units, 0.5, SECRET))
    assert rate < 1
    expected = used_records({path.name: path.read_bytes()}, {**config, "cap_rate": rate})
    with TestPipeline(argv=["--runner", "FnApiRunner"]) as pipeline:
        used = usable_records(pipeline, plan)["records"]
        assert_that(used | beam.Map(lambda r: _identity(r, True)),
                    equal_to(list(expected.elements())))
