"""The median rule and its local sensitivity (METHOD.md §4, the 2025 method).

The released aggregate is the coordinate-wise lower median of the batch's
clipped logits; its local sensitivity gives the ex-post cost, and 2c the
formal worst case (docs/privacy.md, "Median rule").
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from mechanisms.token_rules import (AggregateResult, as_batch, clip_logits, empty_batch,
                                    exponential_mechanism_rho, require_positive)

# Convention: the LOWER median, the ceil(n/2)-th smallest value (0-based index
# (n-1)//2). The released value is then always an order statistic, so the
# medians of all neighbours are exactly the adjacent order statistics and the
# local sensitivity of a coordinate is a single gap (docs/privacy.md).
# An empty batch releases the zero vector: sampling is then uniform over the
# kept tokens.


def median_aggregate(clipped: ArrayLike) -> np.ndarray:
    """Coordinate-wise lower median over the batch's actual members."""
    batch = as_batch(clipped)
    n = batch.shape[0]
    if n == 0:
        return np.zeros(batch.shape[1])
    k = (n - 1) // 2
    return np.partition(batch, k, axis=0)[k]


def median_worst_case_sensitivity(c: float) -> float:
    """Data-independent bound on the median's move: from c down to -c."""
    return 2.0 * require_positive("The clip c", c)


def median_local_sensitivity(clipped: ArrayLike, c: float) -> float:
    """Exact largest move of any coordinate of `median_aggregate` under one
    addition (of any vector in [-c, c]^V) or one removal.

    With the sorted values v_1 <= ... <= v_n of a coordinate and the lower
    median v_k, k = ceil(n/2):
      n odd >= 3:  the neighbours' medians fill [v_{k-1}, v_k] -> v_k - v_{k-1};
      n even >= 2: the neighbours' medians fill [v_k, v_{k+1}] -> v_{k+1} - v_k;
      n = 1: adding -c gives min(v_1, -c) = -c (the clip bound as padding)
             and removing gives the empty batch's 0 -> max(v_1 + c, |v_1|);
      n = 0: adding y releases y -> c.
    """
    c = require_positive("The clip c", c)
    batch = as_batch(clipped)
    n = batch.shape[0]
    if n == 0:
        return c
    if batch.min() < -c or batch.max() > c:
        raise ValueError("The median's sensitivity needs values in [-c, c]: "
                         "pass the output of clip_logits with the same c.")
    if n == 1:
        v = batch[0]
        return float(np.max(np.maximum(v + c, np.abs(v))))
    ordered = np.sort(batch, axis=0)
    k = (n - 1) // 2
    if n % 2:
        gaps = ordered[k] - ordered[k - 1]
    else:
        gaps = ordered[k + 1] - ordered[k]
    return float(gaps.max())


def token_rho_median(local_sensitivity: float, tau: float) -> float:
    """Ex-post per-token zCDP of the median rule, LS^2 / (2 tau^2)."""
    return exponential_mechanism_rho(local_sensitivity, tau)


class MedianAggregator:
    """Coordinate-wise lower median of clipped logits and its local sensitivity.

    The accumulator is the (members, V) array of clipped vectors: a median
    cannot be merged from smaller summaries, and batches hold a few members.
    """

    def __init__(self, c: float, *, vocab_size: int | None = None):
        self._c = float(c)
        self._vocab_size = vocab_size

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, logits):
        clipped = clip_logits(logits, self._c)[np.newaxis]
        if accumulator is None:
            return clipped
        return np.concatenate([accumulator, clipped])

    def merge_accumulators(self, accumulators):
        members = [a for a in accumulators if a is not None]
        return np.concatenate(members) if members else None

    def extract_output(self, accumulator) -> AggregateResult:
        members = empty_batch(self._vocab_size) if accumulator is None else accumulator
        return AggregateResult(
            median_aggregate(members),
            median_local_sensitivity(members, self._c),
            members.shape[0])
