"""Private Evolution's variation prompts, Beam-free: how the LM is asked for a variation of a
population member.

Aug-PE (Xie et al. 2024) varies a text in two ways beside "write another like it": it asks
for the same text in other words (rephrase), or it blanks out a share of the words and asks
for the text with the blanks filled in (fill_in). The prompts are completion-style, like
the run's template, since the LMs are base models, not instruction-tuned.

Variations see only population members, which are already released (or public), so every
choice here is post-processing: none changes the privacy accounting.
"""

from __future__ import annotations

import re

import numpy as np

TEMPLATE, REPHRASE, FILL_IN = "template", "rephrase", "fill_in"
VARIATIONS = (TEMPLATE, REPHRASE, FILL_IN)
BLANK = "___"
DEFAULT_BLANK_FRACTION = 0.3

_PROMPTS = {
    (REPHRASE, True): "Text ({label}):\n{text}\n\nThe same text in other words ({label}):\n",
    (REPHRASE, False): "Text:\n{text}\n\nThe same text in other words:\n",
    (FILL_IN, True): "Text with blanks ({label}):\n{text}\n\n"
                     "The same text with every blank filled in ({label}):\n",
    (FILL_IN, False): "Text with blanks:\n{text}\n\nThe same text with every blank filled in:\n",
}

_WORD = re.compile(r"\S+")


def variation_template(variation: str, *, labelled: bool, template: str) -> str:
    """The prompt template of a variation kind; `template` (the run's, or the user's
    variation template) for TEMPLATE."""
    if variation == TEMPLATE:
        return template
    if variation not in VARIATIONS:
        raise ValueError(f"unknown variation {variation!r}: use one of {', '.join(VARIATIONS)}")
    return _PROMPTS[(variation, labelled)]


def blank_out(text: str, fraction: float, rng: np.random.Generator) -> str:
    """`text` with round(fraction * words) of its words (at least one when it has any)
    replaced by BLANK, chosen by `rng`; the whitespace between words is kept."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the blanked fraction must lie in (0, 1), got {fraction}")
    spans = [match.span() for match in _WORD.finditer(text)]
    if not spans:
        return text
    count = max(1, int(round(fraction * len(spans))))
    chosen = set(rng.choice(len(spans), size=count, replace=False).tolist())
    pieces, last = [], 0
    for position, (start, end) in enumerate(spans):
        pieces.append(text[last:start])
        pieces.append(BLANK if position in chosen else text[start:end])
        last = end
    pieces.append(text[last:])
    return "".join(pieces)

