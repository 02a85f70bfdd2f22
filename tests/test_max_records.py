"""--max_records keeps the first N records in (file, row) order without collecting them."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.read import SKIPPED_TAG, ReadRecords, _keep_order
from transforms.records import Record, RecordSchema


def _write(path, rows):
    path.write_text("text\n" + "".join(f"review number {i}\n" for i in rows), encoding="utf-8")


def _check(pattern, limit, expected_kept, expected_skipped, *, workers=None):
    options = ["--runner", "FnApiRunner"]
    if workers:
        options += ["--direct_running_mode", "multi_processing",
                    "--direct_num_workers", str(workers)]
    with TestPipeline(argv=options) as pipeline:
        read = pipeline | ReadRecords(pattern, RecordSchema(), max_records=limit)
        assert_that(read["records"] | "Sources" >> beam.Map(lambda r: r.source),
                    equal_to(expected_kept), label="kept")
        assert_that(read[SKIPPED_TAG], equal_to(expected_skipped), label="skipped")


def test_keeps_the_first_records_in_file_and_row_order(tmp_path):
    _write(tmp_path / "b.csv", range(5))     # rows 2..6 of b.csv
    _write(tmp_path / "a.csv", range(12))    # a.csv comes first: rows 2..13
    a = [f"a.csv:{row}" for row in range(2, 14)]
    b = [f"b.csv:{row}" for row in range(2, 7)]
    _check(str(tmp_path / "*.csv"), 14, a + b[:2], b[2:])
    _check(str(tmp_path / "*.csv"), 3, a[:3], a[3:] + b)
    _check(str(tmp_path / "*.csv"), 100, a + b, [])


def test_same_on_the_multi_processing_runner(tmp_path):
    _write(tmp_path / "a.csv", range(30))
    rows = [f"a.csv:{row}" for row in range(2, 32)]
    _check(str(tmp_path / "a.csv"), 7, rows[:7], rows[7:], workers=2)


def test_rows_of_same_named_files_tie_on_position_and_are_split_by_content():
    first = Record("x", "one text", source="a.csv:2")
    second = Record("y", "another text", source="a.csv:2")
    assert _keep_order(first)[:2] == _keep_order(second)[:2]
    assert _keep_order(first) != _keep_order(second)
    assert _keep_order(Record("z", "t", source="a.csv:10")) > _keep_order(
        Record("z", "t", source="a.csv:9"))
