"""The record cap (`--max_records`) as a data-independent sample, Beam-free.

Keeping "the first N rows" is not stable: one early row added pushes a later
row out, so neighbouring inputs would differ by two records. Instead each
privacy unit is kept independently, with probability q = min(1, N / n~), by a
keyed hash of its own content under the run secret. n~ is the number of units
plus Gaussian noise: the only thing the cap learns from the data, a release
of L2 sensitivity 1 recorded in the ledger (stage "record cap"). Given n~,
whether a unit is kept depends on that unit alone, so adding or removing a
unit adds or removes at most that unit's record.
"""

from __future__ import annotations

from mechanisms.randomness import keyed_generator, keyed_hash

STAGE = "record cap"
RELEASED = "noisy count of privacy units, which sets the record cap's keep rate"
_HASH_RANGE = float(1 << 64)


def noisy_unit_count(count: int, noise_stddev: float, secret: str) -> float:
    return count + float(keyed_generator(secret, STAGE, "count").normal(0.0, noise_stddev))


def keep_rate(max_records: int, noisy_count: float) -> float:
    """q = min(1, N / n~); a noisy count below 1 keeps everything (there is little to cap)."""
    if noisy_count <= max_records:
        return 1.0
    return max_records / noisy_count


def is_kept(secret: str, unit_key: tuple, rate: float) -> bool:
    """Whether the unit with this content key is in the sample: a keyed hash below the rate."""
    if rate >= 1.0:
        return True
    return keyed_hash(secret, STAGE, *unit_key) / _HASH_RANGE < rate
