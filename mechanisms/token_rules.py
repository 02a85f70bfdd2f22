"""Private next-token aggregation: clipping, mean and median rules, sampling.

Plain numpy, no Beam: the CombineFns in `aggregation_combine_fns` and the
generation loop call these functions, so each rule has one implementation and
one brute-force test. The derivations are in docs/privacy.md; the method is
METHOD.md §4.

Shapes: a logit vector is (V,), a batch of member vectors is (n, V); the last
axis is always the vocabulary.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


# The aggregation rules of logit aggregation (docs/privacy.md).
RULES = ("mean", "median", "median_ptr")


def require_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}.")
    return value


def _as_batch(clipped: ArrayLike) -> np.ndarray:
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
    return mean_from_sum(_as_batch(clipped).sum(axis=0), expected_batch_size)


# --------------------------------------------------------------- median rule
#
# Convention: the LOWER median, the ceil(n/2)-th smallest value (0-based index
# (n-1)//2). The released value is then always an order statistic, so the
# medians of all neighbours are exactly the adjacent order statistics and the
# local sensitivity of a coordinate is a single gap (docs/privacy.md).
# An empty batch releases the zero vector: sampling is then uniform over the
# kept tokens.


def median_aggregate(clipped: ArrayLike) -> np.ndarray:
    """Coordinate-wise lower median over the batch's actual members."""
    batch = _as_batch(clipped)
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
    batch = _as_batch(clipped)
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


def token_rho_median(local_sensitivity: float, tau: float) -> float:
    """Ex-post per-token zCDP of the median rule, LS^2 / (2 tau^2)."""
    return exponential_mechanism_rho(local_sensitivity, tau)


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


# ------------------------------------------------ public-token gate (SVT)


def gate_distance(member_logits: ArrayLike, public_logits: ArrayLike,
                  expected_batch_size: float) -> float:
    """d = || (1/s) sum_j softmax(z_j) - softmax(z_pub) ||_1.

    Masked (-inf) logits get probability 0 on both sides. One member more or
    less moves d by at most 1/s (triangle inequality, ||softmax(z)||_1 = 1).
    """
    members = _as_batch(member_logits)
    s = require_positive("The expected batch size", expected_batch_size)
    public = softmax(public_logits)
    if members.shape[0] == 0:
        return float(np.abs(public).sum())
    private = softmax(members).sum(axis=0) / s
    return float(np.abs(private - public).sum())


def gate_rho_per_private_token(noise_scale: float, expected_batch_size: float) -> float:
    """zCDP the gate spends per private token: 2 / (s * sigma)^2.

    Each private token ends one AboveThreshold round with threshold noise
    Lap(sigma) and query noise Lap(2 sigma) on a query of sensitivity 1/s; such
    a round is (2 / (s sigma))-DP, hence eps^2/2-zCDP (Bun and Steinke 2016).
    """
    sigma = require_positive("The gate noise scale", noise_scale)
    s = require_positive("The expected batch size", expected_batch_size)
    epsilon = 2.0 / (s * sigma)
    return epsilon * epsilon / 2.0


class PublicTokenGate:
    """Sparse-vector gate of one batch's sequence (METHOD.md §4, item 2).

    Before each token, `use_private_token(d, rng)` compares d + Lap(2 sigma)
    with the noisy threshold theta + Lap(sigma). At or above it, the caller
    spends a private token sampled from the aggregate; below it, the caller
    emits a free token from softmax(z_pub / tau_pub). The threshold is redrawn
    after private tokens only: each private token then closes one
    AboveThreshold round, and the rounds are what the accounting counts.
    Noise comes from the generator passed in, so a generator keyed by
    (secret, stage, batch, step) makes a retried step repeat itself.
    """

    def __init__(self, *, threshold: float, noise_scale: float,
                 max_private_tokens: int, rng: np.random.Generator):
        if int(max_private_tokens) < 1:
            raise ValueError("The cap on private tokens must be at least 1, got "
                             f"{max_private_tokens}.")
        self.threshold = float(threshold)
        self.noise_scale = require_positive("The gate noise scale", noise_scale)
        self.max_private_tokens = int(max_private_tokens)
        self.private_tokens = 0
        self._noisy_threshold = self._draw_threshold(rng)

    def _draw_threshold(self, rng: np.random.Generator) -> float:
        return self.threshold + rng.laplace(0.0, self.noise_scale)

    @property
    def must_stop(self) -> bool:
        """True once r_max private tokens are spent: the formal bound covers no more."""
        return self.private_tokens >= self.max_private_tokens

    def use_private_token(self, distance: float, rng: np.random.Generator) -> bool:
        """Whether this step spends a private token; counts it if so."""
        if self.must_stop:
            raise RuntimeError("The private-token cap is spent; this batch's "
                               "generation must stop.")
        noisy_distance = distance + rng.laplace(0.0, 2.0 * self.noise_scale)
        if noisy_distance < self._noisy_threshold:
            return False
        self.private_tokens += 1
        self._noisy_threshold = self._draw_threshold(rng)
        return True
