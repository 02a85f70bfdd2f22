"""CapRecords: `--max_records` as a keyed sample of privacy units (mechanisms/record_cap.py)."""

from __future__ import annotations

import apache_beam as beam

from mechanisms import record_cap
from transforms.read import Record, content_key

SKIPPED_TAG = "skipped"


class CapRecords(beam.PTransform):
    """Keeps each unit with probability min(1, N / n~), n~ a noisy count of the units.

    Runs after unit bounding, so one record stands for one unit. Outputs the kept
    records (main) and the sources of the others (`skipped`), for the run summary.
    """

    def __init__(self, max_records: int, *, noise_stddev: float, secret: str,
                 ids_from_column: bool):
        super().__init__()
        self._max_records = max_records
        self._noise = noise_stddev
        self._secret = secret
        self._ids_from_column = ids_from_column

    def expand(self, records):
        secret, ids_from_column = self._secret, self._ids_from_column
        max_records, noise = self._max_records, self._noise

        def rate(count):
            return record_cap.keep_rate(
                max_records, record_cap.noisy_unit_count(count, noise, secret))

        def split(record, keep_rate):
            if record_cap.is_kept(secret, unit_key(record, ids_from_column), keep_rate):
                yield record
            else:
                yield beam.pvalue.TaggedOutput(SKIPPED_TAG, record.source)

        keep_rate = (records
                     | "CountUnits" >> beam.combiners.Count.Globally()
                     | "KeepRate" >> beam.Map(rate))
        return records | "Sample" >> beam.FlatMap(
            split, beam.pvalue.AsSingleton(keep_rate)).with_outputs(SKIPPED_TAG, main="records")


def unit_key(record: Record, ids_from_column: bool) -> tuple:
    """The unit's name when there is a unit column, else the record's own content."""
    if record.unit is not None:
        return ("unit", record.unit)
    return ("record", *content_key(record, ids_from_column))
