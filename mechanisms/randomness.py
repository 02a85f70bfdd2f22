"""Keyed randomness: every noise draw and sample is a function of (secret, stage, ids).

A retried bundle recomputes exactly what its first attempt released, so no
budget is spent twice, and a fixed secret makes a run reproducible on any
runner. The secret itself is never logged or written out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import numpy as np

SECRET_BYTES = 32
# A secret is a key: one short enough to search lets whoever finds it redraw,
# and so subtract, every noise draw of the run.
MIN_SECRET_BITS = 128
BITS_PER_HEX_DIGIT = 4
MIN_SECRET_HEX_DIGITS = MIN_SECRET_BITS // BITS_PER_HEX_DIGIT
HEX_DIGITS = re.compile(r"[0-9a-fA-F]+")


def new_run_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


def check_run_secret(secret: str) -> str:
    """`secret` if it is a hex string of at least 128 bits; ValueError (one line) if not.

    Bits are counted as the documented format carries them, 4 per hex digit,
    so 128 bits are 32 hex digits. The key is the string itself, not the bytes
    it spells, so an odd number of digits is fine. No check can tell a random
    secret from a guessable one of the same length; this one refuses those too
    short to be safe whatever their digits."""
    wanted = f"at least {MIN_SECRET_HEX_DIGITS} hex digits ({MIN_SECRET_BITS} bits)"
    advice = (f"leave it unset for a fresh one, or make one with "
              f"`python -c 'import secrets; print(secrets.token_hex({SECRET_BYTES}))'`")
    if not HEX_DIGITS.fullmatch(secret):
        raise ValueError(f"--run_secret must be hexadecimal (0-9, a-f), {wanted}: {advice}")
    if len(secret) < MIN_SECRET_HEX_DIGITS:
        raise ValueError(f"--run_secret has {len(secret)} hex digits "
                         f"({len(secret) * BITS_PER_HEX_DIGIT} bits); it needs {wanted}: {advice}")
    return secret


def _key(secret: str) -> bytes:
    if not secret:
        raise ValueError("the run secret is empty")
    return secret.encode("utf-8")


def keyed_digest(secret: str, *parts) -> bytes:
    message = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return hmac.new(_key(secret), message, hashlib.sha256).digest()


def keyed_hash(secret: str, *parts) -> int:
    """A 64-bit keyed hash; unpredictable without the secret."""
    return int.from_bytes(keyed_digest(secret, *parts)[:8], "big")


def keyed_generator(secret: str, *parts) -> np.random.Generator:
    """A numpy Generator determined by the secret and the parts (stage, batch id, step)."""
    digest = keyed_digest(secret, *parts)
    words = [int.from_bytes(digest[i:i + 4], "big") for i in range(0, len(digest), 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
