"""Keyed randomness: every noise draw and sample is a function of (secret, stage, ids).

A retried bundle recomputes exactly what its first attempt released, so no
budget is spent twice, and a fixed secret makes a run reproducible on any
runner. The secret itself is never logged or written out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import numpy as np

SECRET_BYTES = 32


def new_run_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


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
