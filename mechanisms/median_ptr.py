"""The median rule with a formal, data-independent guarantee: propose-test-release.

Plain numpy, no Beam. The rule proposes a bound b on the median's local
sensitivity and tests, privately, that the batch is far from any batch whose
local sensitivity exceeds b:

- `distance_to_instability` is gamma, the least number of additions or
  removals after which the coordinate-wise lower median's local sensitivity
  exceeds b. It moves by at most 1 between adjacent batches.
- `StabilityTest` runs ONE sparse-vector (AboveThreshold) instance over the
  steps of a sequence: gamma + Lap(2 sigma) against a threshold T + Lap(sigma),
  drawn once. The sequence samples from the median while the test passes; the
  first failure ends the test for good.
- `pass_probability_at_instability` is the chance of passing while gamma = 0,
  the delta the guarantee pays per step.

The proof sketch is in docs/privacy.md, "The median with a formal guarantee".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import ArrayLike

from mechanisms.token_rules import require_positive

FALLBACKS = ("mean", "stop")
# The share of the run's delta that the stability test may spend; the rest
# converts the composed Renyi curve to epsilon.
TEST_DELTA_SHARE = 0.5


# ---------------------------------------------------------- distance to instability
#
# Every batch within k edits has the form: the originals minus some removed
# ones, plus x copies of -c and y copies of +c (values strictly inside the clip
# range never help the adversary: an added point can only split a gap or shift
# the median position, and the extremes shift it without splitting anything).
# For a final size n'' >= 2 the lower median's local sensitivity is the gap
# u_{p+1} - u_p with p = floor(n''/2) (aggregation.median_local_sensitivity).
# To open a gap between endpoints L < U one removes every original strictly
# between them and balances the counts below and above; see `_pair_costs`.
# Final sizes 0 and 1 have their own local sensitivities and are checked apart.


def _pair_costs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i, j) of the padded sorted column and the edits each needs.

    Positions 1..n are the sorted originals, 0 is a -c and n+1 a +c that must be
    added. With endpoints L = v_i and U = v_j the originals i+1..j-1 go, and the
    batch needs as many elements above U as at or below L, or one more above
    (n'' even or odd); each unit of imbalance costs one more edit.
    """
    i, j = np.triu_indices(n + 2, k=1)
    between = j - i - 1
    padding = (i == 0).astype(int) + (j == n + 1).astype(int)
    below = np.where(i == 0, 1, i)
    above = np.where(j == n + 1, 1, n - j + 1)
    imbalance = above - below
    balance = np.minimum(np.abs(imbalance), np.abs(imbalance - 1))
    return i, j, between + padding + balance


def distance_to_instability(clipped: ArrayLike, c: float, bound: float) -> int:
    """gamma: least number of additions or removals of members (each a vector in
    [-c, c]^V) after which `median_local_sensitivity` exceeds `bound`.

    `clipped` is the (members, V) output of `clip_logits` with the same c,
    restricted to the coordinates that can differ between neighbours (the
    top-k kept tokens when a public mask is in force: masked tokens are -c for
    every member, present or added).
    """
    c = require_positive("The clip c", c)
    bound = float(bound)
    if not np.isfinite(bound) or bound < 0:
        raise ValueError(f"The proposed sensitivity bound must be >= 0, got {bound}.")
    batch = np.asarray(clipped, dtype=np.float64)
    if batch.ndim != 2:
        raise ValueError(f"Expected a batch of shape (members, vocabulary), got {batch.shape}.")
    if batch.size and (batch.min() < -c or batch.max() > c):
        raise ValueError("gamma needs values in [-c, c]: pass the output of clip_logits.")
    n = batch.shape[0]
    candidates = []
    # Final size 0 (remove everything): the empty batch's sensitivity is c.
    if c > bound:
        candidates.append(n)
    # Final size 1 keeping the member v: sensitivity max(v + c, |v|) in some coordinate.
    if n >= 1:
        single = np.maximum(batch + c, np.abs(batch)).max(axis=1)
        if (single > bound).any():
            candidates.append(n - 1)
    # Final size 1 holding an added +c: sensitivity 2c.
    if 2 * c > bound:
        candidates.append(n + 1)
    # Final sizes >= 2: a gap at the median position.
    if batch.shape[1]:
        padded = np.concatenate([np.full((1, batch.shape[1]), -c), np.sort(batch, axis=0),
                                 np.full((1, batch.shape[1]), c)])
        i, j, cost = _pair_costs(n)
        opens = (padded[j] - padded[i]).max(axis=1) > bound
        if opens.any():
            candidates.append(int(cost[opens].min()))
    if not candidates:
        raise ValueError(f"The bound {bound} is at least 2c = {2 * c}: no batch exceeds it, "
                         "so there is nothing to test.")
    return int(min(candidates))


# ------------------------------------------------------------- the sparse vector


