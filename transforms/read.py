"""ReadRecords: input files to validated records, with every rejection routed and counted."""

from __future__ import annotations

import hashlib

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from transforms import records as rec

REJECTED_TAG = "rejected"
SKIPPED_TAG = "skipped"
NAMESPACE = "dpsynth"


class _ParseFile(beam.DoFn):
    def __init__(self, schema: rec.RecordSchema, declared_format: str | None,
                 label_values: tuple[str, ...] | None):
        self._schema = schema
        self._format = declared_format
        self._labels = frozenset(label_values) if label_values else None
        self._read = Metrics.counter(NAMESPACE, "records_read")
        self._rejected = Metrics.counter(NAMESPACE, "records_rejected")
        self._truncated = Metrics.counter(NAMESPACE, "records_truncated")

    def process(self, readable_file):
        path = readable_file.metadata.path
        try:
            file_format = rec.format_of(path, self._format)
        except ValueError:  # the run checks the names first; a file may appear since
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, rec.Rejected(
                path.rsplit("/", 1)[-1], "unknown file format: pass --input_format"))
            return
        for item in rec.parse_file(path, readable_file.read(), self._schema, file_format):
            item = rec.within_label_values(item, self._labels)
            if isinstance(item, rec.Rejected):
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

    With `max_records`, records are ordered by (file, row) and only the first N
    are kept; the others go to the `skipped` output, to be counted.
    """

    def __init__(self, pattern: str, schema: rec.RecordSchema, *, input_format: str | None = None,
                 label_values: tuple[str, ...] | None = None, max_records: int | None = None):
        super().__init__()
        self._pattern = pattern
        self._schema = schema
        self._format = input_format
        self._labels = label_values
        self._max_records = max_records

    def expand(self, pbegin):
        parsed = (pbegin
                  | "MatchFiles" >> fileio.MatchFiles(self._pattern)
                  | "ReadMatches" >> fileio.ReadMatches()
                  | "Reshuffle" >> beam.Reshuffle()
                  | "Parse" >> beam.ParDo(_ParseFile(self._schema, self._format, self._labels))
                  .with_outputs(REJECTED_TAG, main="records"))
        records, rejected = parsed.records, parsed[REJECTED_TAG]
        if self._schema.id_column:
            unique = records | "DropDuplicateIds" >> DropDuplicateIds()
            records = unique.records
            rejected = ((rejected, unique[REJECTED_TAG])
                        | "AllRejected" >> beam.Flatten())
        skipped = pbegin | "NoneSkipped" >> beam.Create([])
        if self._max_records is not None:
            limited = records | "KeepFirstRecords" >> _KeepFirst(self._max_records)
            records, skipped = limited.records, limited[SKIPPED_TAG]
        return {"records": records, REJECTED_TAG: rejected, SKIPPED_TAG: skipped}


def _source_order(record: rec.Record):
    name, _, row = record.source.rpartition(":")
    return (name, int(row)) if row.isdigit() else (record.source, 0)


DUPLICATE_ID_REASON = ("duplicate record id: the first row with this id (in file and row "
                       "order) is kept")


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
            ordered = sorted(rows, key=lambda r: (_source_order(r), r.text, r.label or ""))
            yield ordered[0]
            for duplicate in ordered[1:]:
                rejected_counter.inc()
                yield beam.pvalue.TaggedOutput(
                    REJECTED_TAG, rec.Rejected(duplicate.source, DUPLICATE_ID_REASON))

        return (records
                | "KeyByUnitAndId" >> beam.Map(lambda r: ((r.unit, r.record_id), r))
                | "GroupById" >> beam.GroupByKey()
                | "KeepFirst" >> beam.FlatMap(keep_first).with_outputs(REJECTED_TAG,
                                                                       main="records"))


class _KeepFirst(beam.PTransform):
    """The first `limit` records in (file, row) order, and the sources of the others.

    No worker ever holds the records: a combiner keeps the `limit` smallest
    order keys (fixed-size tuples, at most `limit` per bundle), and the last
    of them, a singleton side input, splits the records where they are.
    Rows of same-named files in different folders tie on (file, row); a hash
    of their content breaks the tie, so exactly `limit` records are kept
    unless two such rows are identical.
    """

    def __init__(self, limit: int):
        super().__init__()
        self._limit = limit

    def expand(self, records):
        limit = self._limit

        def split(record, last_kept):
            if last_kept is None or _keep_order(record) <= last_kept:
                yield record
            else:
                yield beam.pvalue.TaggedOutput(SKIPPED_TAG, record.source)

        last_kept = (records
                     | "OrderKeys" >> beam.Map(_keep_order)
                     | "SmallestKeys" >> beam.combiners.Top.Smallest(limit)
                     | "LastKept" >> beam.Map(lambda keys: keys[-1] if len(keys) >= limit
                                              else None))
        return records | "Split" >> beam.FlatMap(
            split, beam.pvalue.AsSingleton(last_kept)).with_outputs(SKIPPED_TAG, main="records")


def _keep_order(record: rec.Record) -> tuple:
    content = "\x00".join((record.text, record.label or "", record.record_id, record.unit or ""))
    digest = hashlib.blake2b(content.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return (*_source_order(record), digest)
