"""Advance many token-by-token generations with one model call per step.

Each request is one generated sequence conditioned on several prompts (in DP
generation: the seeds of one batch, plus the public prompt). At every step
each request's chooser sees the next-token logits of its own rows and picks
the one token that all its rows share next. Rows of all requests go through
the model together, so the model always sees a large batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np


class TokenChooser(Protocol):
    def choose(self, step: int, logits: np.ndarray) -> int | None:
        """The next token for all rows of a request, or None to stop.

        `logits` is (rows of the request, vocabulary) for the token at `step`.
        """

    # Optional: True when the chooser reads its rows other than the last only at
    # columns picked from the last row (`logits[-1]`, then `logits[:, columns]`).
    # The model then skips the vocabulary head for those rows and computes the
    # columns asked; the last row and every row of other choosers stay whole.
    reads_other_rows_on_last_rows_columns: bool


@dataclasses.dataclass
class GenerationRequest:
    key: Any
    prompts: Sequence[Sequence[int] | str]   # token ids, or texts the model tokenises
    chooser: TokenChooser
    max_new_tokens: int
    stop_text: str | None = None             # generation ends once the text contains it


@dataclasses.dataclass
class GenerationResult:
    key: Any
    token_ids: list
    stopped_by: str      # "end_token", "stop_text", "chooser" or "max_new_tokens"
    chooser: Any
    text: str = ""       # decoded, without end tokens, cut before stop_text


def generate_jointly(lm, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    """Runs all requests to completion; results are in request order."""
    if not requests:
        return []
    for request in requests:
        if not request.prompts:
            raise ValueError(f"request {request.key!r} has no prompts")
        if request.max_new_tokens < 1:
            raise ValueError(f"request {request.key!r}: max_new_tokens must be >= 1")
    row_slices, prompts = [], []
    for request in requests:
        row_slices.append(slice(len(prompts), len(prompts) + len(request.prompts)))
        prompts.extend(lm.encode(p) if isinstance(p, str) else list(p) for p in request.prompts)
    longest = max(r.max_new_tokens for r in requests)
    # Rows whose whole-vocabulary logits a chooser reads: its last row, or all of them.
    full_rows = [row for request, rows in zip(requests, row_slices)
                 for row in range(rows.stop - 1 if getattr(
                     request.chooser, "reads_other_rows_on_last_rows_columns", False)
                     else rows.start, rows.stop)]
    # The last chosen token is never fed back, so the cache needs one slot less.
    state = lm.start(prompts, max_new_tokens=max(1, longest - 1),
                     full_rows=None if len(full_rows) == len(prompts) else full_rows)
    generated = [[] for _ in requests]
    stopped_by = [None] * len(requests)
    filler = np.zeros(len(prompts), dtype="int32")
    for step in range(longest):
        logits = state.logits
        for index, request in enumerate(requests):
            if stopped_by[index] is not None:
                continue
            token = request.chooser.choose(step, logits[row_slices[index]])
            if token is None:
                stopped_by[index] = "chooser"
                continue
            generated[index].append(int(token))
            filler[row_slices[index]] = token
            if int(token) in lm.end_token_ids:
                stopped_by[index] = "end_token"
            elif request.stop_text and request.stop_text in lm.decode(generated[index]):
                stopped_by[index] = "stop_text"
            elif len(generated[index]) >= request.max_new_tokens:
                stopped_by[index] = "max_new_tokens"
        if all(reason is not None for reason in stopped_by):
            break
        # Finished requests keep their rows in the batch (fed their last
        # token) so the compiled step keeps one shape; their logits are unused.
        lm.advance(state, filler)
    return [GenerationResult(r.key, generated[i], stopped_by[i], r.chooser,
                             _final_text(lm, generated[i], r.stop_text))
            for i, r in enumerate(requests)]


def _final_text(lm, token_ids, stop_text):
    text = lm.decode([t for t in token_ids if t not in lm.end_token_ids])
    if stop_text and stop_text in text:
        text = text[:text.index(stop_text)]
    return text


class GreedyChooser:
    """Picks the arg-max of the rows' mean logits: a non-private reference chooser."""

    def choose(self, step, logits):
        return int(np.argmax(logits.mean(axis=0)))