def svt_noise_scale(svt_epsilon: float) -> float:
    """sigma of the threshold noise Lap(sigma); queries get Lap(2 sigma).

    With queries of sensitivity 1, AboveThreshold is then (1/sigma + 1/sigma) =
    (2/sigma)-DP (Dwork and Roth 2014, Theorem 3.23, with epsilon split evenly).
    """
    return 2.0 / require_positive("The stability test's epsilon", svt_epsilon)


def laplace_difference_tail(t: float, query_scale: float, threshold_scale: float) -> float:
    """P(X - Y > t) for independent X ~ Lap(query_scale), Y ~ Lap(threshold_scale).

    X - Y has the law of X + Y; for scales a != b its density is
    (a e^{-|z|/a} - b e^{-|z|/b}) / (2 (a^2 - b^2)), whose tail from t >= 0 is
    (a^2 e^{-t/a} - b^2 e^{-t/b}) / (2 (a^2 - b^2)).
    """
    a = require_positive("The query noise scale", query_scale)
    b = require_positive("The threshold noise scale", threshold_scale)
    if t < 0:
        return 1.0 - laplace_difference_tail(-t, a, b)
    if math.isclose(a, b):
        return math.exp(-t / a) * (2.0 + t / a) / 4.0
    return (a * a * math.exp(-t / a) - b * b * math.exp(-t / b)) / (2.0 * (a * a - b * b))


def pass_probability_at_instability(threshold: float, noise_scale: float) -> float:
    """Chance that one step passes the test although gamma = 0."""
    return laplace_difference_tail(threshold, 2.0 * noise_scale, noise_scale)


def threshold_for_delta(*, noise_scale: float, max_tokens: int, delta: float) -> float:
    """Smallest threshold T at which max_tokens steps pass at gamma = 0 with total
    probability at most delta (a union bound over the steps)."""
    require_positive("delta", delta)
    per_step = delta / int(max_tokens)
    low, high = 0.0, 1.0
    while pass_probability_at_instability(high, noise_scale) > per_step:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if pass_probability_at_instability(middle, noise_scale) > per_step:
            low = middle
        else:
            high = middle
    return high


def ptr_delta(*, threshold: float, noise_scale: float, max_tokens: int) -> float:
    """The delta term of a sequence: its steps' chances of passing at gamma = 0."""
    return int(max_tokens) * pass_probability_at_instability(threshold, noise_scale)


class StabilityTest:
    """One AboveThreshold instance over the steps of one batch's sequence.

    The noisy threshold is drawn once. Each `passes(gamma, rng)` compares
    gamma + Lap(2 sigma) with it; the first failure is final (the sparse
    vector halts), and later calls raise. Noise comes from the generators
    passed in, keyed by (secret, stage, batch, step) by the caller, so a
    retried step repeats itself.
    """

    def __init__(self, *, threshold: float, noise_scale: float, rng: np.random.Generator):
        self.threshold = float(threshold)
        self.noise_scale = require_positive("The stability test's noise scale", noise_scale)
        self.failed = False
        self.passed_steps = 0
        self._noisy_threshold = self.threshold + rng.laplace(0.0, self.noise_scale)

    def passes(self, gamma: float, rng: np.random.Generator) -> bool:
        if self.failed:
            raise RuntimeError("The stability test has already failed; it answers no more.")
        if gamma + rng.laplace(0.0, 2.0 * self.noise_scale) > self._noisy_threshold:
            self.passed_steps += 1
            return True
        self.failed = True
        return False


# -------------------------------------------------------------- run settings


@dataclasses.dataclass(frozen=True)
class PtrSettings:
    """The proposed bound, the test's noise and threshold, and what follows a failure.

    `for_run` derives the threshold from the delta the test may spend, so the
    chooser and the ledger always use the same numbers.
    """
    bound: float
    noise_scale: float
    threshold: float
    fallback: str = "mean"

    def __post_init__(self):
        require_positive("The proposed sensitivity bound b", self.bound)
        require_positive("The stability test's noise scale", self.noise_scale)
        if self.fallback not in FALLBACKS:
            raise ValueError(f"Unknown fallback {self.fallback!r}; use one of {FALLBACKS}.")

    @classmethod
    def for_run(cls, *, bound: float, svt_epsilon: float, fallback: str, max_tokens: int,
                delta: float) -> "PtrSettings":
        noise_scale = svt_noise_scale(svt_epsilon)
        threshold = threshold_for_delta(noise_scale=noise_scale, max_tokens=max_tokens,
                                        delta=delta)
        return cls(bound=bound, noise_scale=noise_scale, threshold=threshold,
                   fallback=fallback)

    @property
    def svt_epsilon(self) -> float:
        return 2.0 / self.noise_scale

    def delta(self, max_tokens: int) -> float:
        return ptr_delta(threshold=self.threshold, noise_scale=self.noise_scale,
                         max_tokens=max_tokens)
