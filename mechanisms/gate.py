"""The public-token gate: a sparse-vector test between the batch and the public
prompt that lets free public tokens through (METHOD.md §4, item 2; the 2024
method's SVT).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from mechanisms.token_rules import as_batch, require_positive, softmax



def gate_distance(member_logits: ArrayLike, public_logits: ArrayLike,
                  expected_batch_size: float) -> float:
    """d = || (1/s) sum_j softmax(z_j) - softmax(z_pub) ||_1.

    Masked (-inf) logits get probability 0 on both sides. One member more or
    less moves d by at most 1/s (triangle inequality, ||softmax(z)||_1 = 1).
    """
    members = as_batch(member_logits)
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
