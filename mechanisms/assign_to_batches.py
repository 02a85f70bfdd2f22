"""Batch planning and membership, Beam-free (METHOD.md §3).

The number of batches of a cluster comes from its noisy count; which batch a
record joins depends only on its own id and the run secret.
"""

from __future__ import annotations

import math

from mechanisms.randomness import keyed_hash


def planned_batch_count(noisy_count: float, expected_batch_size: int) -> int:
    """m_j = floor(h~_j / s), never negative."""
    if expected_batch_size < 1:
        raise ValueError("the batch size must be >= 1")
    return max(0, math.floor(noisy_count / expected_batch_size))


def batch_of(secret: str, record_id: str, batch_count: int) -> int:
    """H(key, record_id) mod m_j."""
    if batch_count < 1:
        raise ValueError("a cluster without batches has no batch to join")
    return keyed_hash(secret, "batch", record_id) % batch_count


def batch_id(cluster_key, index: int) -> str:
    """A stable, printable id of one planned batch."""
    label, centre = cluster_key
    return f"{label if label is not None else '-'}/c{centre}/b{index}"
