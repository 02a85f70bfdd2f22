"""Beam CombineFns for the two aggregation rules of METHOD.md §4.

Inputs are RAW logit vectors (with masked tokens already at -inf, see
`aggregation.apply_mask`): the CombineFn clips them itself, so no path can
aggregate an unclipped vector and the clip c that bounds the sensitivity is the
one the CombineFn reports. All the math lives in `aggregation`.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
import numpy as np

from transforms import aggregation


class AggregateResult(NamedTuple):
    """One batch's aggregate and what accounting needs about it.

    `local_sensitivity` bounds how far any coordinate of `aggregate` moves when
    one member is added or removed: c/s for the mean (data-independent), the
    exact local sensitivity for the median (data-dependent, ex-post only).
    """
    aggregate: np.ndarray
    local_sensitivity: float
    member_count: int


def _empty_batch(vocab_size: int | None) -> np.ndarray:
    if vocab_size is None:
        raise ValueError("This batch has no members: give the CombineFn "
                         "vocab_size so that it can release the empty aggregate.")
    return np.zeros((0, vocab_size))


class ClippedMeanCombineFn(beam.CombineFn):
    """(1/s) * sum of clipped logits; accumulator (running sum or None, count)."""

    def __init__(self, c: float, expected_batch_size: float, *,
                 vocab_size: int | None = None):
        super().__init__()
        self._sensitivity = aggregation.mean_sensitivity(c, expected_batch_size)
        self._c = float(c)
        self._expected_batch_size = float(expected_batch_size)
        self._vocab_size = vocab_size

    def create_accumulator(self):
        return None, 0

    def add_input(self, accumulator, logits):
        clipped_sum, count = accumulator
        clipped = aggregation.clip_logits(logits, self._c)
        if clipped_sum is None:
            return clipped, count + 1
        clipped_sum += clipped
        return clipped_sum, count + 1

    def merge_accumulators(self, accumulators):
        total, count = None, 0
        for clipped_sum, n in accumulators:
            count += n
            if clipped_sum is None:
                continue
            total = clipped_sum.copy() if total is None else total + clipped_sum
        return total, count

    def extract_output(self, accumulator) -> AggregateResult:
        clipped_sum, count = accumulator
        if clipped_sum is None:
            aggregate = aggregation.mean_aggregate(
                _empty_batch(self._vocab_size), self._expected_batch_size)
        else:
            aggregate = aggregation.mean_from_sum(clipped_sum, self._expected_batch_size)
        return AggregateResult(aggregate, self._sensitivity, count)


class PrivateMedianCombineFn(beam.CombineFn):
    """Coordinate-wise lower median of clipped logits and its local sensitivity.

    The accumulator is the (members, V) array of clipped vectors: a median
    cannot be merged from smaller summaries, and batches hold a few members.
    """

    def __init__(self, c: float, *, vocab_size: int | None = None):
        super().__init__()
        self._c = float(c)
        self._vocab_size = vocab_size

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, logits):
        clipped = aggregation.clip_logits(logits, self._c)[np.newaxis]
        if accumulator is None:
            return clipped
        return np.concatenate([accumulator, clipped])

    def merge_accumulators(self, accumulators):
        members = [a for a in accumulators if a is not None]
        return np.concatenate(members) if members else None

    def extract_output(self, accumulator) -> AggregateResult:
        members = _empty_batch(self._vocab_size) if accumulator is None else accumulator
        return AggregateResult(
            aggregation.median_aggregate(members),
            aggregation.median_local_sensitivity(members, self._c),
            members.shape[0])
