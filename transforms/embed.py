"""EmbedRecords and BoundContributions: the stages before clustering."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_pipeline import progress
from transforms.model_handlers import SentenceEmbeddingHandler
from transforms.read import NAMESPACE
from transforms.read import unit_representative


class BoundContributions(beam.PTransform):
    """Keeps one record per privacy unit, chosen by a keyed hash of its content.

    The choice for a unit depends only on that unit's records and the secret
    (never on row numbers, which other units' rows shift), so adding or
    removing a unit changes one kept record at most.
    """

    def __init__(self, secret: str, *, ids_from_column: bool):
        super().__init__()
        self._secret = secret
        self._ids_from_column = ids_from_column

    def expand(self, records):
        secret, ids_from_column = self._secret, self._ids_from_column
        dropped = Metrics.counter(NAMESPACE, "records_over_unit_bound")

        def keep_one(unit_and_records):
            _, unit_records = unit_and_records
            unit_records = list(unit_records)
            chosen = unit_representative(unit_records, secret, ids_from_column)
            dropped.inc(len(unit_records) - 1)
            return chosen

        return (records
                | "KeyByUnit" >> beam.Map(lambda r: (r.unit, r))
                | "GroupByUnit" >> beam.GroupByKey()
                | "KeepOnePerUnit" >> beam.Map(keep_one))


class EmbedRecords(beam.PTransform):
    """Record -> (record, unit-norm embedding) through RunInference."""

    def __init__(self, encoder: str, *, sequence_length: int, phase: str = "embedding"):
        super().__init__()
        self._phase = phase
        self._handler = KeyedModelHandler(
            SentenceEmbeddingHandler(encoder, sequence_length=sequence_length))

    def expand(self, records):
        embedded = Metrics.counter(NAMESPACE, "records_embedded")
        tick = progress.counter(self._phase, "texts embedded")

        def unpack(keyed):
            record, prediction = keyed
            embedded.inc()
            tick()
            return record, prediction.inference

        return (records
                | "KeyByRecord" >> beam.Map(lambda r: (r, r.text))
                | "RunInference" >> RunInference(self._handler)
                | "Unpack" >> beam.Map(unpack))
