"""DP synthetic embeddings, Beam-free: cluster statistics, their Gaussian release, a mixture.

Following Epasto et al. 2025 (DP clustering in embedding space): given centres that are
themselves a DP release (DP k-means, per label when labels are given), every cell
(label, centre) of a fixed domain releases

- a noisy count           cnt~ = cnt + N(0, sigma_c^2),
- a noisy sum             sum~ = sum x + N(0, sigma_s^2 I),
- a noisy sum of squares  sq~  = sum x∘x + N(0, sigma_s^2 I)   (x∘x: coordinate-wise square),

and synthetic embeddings are drawn from the Gaussian mixture these define. Everything after
the release is post-processing.

Sensitivities, under adding or removing one record (each record is a vector of L2 norm at
most 1, after `clip_to_unit_norm`, and falls in exactly one cell):
- the vector of all counts moves in one coordinate by 1: L2 change 1;
- the concatenated sums move in one cell by x: L2 change ||x|| <= 1;
- the concatenated sums of squares move in one cell by x∘x: L2 change
  sqrt(sum_i x_i^4) <= sum_i x_i^2 = ||x||^2 <= 1.
So each of the three releases is a Gaussian mechanism with L2 sensitivity 1, and a record
costs their composition (`record_release`).
"""

from __future__ import annotations

import dataclasses
from typing import Hashable, Iterable, Sequence

import numpy as np

from mechanisms.cluster import clip_to_unit_norm

STAGE = "synthetic_embeddings"
# A cell joins the mixture only when its noisy count is at least this: dividing a noisy sum by
# a noisy count near 0 gives a mean and a variance that are mostly noise.
DEFAULT_MIN_COUNT = 1.0
# Smallest per-coordinate variance of a component. A unit vector in D dimensions has
# per-coordinate variance around 1/D (1/384 for MiniLM), far above this; the floor only keeps
# a noisy second moment below mean^2 from giving a zero or negative variance.
DEFAULT_VARIANCE_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class EmbeddingReleaseConfig:
    """The release's noise and the size of the synthetic set.

    count_noise: sigma of the Gaussian noise on each cell's count.
    sum_noise: sigma on each coordinate of each cell's sum of embeddings, and (the same sigma)
        on each coordinate of each cell's sum of squared coordinates.
    samples: synthetic embeddings to draw; None: round(sum of the positive noisy counts).
    min_count: smallest noisy count of a cell that joins the mixture.
    variance_floor: smallest per-coordinate variance of a component.
    """

    count_noise: float
    sum_noise: float
    samples: int | None = None
    min_count: float = DEFAULT_MIN_COUNT
    variance_floor: float = DEFAULT_VARIANCE_FLOOR

    def __post_init__(self):
        if not self.count_noise > 0 or not self.sum_noise > 0:
            raise ValueError("the count and sum noise must be > 0, got "
                             f"{self.count_noise} and {self.sum_noise}")
        if self.samples is not None and self.samples < 0:
            raise ValueError(f"samples must be >= 0 (or None), got {self.samples}")
        if not self.min_count > 0:
            raise ValueError(f"min_count must be > 0, got {self.min_count}")
        if not self.variance_floor > 0:
            raise ValueError(f"variance_floor must be > 0, got {self.variance_floor}")


# ---------------------------------------------------------------------------- exact statistics

def empty_statistics() -> dict:
    """cell -> [count, sum (D,), sum of squares (D,)]."""
    return {}


def add_to_statistics(statistics: dict, cell: Hashable, vector: np.ndarray) -> dict:
    """Adds one record's (clipped) vector to its cell's count, sum and sum of squares."""
    vector = clip_to_unit_norm(vector)[0]
    entry = statistics.get(cell)
    if entry is None:
        statistics[cell] = [1, vector.copy(), vector * vector]
    else:
        entry[0] += 1
        entry[1] = entry[1] + vector
        entry[2] = entry[2] + vector * vector
    return statistics


def merge_statistics(parts: Iterable[dict]) -> dict:
    merged = {}
    for part in parts:
        for cell, (count, total, squares) in part.items():
            entry = merged.get(cell)
            if entry is None:
                merged[cell] = [count, np.array(total, dtype="float64"),
                                np.array(squares, dtype="float64")]
            else:
                entry[0] += count
                entry[1] = entry[1] + total
                entry[2] = entry[2] + squares
    return merged


def cluster_statistics(cells: Sequence[Hashable], vectors: np.ndarray) -> dict:
    """Exact count, sum and sum of squares of the (clipped) vectors of each cell."""
    statistics = empty_statistics()
    for cell, vector in zip(cells, np.atleast_2d(np.asarray(vectors, dtype="float64"))):
        add_to_statistics(statistics, cell, vector)
    return statistics


def stacked_statistics(statistics: dict, domain: Sequence[Hashable], dimension: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts (C,), sums (C, D), squares (C, D)) over `domain`, empty cells as zeros."""
    counts = np.zeros(len(domain))
    sums = np.zeros((len(domain), dimension))
    squares = np.zeros((len(domain), dimension))
    for row, cell in enumerate(domain):
        if cell in statistics:
            counts[row], sums[row], squares[row] = statistics[cell]
    return counts, sums, squares


# ---------------------------------------------------------------------------- the release

def release_domain(labels: Sequence, centres_per_label: dict) -> list[tuple]:
    """Every (label, centre index) of the label domain: the cells released, empty or not.

    The labels are the public label domain and the centres a DP release (or public), so the
    list of cells does not depend on the records themselves.
    """
    return [(label, j) for label in labels for j in range(len(centres_per_label[label]))]


@dataclasses.dataclass(frozen=True)
class EmbeddingRelease:
    """The DP release: one row per cell of the domain, in the domain's order."""

    cells: tuple            # (label, centre index) per row
    noisy_counts: np.ndarray    # (C,)
    noisy_sums: np.ndarray      # (C, D)
    noisy_squares: np.ndarray   # (C, D)


