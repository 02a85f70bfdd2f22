"""The CombineFns give the same result however Beam splits and merges a batch."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from transforms import aggregation as agg
from transforms.aggregation_combine_fns import (AggregateResult, ClippedMeanCombineFn,
                                                PrivateMedianCombineFn)

C, S, VOCAB = 3.0, 4, 16


def _logits(rng, n):
    logits = rng.normal(scale=4.0, size=(n, VOCAB))
    return agg.apply_mask(logits, agg.top_k_mask(rng.normal(size=VOCAB), 10))


def _expected(fn, logits):
    clipped = agg.clip_logits(logits, C)
    if isinstance(fn, ClippedMeanCombineFn):
        return AggregateResult(agg.mean_aggregate(clipped, S), C / S, len(logits))
    return AggregateResult(agg.median_aggregate(clipped),
                           agg.median_local_sensitivity(clipped, C), len(logits))


def _combine_in_parts(fn, logits, rng, parts):
    """Splits the inputs at random (empty parts included), then merges in a
    random order and grouping, as Beam may."""
    labels = rng.integers(parts, size=len(logits))
    accumulators = []
    for part in range(parts):
        accumulator = fn.create_accumulator()
        for row in logits[labels == part]:
            accumulator = fn.add_input(accumulator, row)
        accumulators.append(accumulator)
    rng.shuffle(accumulators)
    while len(accumulators) > 1:
        take = int(rng.integers(2, len(accumulators) + 1))
        accumulators = [fn.merge_accumulators(accumulators[:take])] + accumulators[take:]
    return fn.extract_output(fn.compact(accumulators[0]))


def _assert_same(result, expected):
    np.testing.assert_allclose(result.aggregate, expected.aggregate, rtol=0, atol=1e-12)
    assert result.local_sensitivity == expected.local_sensitivity
    assert result.member_count == expected.member_count


@pytest.mark.parametrize("make_fn", [lambda: ClippedMeanCombineFn(C, S),
                                     lambda: PrivateMedianCombineFn(C)])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
def test_result_does_not_depend_on_partitioning_or_merge_order(make_fn, n):
    rng = np.random.default_rng(n)
    logits = _logits(rng, n)
    fn = make_fn()
    expected = _expected(fn, logits)
    for parts in (1, 2, 3, 5):
        for _ in range(3):
            _assert_same(_combine_in_parts(fn, logits, rng, parts), expected)


def test_median_accumulator_holds_the_clipped_members_exactly():
    rng = np.random.default_rng(3)
    logits = _logits(rng, 6)
    fn = PrivateMedianCombineFn(C)
    result = _combine_in_parts(fn, logits, rng, 3)
    np.testing.assert_array_equal(result.aggregate,
                                  agg.median_aggregate(agg.clip_logits(logits, C)))


def test_mean_sensitivity_is_the_data_independent_c_over_s():
    result = _combine_in_parts(ClippedMeanCombineFn(C, S), _logits(np.random.default_rng(4), 3),
                               np.random.default_rng(5), 2)
    assert result.local_sensitivity == C / S


def test_an_empty_batch_releases_zeros_when_the_vocabulary_is_known():
    mean = ClippedMeanCombineFn(C, S, vocab_size=VOCAB)
    median = PrivateMedianCombineFn(C, vocab_size=VOCAB)
    for fn, sensitivity in ((mean, C / S), (median, C)):
        merged = fn.merge_accumulators([fn.create_accumulator(), fn.create_accumulator()])
        result = fn.extract_output(merged)
        np.testing.assert_array_equal(result.aggregate, np.zeros(VOCAB))
        assert (result.local_sensitivity, result.member_count) == (sensitivity, 0)
    with pytest.raises(ValueError, match="vocab_size"):
        PrivateMedianCombineFn(C).extract_output(PrivateMedianCombineFn(C).create_accumulator())


def test_combine_per_key_on_the_fn_api_runner_matches_direct_computation():
    rng = np.random.default_rng(9)
    batches = {"b0": _logits(rng, 7), "b1": _logits(rng, 2), "b2": _logits(rng, 4)}
    inputs = [(key, row) for key, rows in batches.items() for row in rows]
    rng.shuffle(inputs)

    def matches(fn):
        def check(actual):
            actual = dict(actual)
            assert sorted(actual) == sorted(batches)
            for key, result in actual.items():
                _assert_same(result, _expected(fn, batches[key]))
        return check

    with test_pipeline.TestPipeline(runner="FnApiRunner") as pipeline:
        keyed = pipeline | beam.Create(inputs, reshuffle=False)
        for label, fn in (("Mean", ClippedMeanCombineFn(C, S)),
                          ("Median", PrivateMedianCombineFn(C))):
            combined = keyed | f"{label} per batch" >> beam.CombinePerKey(fn)
            assert_that(combined, matches(fn), label=f"Check {label}")
