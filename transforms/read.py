"""ReadRecords: input files to validated records, with every rejection routed and counted."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from transforms import progress
from transforms import records as rec

REJECTED_TAG = "rejected"
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
        self._progress = progress.counter("reading", "rows parsed")

    def process(self, readable_file):
        path = readable_file.metadata.path
        try:
            file_format = rec.format_of(path, self._format)
        except ValueError:  # the run checks the names first; a file may appear since
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTED_TAG, rec.Rejected(
                path.rsplit("/", 1)[-1], "unknown file format: pass --input_format",
                rec.bytes_excerpt(readable_file.read())))
            return
        for item in rec.parse_file(path, readable_file.read(), self._schema, file_format):
            item = rec.within_label_values(item, self._labels)
            self._progress()
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
    """

    def __init__(self, pattern: str, schema: rec.RecordSchema, *, input_format: str | None = None,
                 label_values: tuple[str, ...] | None = None):
        super().__init__()
        self._pattern = pattern
        self._schema = schema
        self._format = input_format
        self._labels = label_values

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
        return {"records": records, REJECTED_TAG: rejected}


DUPLICATE_ID_REASON = rec.DUPLICATE_ID_REASON


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
            kept, duplicates = rec.first_of_same_id(rows)
            yield kept
            for duplicate in duplicates:
                rejected_counter.inc()
                yield beam.pvalue.TaggedOutput(REJECTED_TAG, duplicate)

        return (records
                | "KeyByUnitAndId" >> beam.Map(lambda r: ((r.unit, r.record_id), r))
                | "GroupById" >> beam.GroupByKey()
                | "KeepFirst" >> beam.FlatMap(keep_first).with_outputs(REJECTED_TAG,
                                                                       main="records"))
