"""AssignToBatches: planned batches from noisy counts, membership by keyed hash (METHOD.md §3)."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.metrics import Metrics

from mechanisms.assign_to_batches import batch_id, batch_of
from transforms.read import NAMESPACE


@dataclasses.dataclass(frozen=True)
class Batch:
    batch_id: str
    label: object
    cluster: int
    members: tuple          # Records, in a fixed order


def planned_batches(release, expected_batch_size: int) -> list:
    """(cluster key, batch index) of every planned batch: a function of the DP release only."""
    return [(key, index)
            for key, count in sorted(release.batch_counts(expected_batch_size).items(), key=repr)
            for index in range(count)]


def planned_batch_id_list(release, expected_batch_size: int) -> list:
    """Every planned batch id, sorted."""
    return sorted(batch_id(key, index) for key, index in planned_batches(release,
                                                                         expected_batch_size))


class AssignToBatches(beam.PTransform):
    """((label, centre), record) + ClusterRelease -> one `Batch` per planned batch.

    Records group by (cluster, batch index), so no key holds a whole cluster.
    Every planned batch comes out, even with no members: suppressing it would
    reveal that no record hashed into it.
    """

    def __init__(self, release, *, expected_batch_size: int, secret: str):
        super().__init__()
        self._release = release
        self._s = expected_batch_size
        self._secret = secret

    def expand(self, clustered):
        s, secret = self._s, self._secret
        batched = Metrics.counter(NAMESPACE, "records_batched")
        unbatched = Metrics.counter(NAMESPACE, "records_unbatched")

        def to_batch_key(keyed_record, batch_counts):
            key, record = keyed_record
            count = batch_counts.get(key, 0)
            if count == 0:  # a cluster whose noisy count planned no batch
                unbatched.inc()
                return []
            batched.inc()
            return [((key, batch_of(secret, record.record_id, count)), record)]

        def to_batch(grouped):
            (key, index), parts = grouped
            if not list(parts["planned"]):
                raise AssertionError(f"records reached unplanned batch {key}/{index}")
            members = tuple(sorted(parts["members"], key=lambda r: (r.record_id, r.source)))
            return Batch(batch_id(key, index), key[0], key[1], members)

        # Counted once from the release, not once per record.
        batch_counts = self._release | "BatchCounts" >> beam.Map(lambda r: r.batch_counts(s))
        planned_keys = self._release | "PlannedBatches" >> beam.FlatMap(
            lambda r: [(planned, None) for planned in planned_batches(r, s)])
        members = clustered | "HashIntoBatches" >> beam.FlatMap(
            to_batch_key, beam.pvalue.AsSingleton(batch_counts))
        return ({"planned": planned_keys, "members": members}
                | "GroupByBatch" >> beam.CoGroupByKey()
                | "ToBatch" >> beam.Map(to_batch))

