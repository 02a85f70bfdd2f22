"""Clipping and the token rules: the top-k mask, the clip, the mean rule, and
sampling by the exponential mechanism (METHOD.md §4).

The median rule is in `mechanisms.median`, the public-token gate in
`mechanisms.gate`. Each rule has one implementation and one brute-force test;
the derivations are in docs/privacy.md.

Shapes: a logit vector is (V,), a batch of member vectors is (n, V); the last
axis is always the vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike


# The aggregation rules of logit aggregation (docs/privacy.md).
RULES = ("mean", "median", "median_ptr")


def require_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}.")
    return value


def as_batch(clipped: ArrayLike) -> np.ndarray:
    batch = np.asarray(clipped, dtype=np.float64)
    if batch.ndim != 2:
        raise ValueError(
            f"Expected a batch of shape (members, vocabulary), got {batch.shape}.")
    return batch


# ------------------------------------------------------------------ clipping


def clip_logits(logits: ArrayLike, c: float) -> np.ndarray:
    """Re-centred clip: clip_c(z)_i = max(-c, z_i - max_k z_k + c).

    The top token maps to c and everything lies in [-c, c]. Entries equal to
    -inf (tokens removed by `apply_mask`) take no part in the max and land on
    the floor -c: a masked token never takes the top of the range, and every
    clipped vector stays inside [-c, c]^V, which is all the sensitivity
    analysis assumes.
    """
    c = require_positive("The clip c", c)
    z = np.asarray(logits, dtype=np.float64)
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ValueError("Logits must be finite or -inf (masked); got NaN or +inf.")
    top = z.max(axis=-1, keepdims=True)
    if np.isneginf(top).any():
        raise ValueError("Every token is masked: nothing is left to clip.")
    return np.maximum(-c, z - top + c)


# ---------------------------------------------------------------- top-k mask


def top_k_mask(public_logits: ArrayLike, k: int | None) -> np.ndarray:
    """Boolean mask (True = kept) of the k tokens with the largest public logits.

    It reads public logits only, so it costs no privacy. `k=None` or k >= V
    keeps the whole vocabulary.
    """
    z = np.asarray(public_logits, dtype=np.float64)
    if z.ndim != 1:
        raise ValueError(f"Public logits must be one vector (V,), got {z.shape}.")
    if k is None or k >= z.size:
        return np.ones(z.size, dtype=bool)
    if k < 1:
        raise ValueError(f"top-k must keep at least one token, got k={k}.")
    mask = np.zeros(z.size, dtype=bool)
    mask[np.argpartition(-z, k - 1)[:k]] = True
    return mask


def apply_mask(values: ArrayLike, mask: np.ndarray | None) -> np.ndarray:
    """Sets masked tokens to -inf.

    Apply it to the raw logits before `clip_logits`, so that the clip's max
    runs over kept tokens only, and again to the aggregate before
    `sample_token`, so that a masked token has probability 0 (an empty batch's
    aggregate carries no mask of its own).
    """
    values = np.asarray(values, dtype=np.float64)
    if mask is None:
        return values
    return np.where(mask, values, -np.inf)


# ----------------------------------------------------------------- mean rule


def mean_sensitivity(c: float, expected_batch_size: float) -> float:
    """Largest move of any coordinate of the mean when one member comes or goes."""
    return require_positive("The clip c", c) / require_positive(
        "The expected batch size", expected_batch_size)


def mean_from_sum(clipped_sum: ArrayLike, expected_batch_size: float) -> np.ndarray:
    """The mean rule from a running sum of clipped vectors.

    Dividing by the expected size s, not by the member count, keeps the
    sensitivity at c/s whatever the batch's actual size.
    """
    s = require_positive("The expected batch size", expected_batch_size)
    return np.asarray(clipped_sum, dtype=np.float64) / s


def mean_aggregate(clipped: ArrayLike, expected_batch_size: float) -> np.ndarray:
    """(1/s) * sum_j clip_c(z_j); an empty batch gives the zero vector."""
    return mean_from_sum(as_batch(clipped).sum(axis=0), expected_batch_size)


# ----------------------------------------------------- exponential mechanism


def exponential_mechanism_rho(sensitivity: float, tau: float) -> float:
    """zCDP of sampling softmax(a / tau) when each a_i moves by <= sensitivity.

    The log-probability ratio of the tokens then spans at most
    eta = 2 * sensitivity / tau, and a mechanism whose privacy loss spans at
    most eta is eta^2/8-zCDP (Cesar and Rogers 2021).
    """
    tau = require_positive("The temperature tau", tau)
    sensitivity = float(sensitivity)
    if sensitivity < 0:
        raise ValueError(f"A sensitivity cannot be negative, got {sensitivity}.")
    eta = 2.0 * sensitivity / tau
    return eta * eta / 8.0


def token_rho_mean(c: float, s: float, tau: float) -> float:
    """Per-token zCDP of the mean rule, c^2 / (2 s^2 tau^2); data-independent."""
    return exponential_mechanism_rho(mean_sensitivity(c, s), tau)


def softmax(values: ArrayLike, tau: float = 1.0) -> np.ndarray:
    """softmax(values / tau) over the last axis, in float64; -inf gets 0."""
    tau = require_positive("The temperature tau", tau)
    x = np.asarray(values, dtype=np.float64) / tau
    top = x.max(axis=-1, keepdims=True)
    if np.isnan(x).any() or not np.isfinite(top).all():
        raise ValueError("softmax needs at least one finite value and no NaN.")
    weights = np.exp(x - top)
    return weights / weights.sum(axis=-1, keepdims=True)


def sample_token(aggregate: ArrayLike, tau: float, rng: np.random.Generator) -> int:
    """Exponential mechanism: a token id drawn from softmax(aggregate / tau)."""
    probabilities = softmax(aggregate, tau)
    if probabilities.ndim != 1:
        raise ValueError("sample_token takes one aggregate vector (V,).")
    return int(rng.choice(probabilities.size, p=probabilities))


# ------------------------------------------------------- one batch's aggregate
#
# The aggregators take RAW logit vectors (masked tokens already at -inf, see
# `apply_mask`) and clip them themselves, so no path can aggregate an unclipped
# vector and the clip c that bounds the sensitivity is the one they report.
# They have the create/add/merge/extract shape of a combiner, so a batch can be
# aggregated in parts.


class AggregateResult(NamedTuple):
    """One batch's aggregate and what accounting needs about it.

    `local_sensitivity` bounds how far any coordinate of `aggregate` moves when
    one member is added or removed: c/s for the mean (data-independent), the
    exact local sensitivity for the median (data-dependent, ex-post only).
    """
    aggregate: np.ndarray
    local_sensitivity: float
    member_count: int


def empty_batch(vocab_size: int | None) -> np.ndarray:
    if vocab_size is None:
        raise ValueError("This batch has no members: give the aggregator "
                         "vocab_size so that it can release the empty aggregate.")
    return np.zeros((0, vocab_size))


class ClippedMeanAggregator:
    """(1/s) * sum of clipped logits; accumulator (running sum or None, count)."""

    def __init__(self, c: float, expected_batch_size: float, *,
                 vocab_size: int | None = None):
        self._sensitivity = mean_sensitivity(c, expected_batch_size)
        self._c = float(c)
        self._expected_batch_size = float(expected_batch_size)
        self._vocab_size = vocab_size

    def create_accumulator(self):
        return None, 0

    def add_input(self, accumulator, logits):
        clipped_sum, count = accumulator
        clipped = clip_logits(logits, self._c)
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
            aggregate = mean_aggregate(
                empty_batch(self._vocab_size), self._expected_batch_size)
        else:
            aggregate = mean_from_sum(clipped_sum, self._expected_batch_size)
        return AggregateResult(aggregate, self._sensitivity, count)
