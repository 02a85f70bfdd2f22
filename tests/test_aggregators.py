"""The aggregators give the same result however a batch is split and merged."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from mechanisms import median, token_rules
from mechanisms.token_rules import AggregateResult, ClippedMeanAggregator
from mechanisms.median import MedianAggregator

C, S, VOCAB = 3.0, 4, 16


def _logits(rng, n):
    logits = rng.normal(scale=4.0, size=(n, VOCAB))
    return token_rules.apply_mask(logits, token_rules.top_k_mask(rng.normal(size=VOCAB), 10))


def _expected(fn, logits):
    clipped = token_rules.clip_logits(logits, C)
    if isinstance(fn, ClippedMeanAggregator):
        return AggregateResult(token_rules.mean_aggregate(clipped, S), C / S, len(logits))
    return AggregateResult(median.median_aggregate(clipped),
                           median.median_local_sensitivity(clipped, C), len(logits))


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
    return fn.extract_output(accumulators[0])


def _assert_same(result, expected):
    np.testing.assert_allclose(result.aggregate, expected.aggregate, rtol=0, atol=1e-12)
    assert result.local_sensitivity == expected.local_sensitivity
    assert result.member_count == expected.member_count


@pytest.mark.parametrize("make_fn", [lambda: ClippedMeanAggregator(C, S),
                                     lambda: MedianAggregator(C)])
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
    fn = MedianAggregator(C)
    result = _combine_in_parts(fn, logits, rng, 3)
    np.testing.assert_array_equal(result.aggregate,
                                  median.median_aggregate(token_rules.clip_logits(logits, C)))


def test_mean_sensitivity_is_the_data_independent_c_over_s():
    result = _combine_in_parts(ClippedMeanAggregator(C, S), _logits(np.random.default_rng(4), 3),
                               np.random.default_rng(5), 2)
    assert result.local_sensitivity == C / S


def test_an_empty_batch_releases_zeros_when_the_vocabulary_is_known():
    mean = ClippedMeanAggregator(C, S, vocab_size=VOCAB)
    median = MedianAggregator(C, vocab_size=VOCAB)
    for fn, sensitivity in ((mean, C / S), (median, C)):
        merged = fn.merge_accumulators([fn.create_accumulator(), fn.create_accumulator()])
        result = fn.extract_output(merged)
        np.testing.assert_array_equal(result.aggregate, np.zeros(VOCAB))
        assert (result.local_sensitivity, result.member_count) == (sensitivity, 0)
    with pytest.raises(ValueError, match="vocab_size"):
        MedianAggregator(C).extract_output(MedianAggregator(C).create_accumulator())


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
        for label, fn in (("Mean", ClippedMeanAggregator(C, S)),
                          ("Median", MedianAggregator(C))):
            combined = keyed | f"{label} per batch" >> beam.CombinePerKey(_AsCombineFn(fn))
            assert_that(combined, matches(fn), label=f"Check {label}")


class _AsCombineFn(beam.CombineFn):
    """An aggregator run by Beam's combiner machinery, which may split a batch anywhere."""

    def __init__(self, aggregator):
        super().__init__()
        self._aggregator = aggregator

    def create_accumulator(self):
        return self._aggregator.create_accumulator()

    def add_input(self, accumulator, row):
        return self._aggregator.add_input(accumulator, row)

    def merge_accumulators(self, accumulators):
        return self._aggregator.merge_accumulators(accumulators)

    def extract_output(self, accumulator):
        return self._aggregator.extract_output(accumulator)
