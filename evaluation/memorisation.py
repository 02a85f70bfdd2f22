"""Verbatim copying from the private records: the longest shared word n-gram, and the share of
synthetic texts that repeat an n-gram of a private record.

Tokenisation (`words`): the text is NFKC-normalised and lower-cased; a word is a run of
letters and digits (any script), and an apostrophe between two such runs stays inside the
word ("don't", "joe's"); whitespace, punctuation, symbols and underscores only separate words.
So "The FOOD -- was great!" and "the food was great" are the same 4 words.

Every n-gram is hashed (a polynomial hash mod 2**64 over random 64-bit word keys, computed
for all positions at once with numpy), the synthetic hashes are looked up in the sorted
private ones, and every hit is then confirmed on the words themselves, so a hash collision
can never count as a copy. Cost per n: O(W log W) for W words in all. The longest match is
a binary search over n (a shared n-gram implies shared shorter ones), about log2(longest
text) rounds: about a second for 10,000 private records of 150 words.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import numpy as np

COPY_NGRAM = 8
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_BASE = np.uint64(0x9E3779B97F4A7C15)          # odd, so it is invertible mod 2**64
_BASE_INVERSE = np.uint64(pow(int(_BASE), -1, 2 ** 64))


def words(text: str) -> list[str]:
    """The word tokens of `text` (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    return _WORD.findall(text)


class _Corpus:
    """The words of a list of texts as one array of ids, with each text's span."""

    def __init__(self, token_lists: list[list[int]], keys: np.ndarray):
        self.lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.ids = (np.concatenate([np.asarray(t, dtype=np.int64) for t in token_lists])
                    if len(token_lists) and self.lengths.sum() else np.zeros(0, np.int64))
        self.doc_of = np.repeat(np.arange(len(token_lists)), self.lengths)
        self.doc_end = np.repeat(self.starts + self.lengths, self.lengths)
        size = len(self.ids)
        # prefix[k] = sum_{j<k} key[j] * B**(k-1-j) = B**(k-1) * sum_{j<k} key[j] * B**-j
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.full(size + 1, _BASE, dtype=np.uint64))   # B**1 .. B**(size+1)
            inverse_powers = np.cumprod(np.full(size, _BASE_INVERSE, dtype=np.uint64))
            inverse_powers = np.concatenate([[np.uint64(1)], inverse_powers[:-1]])  # B**-j
            scaled = np.cumsum(keys[self.ids] * inverse_powers, dtype=np.uint64)
            self.prefix = np.zeros(size + 1, dtype=np.uint64)
            if size:
                self.prefix[1:] = np.concatenate([[np.uint64(1)], powers[:size - 1]]) * scaled
        self.powers = np.concatenate([[np.uint64(1)], powers])                  # B**0 ..

    def windows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, start position) of every n-gram that lies inside one text."""
        if n > len(self.ids):
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        starts = np.nonzero(np.arange(len(self.ids)) + n <= self.doc_end)[0]
        with np.errstate(over="ignore"):
            hashes = self.prefix[starts + n] - self.prefix[starts] * self.powers[n]
        return hashes, starts

    def ngram(self, start: int, n: int) -> tuple:
        return tuple(self.ids[start:start + n].tolist())


def _members(values: np.ndarray, sorted_table: np.ndarray) -> np.ndarray:
    """values[i] in sorted_table, for every i (binary search: faster than np.isin here)."""
    if not len(sorted_table):
        return np.zeros(len(values), dtype=bool)
    index = np.minimum(np.searchsorted(sorted_table, values), len(sorted_table) - 1)
    return sorted_table[index] == values


class CopyIndex:
    """The synthetic and private texts tokenised once, for several n-gram queries."""

    def __init__(self, synthetic_texts: Sequence[str], private_texts: Sequence[str]):
        vocabulary: dict[str, int] = {}
        synthetic = [[vocabulary.setdefault(w, len(vocabulary)) for w in words(t)]
                     for t in synthetic_texts]
        private = [[vocabulary.setdefault(w, len(vocabulary)) for w in words(t)]
                   for t in private_texts]
        self.words = list(vocabulary)
        keys = np.random.default_rng(0x5EED).integers(
            0, np.iinfo(np.uint64).max, size=max(len(vocabulary), 1), dtype=np.uint64,
            endpoint=True)
        self.synthetic = _Corpus(synthetic, keys)
        self.private = _Corpus(private, keys)

    def shared(self, n: int, *, first_only: bool = False) -> list[tuple[int, int]]:
        """Confirmed (synthetic start, private start) pairs of shared n-grams: at most one per
        synthetic text (the first confirmed), or only the first one found with `first_only`."""
        if n < 1:
            raise ValueError("n must be >= 1")
        synthetic_hashes, synthetic_starts = self.synthetic.windows(n)
        private_hashes, private_starts = self.private.windows(n)
        hit = _members(synthetic_hashes, np.sort(private_hashes))
        if not hit.any():
            return []
        candidates = list(zip(synthetic_hashes[hit].tolist(), synthetic_starts[hit].tolist()))
        if first_only:
            by_hash = None
        else:
            wanted = _members(private_hashes, np.sort(synthetic_hashes[hit]))
            by_hash: dict[int, list[int]] = {}
            for value, start in zip(private_hashes[wanted].tolist(),
                                    private_starts[wanted].tolist()):
                by_hash.setdefault(value, []).append(start)
        found, done_docs = [], set()
        for value, start in candidates:
            doc = int(self.synthetic.doc_of[start])
            if doc in done_docs:
                continue
            if by_hash is None:
                private_matches = private_starts[private_hashes == value].tolist()
            else:
                private_matches = by_hash.get(value, [])
            gram = self.synthetic.ngram(start, n)
            for private_start in private_matches:
                if self.private.ngram(private_start, n) == gram:
                    found.append((start, private_start))
                    done_docs.add(doc)
                    break
            if first_only and found:
                break
        return found

    def longest_shared(self) -> dict:
        """The longest n-gram that some synthetic text shares with some private text."""
        high = int(min(self.synthetic.lengths.max(initial=0), self.private.lengths.max(initial=0)))
        low, example = 0, None
        while low < high:
            middle = (low + high + 1) // 2
            pairs = self.shared(middle, first_only=True)
            if pairs:
                low, example = middle, pairs[0]
            else:
                high = middle - 1
        result = {"length": low}
        if example is not None:
            synthetic_start, private_start = example
            result.update(
                ngram=" ".join(self.words[i] for i in self.synthetic.ngram(synthetic_start, low)),
                synthetic_index=int(self.synthetic.doc_of[synthetic_start]),
                private_index=int(self.private.doc_of[private_start]))
        return result

    def copied_fraction(self, n: int = COPY_NGRAM) -> dict:
        """How many synthetic texts share at least one n-gram with the private texts, of all."""
        texts = len(self.synthetic.lengths)
        copied = sorted(int(self.synthetic.doc_of[s]) for s, _ in self.shared(n))
        return {"n": n, "texts": texts, "copied": len(copied),
                "fraction": (len(copied) / texts) if texts else None,
                "copied_indices": copied}


def longest_shared_ngram(synthetic_texts: Sequence[str], private_texts: Sequence[str]) -> dict:
    """{"length", and when > 0 "ngram", "synthetic_index", "private_index"}."""
    return CopyIndex(synthetic_texts, private_texts).longest_shared()


def copied_ngram_fraction(synthetic_texts: Sequence[str], private_texts: Sequence[str],
                          n: int = COPY_NGRAM) -> float | None:
    """The share of synthetic texts that repeat some n-gram of a private text (None: no texts).
    A text shorter than n words counts as not copied."""
    return CopyIndex(synthetic_texts, private_texts).copied_fraction(n)["fraction"]


def memorisation(synthetic_texts: Sequence[str], private_texts: Sequence[str],
                 n: int = COPY_NGRAM) -> dict:
    """Both checks over one tokenisation."""
    index = CopyIndex(synthetic_texts, private_texts)
    copied = index.copied_fraction(n)
    return {"tokenisation": "NFKC, lower-case, words = runs of letters/digits "
                            "(inner apostrophes kept); punctuation and whitespace separate",
            "longest_shared_ngram": index.longest_shared(),
            "copy_ngram": n,
            "copied_texts": copied["copied"],
            "copied_fraction": copied["fraction"],
            "copied_indices": copied["copied_indices"],
            "synthetic_texts": copied["texts"],
            "private_texts": len(index.private.lengths)}
