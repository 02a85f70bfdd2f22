"""Clustering math, Beam-free: k-means on public data, nearest centres, clipped cluster sums,
noisy Lloyd steps.

Privacy lives in the callers' choice of inputs: `fit_kmeans` only ever sees
public embeddings; what touches private records is a histogram or a sum that
the pipeline releases with Gaussian noise (see docs/privacy.md).
"""

from __future__ import annotations

import numpy as np


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype="float64")
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def clip_to_unit_norm(vectors: np.ndarray) -> np.ndarray:
    """Rows of norm above 1 scaled down to norm 1; shorter rows unchanged.

    Every released sum of embeddings (DP k-means, synthetic embeddings) has L2 sensitivity
    1 only if ||x|| <= 1. The encoder normalises its output, but the bound must not rest on
    that: a different encoder, a rounding error or a zero-padded row would otherwise let one
    record move a sum by more than the noise was calibrated for. Clipping makes the bound
    hold whatever the encoder returns. A row that is not finite breaks every bound and is an
    error, not something to clip.
    """
    vectors = np.atleast_2d(np.asarray(vectors, dtype="float64"))
    if not np.all(np.isfinite(vectors)):
        raise ValueError("an embedding holds NaN or infinity")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1.0)


def nearest_centre(embeddings: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) for each row; ties go to the lower index."""
    embeddings = np.atleast_2d(np.asarray(embeddings, dtype="float64"))
    centres = np.asarray(centres, dtype="float64")
    distances = (np.sum(embeddings ** 2, axis=1, keepdims=True)
                 - 2 * embeddings @ centres.T + np.sum(centres ** 2, axis=1)[None, :])
    return np.argmin(distances, axis=1)


def fit_kmeans(points: np.ndarray, k: int, *, rng: np.random.Generator,
               iterations: int = 25) -> np.ndarray:
    """Plain spherical k-means (k-means++ init) on PUBLIC points; centres have norm 1."""
    points = normalise_rows(points)
    if len(points) == 0:
        raise ValueError("k-means needs at least one point")
    k = min(k, len(points))
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        if d2.sum() <= 0:
            break
        centres.append(points[rng.choice(len(points), p=d2 / d2.sum())])
    centres = np.asarray(centres)
    for _ in range(iterations):
        assignment = nearest_centre(points, centres)
        updated = centres.copy()
        for j in range(len(centres)):
            members = points[assignment == j]
            if len(members):
                updated[j] = members.mean(axis=0)
        updated = normalise_rows(updated)
        if np.allclose(updated, centres):
            break
        centres = updated
    return centres


def random_unit_centres(k: int, dimension: int, rng: np.random.Generator) -> np.ndarray:
    """A data-independent initialisation for DP k-means."""
    return normalise_rows(rng.normal(size=(k, dimension)))


def add_to_cluster(statistics: dict, key, embedding=None) -> dict:
    """Adds one record to its cluster's (count, sum of embeddings); without an embedding,
    to the count only. The embedding is clipped to norm 1 first, so the sums DP k-means
    releases move by at most 1 in L2 per record, whatever the encoder returned."""
    count, total = statistics.get(key, (0, 0.0))
    if embedding is not None:
        total = total + clip_to_unit_norm(embedding)[0]
    statistics[key] = (count + 1, total)
    return statistics


def merge_cluster_statistics(parts) -> dict:
    merged = {}
    for part in parts:
        for key, (count, total) in part.items():
            old_count, old_total = merged.get(key, (0, 0.0))
            merged[key] = (old_count + count, old_total + total)
    return merged


def noisy_counts(counts: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian mechanism on a histogram; adding or removing a record changes one cell by 1."""
    counts = np.asarray(counts, dtype="float64")
    return counts + rng.normal(0.0, sigma, size=counts.shape)


def keep_centres(noisy_histogram: np.ndarray, *, keep: int, min_count: float) -> np.ndarray:
    """Indices of the `keep` largest noisy cells whose noisy count is at least `min_count`."""
    order = np.argsort(-np.asarray(noisy_histogram), kind="stable")
    return np.array([j for j in order[:keep] if noisy_histogram[j] >= min_count], dtype=int)


def noisy_lloyd_centres(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray, *,
                        sigma_sum: float, sigma_count: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One DP Lloyd step: noisy sums over noisy counts, renormalised to norm 1.

    Each record is clipped to norm at most 1 (`add_to_cluster`), so a record moves one
    centre's sum by at most 1 in L2 and one count by 1. A centre whose noisy count is below
    1 keeps its previous position rather than dividing noise by noise.
    """
    sums = np.asarray(sums, dtype="float64")
    counts = np.asarray(counts, dtype="float64")
    noisy_sum = sums + rng.normal(0.0, sigma_sum, size=sums.shape)
    noisy_count = counts + rng.normal(0.0, sigma_count, size=counts.shape)
    centres = noisy_sum / np.maximum(noisy_count, 1.0)[:, None]
    centres = np.where((noisy_count >= 1.0)[:, None], normalise_rows(centres), previous)
    return centres, noisy_count
