import collections

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from transforms.assign_to_batches import AssignToBatches
from mechanisms.assign_to_batches import batch_of, planned_batch_count
from transforms.cluster import ClusterRelease
from transforms.read import Record


def test_planned_batch_count_floors_and_never_goes_negative():
    assert [planned_batch_count(x, 8) for x in (-3.2, 0, 7.99, 8, 23.9, 24.0)] == [0, 0, 0, 1, 2, 3]
    with pytest.raises(ValueError):
        planned_batch_count(10, 0)


def test_batch_of_is_keyed_deterministic_and_roughly_uniform():
    ids = [f"r{i}" for i in range(4000)]
    first = [batch_of("k1", i, 8) for i in ids]
    assert first == [batch_of("k1", i, 8) for i in ids]
    assert first != [batch_of("k2", i, 8) for i in ids]
    counts = np.bincount(first, minlength=8)
    # 4000 draws into 8 cells: each within 5 standard deviations of 500.
    assert np.all(np.abs(counts - 500) < 5 * np.sqrt(500 * 7 / 8))


def test_every_record_lands_in_exactly_one_planned_batch():
    release = ClusterRelease(
        centres={"a": np.zeros((1, 1)), "b": np.zeros((1, 1))},
        usable={"a": np.array([0]), "b": np.array([0])},
        noisy_counts={("a", 0): 41.7, ("b", 0): 3.0})   # a: 5 batches, b: none
    records = [Record(f"r{i}", "t", "a" if i < 60 else "b", source=f"f:{i}") for i in range(70)]

    def check(batches):
        assert len(batches) == 5
        assert sorted(b.batch_id for b in batches) == [f"a/c0/b{i}" for i in range(5)]
        members = collections.Counter(m.record_id for b in batches for m in b.members)
        assert set(members) == {f"r{i}" for i in range(60)}
        assert set(members.values()) == {1}
        for batch in batches:
            index = int(batch.batch_id.rsplit("b", 1)[1])
            assert all(batch_of("s", m.record_id, 5) == index for m in batch.members)

    with TestPipeline(runner="FnApiRunner") as p:
        release_pc = p | "Release" >> beam.Create([release])
        clustered = p | "Records" >> beam.Create([((r.label, 0), r) for r in records])
        batches = clustered | AssignToBatches(release_pc, expected_batch_size=8, secret="s")
        assert_that(batches, check)


def test_planned_batches_come_out_even_when_empty():
    release = ClusterRelease(centres={None: np.zeros((1, 1))}, usable={None: np.array([0])},
                             noisy_counts={(None, 0): 32.0})

    def check(batches):
        assert len(batches) == 4
        assert all(b.members == () for b in batches)

    with TestPipeline(runner="FnApiRunner") as p:
        release_pc = p | "Release" >> beam.Create([release])
        clustered = p | "NoRecords" >> beam.Create([]).with_output_types(tuple)
        assert_that(clustered | AssignToBatches(release_pc, expected_batch_size=8, secret="s"),
                    check)