def release_statistics(statistics: dict, domain: Sequence[tuple], dimension: int,
                       config: EmbeddingReleaseConfig, rng: np.random.Generator
                       ) -> EmbeddingRelease:
    """Gaussian noise on the count, the sum and the sum of squares of every cell of `domain`.

    Cells of `statistics` outside `domain` are an error: they would be released by nobody's
    accounting (the caller builds the domain from the labels and centres the records joined).
    """
    domain_cells = set(domain)
    outside = [cell for cell in statistics if cell not in domain_cells]
    if outside:
        raise ValueError(f"{len(outside)} cells are outside the release domain, e.g. {outside[0]}")
    counts, sums, squares = stacked_statistics(statistics, domain, dimension)
    return EmbeddingRelease(
        cells=tuple(domain),
        noisy_counts=counts + rng.normal(0.0, config.count_noise, size=counts.shape),
        noisy_sums=sums + rng.normal(0.0, config.sum_noise, size=sums.shape),
        noisy_squares=squares + rng.normal(0.0, config.sum_noise, size=squares.shape))


# ---------------------------------------------------------------------------- the mixture

@dataclasses.dataclass(frozen=True)
class Mixture:
    """A diagonal Gaussian mixture over the cells whose noisy count reached min_count."""

    cells: tuple            # (label, centre index) per component
    weights: np.ndarray     # (M,), sums to 1 (empty when M = 0)
    means: np.ndarray       # (M, D)
    variances: np.ndarray   # (M, D)


def mixture_from_release(release: EmbeddingRelease, config: EmbeddingReleaseConfig) -> Mixture:
    """Weights ∝ noisy count, mean = noisy sum / noisy count, per-coordinate variance =
    max(noisy squares / noisy count - mean^2, variance_floor), for cells with noisy count
    >= min_count; other cells are left out (post-processing of the release)."""
    counts = release.noisy_counts
    used = np.flatnonzero(counts >= config.min_count)
    dimension = release.noisy_sums.shape[1]
    if not len(used):
        return Mixture(cells=(), weights=np.zeros(0), means=np.zeros((0, dimension)),
                       variances=np.zeros((0, dimension)))
    used_counts = counts[used]
    means = release.noisy_sums[used] / used_counts[:, None]
    second = release.noisy_squares[used] / used_counts[:, None]
    variances = np.maximum(second - means ** 2, config.variance_floor)
    return Mixture(cells=tuple(release.cells[i] for i in used),
                   weights=used_counts / used_counts.sum(), means=means, variances=variances)


def sample_count(release: EmbeddingRelease, config: EmbeddingReleaseConfig) -> int:
    """config.samples, or round(sum of the positive noisy counts): a DP estimate of n."""
    if config.samples is not None:
        return int(config.samples)
    return int(round(float(np.sum(np.maximum(release.noisy_counts, 0.0)))))


def sample_mixture(mixture: Mixture, count: int, rng: np.random.Generator, *,
                   normalise: bool = True) -> tuple[np.ndarray, list, np.ndarray]:
    """`count` draws: a component by weight, then N(mean, diag(variance)); each draw is then
    scaled to unit norm, as real sentence embeddings are (post-processing).

    Returns (vectors float32 (N, D), labels, centre index of each draw's cell). A mixture
    without components gives no draws.
    """
    dimension = mixture.means.shape[1]
    if count <= 0 or not len(mixture.cells):
        return np.zeros((0, dimension), dtype=np.float32), [], np.zeros(0, dtype=np.int64)
    components = rng.choice(len(mixture.cells), size=count, p=mixture.weights)
    vectors = (mixture.means[components]
               + np.sqrt(mixture.variances[components]) * rng.standard_normal((count, dimension)))
    if normalise:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    labels = [mixture.cells[c][0] for c in components]
    clusters = np.array([mixture.cells[c][1] for c in components], dtype=np.int64)
    return vectors.astype(np.float32), labels, clusters


# ---------------------------------------------------------------------------- accounting

def ledger_gaussians(config: EmbeddingReleaseConfig) -> list[tuple[float, str]]:
    """The three Gaussian mechanisms of the release, each of L2 sensitivity 1 (module
    docstring): (noise standard deviation, what is released)."""
    return [
        (config.count_noise, "noisy count of every (label, centre) cell"),
        (config.sum_noise, "noisy sum of the unit-norm embeddings of every cell"),
        (config.sum_noise, "noisy sum of the squared embedding coordinates of every cell"),
    ]


def record_release(ledger, stage: str, config: EmbeddingReleaseConfig) -> list:
    """Records the release in a `mechanisms.accounting.PrivacyLedger`: three Gaussian
    mechanisms of L2 sensitivity 1, composed with everything else the record takes part in."""
    return [ledger.record_gaussian(stage, noise_stddev=sigma, l2_sensitivity=1.0, count=1,
                                   released=released)
            for sigma, released in ledger_gaussians(config)]


# ---------------------------------------------------------------------------- files
