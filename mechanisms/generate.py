"""Choosing each synthetic token privately from one batch's next-token logits.

Beam-free. `PrivateTokenChooser` is the per-batch state of METHOD.md §4: it
receives the logits of the batch's seed prompts plus the public prompt (the
last row), applies the optional top-k mask and public-token gate, aggregates
with the rule's CombineFn, samples, and records what accounting needs.
"""

from __future__ import annotations

import dataclasses
import string

import numpy as np

from transforms import aggregation, median_ptr
from transforms.aggregation_combine_fns import ClippedMeanCombineFn, PrivateMedianCombineFn
from transforms.randomness import keyed_generator

GENERATION_STAGE = "generation"


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    aggregator: str                 # "mean", "median" or "median_ptr"
    clip: float
    temperature: float
    expected_batch_size: int
    max_new_tokens: int
    top_k: int | None = None
    public_tokens: bool = False
    gate_threshold: float = 0.5
    gate_noise: float = 0.2
    max_private_tokens: int | None = None
    public_temperature: float = 1.0
    ptr: median_ptr.PtrSettings | None = None     # median_ptr's bound, test and fallback

    def __post_init__(self):
        if self.aggregator not in aggregation.RULES:
            raise ValueError(f"unknown aggregator '{self.aggregator}'")
        if (self.aggregator == "median_ptr") != (self.ptr is not None):
            raise ValueError("median_ptr, and only median_ptr, takes PtrSettings")
        if self.ptr is not None and self.public_tokens:
            raise ValueError("median_ptr does not combine with the public-token gate")

    @property
    def private_token_cap(self) -> int:
        if self.public_tokens and self.max_private_tokens:
            return min(self.max_private_tokens, self.max_new_tokens)
        return self.max_new_tokens


def combine_fn_for(config: GenerationConfig, vocab_size: int, *, rule: str | None = None):
    if (rule or config.aggregator) == "mean":
        return ClippedMeanCombineFn(config.clip, config.expected_batch_size,
                                    vocab_size=vocab_size)
    return PrivateMedianCombineFn(config.clip, vocab_size=vocab_size)


def aggregate_rows(combine_fn, member_logits: np.ndarray):
    """Runs a CombineFn over in-memory rows: the same code path Beam would run."""
    accumulator = combine_fn.create_accumulator()
    for row in member_logits:
        accumulator = combine_fn.add_input(accumulator, row)
    return combine_fn.extract_output(accumulator)


class PrivateTokenChooser:
    """Chooses the tokens of one batch's synthetic record.

    Rows: the batch's seed prompts first, the public prompt last. Every random
    draw comes from a generator keyed by (secret, stage, batch id, step).
    """

    def __init__(self, config: GenerationConfig, *, secret: str, batch_id: str):
        self.config = config
        self._secret = secret
        self.batch_id = batch_id
        self.private_tokens = 0
        self.public_tokens = 0
        self.token_rhos: list[float] = []          # realised zCDP of each private token
        self.local_sensitivities: list[float] = []
        self.median_tokens = 0                     # median_ptr: sampled while the test passed
        self._gate = None
        self._stability_test = None

    @property
    def test_failed(self) -> bool:
        return self._stability_test is not None and self._stability_test.failed

    def _rng(self, step, purpose):
        return keyed_generator(self._secret, GENERATION_STAGE, self.batch_id, step, purpose)

    def choose(self, step: int, logits: np.ndarray) -> int | None:
        kept = None
        if self.config.top_k:
            # The mask reads the public row only. Tokens outside it have probability 0
            # whatever the members say, so every rule runs on the kept columns alone
            # (k of them instead of the whole vocabulary) and the sampled index is
            # mapped back to its token id.
            kept = np.flatnonzero(aggregation.top_k_mask(logits[-1], self.config.top_k))
            logits = logits[:, kept]
        token = self._choose_among(step, logits)
        return int(kept[token]) if kept is not None and token is not None else token

    def _choose_among(self, step: int, logits: np.ndarray) -> int | None:
        config = self.config
        members, public = logits[:-1], logits[-1]
        if config.public_tokens:
            if self._gate is None:
                self._gate = aggregation.PublicTokenGate(
                    threshold=config.gate_threshold, noise_scale=config.gate_noise,
                    max_private_tokens=config.private_token_cap, rng=self._rng(-1, "threshold"))
            if self._gate.must_stop:
                return None
            distance = aggregation.gate_distance(members, public, config.expected_batch_size)
            if not self._gate.use_private_token(distance, self._rng(step, "gate")):
                self.public_tokens += 1
                return aggregation.sample_token(public, config.public_temperature,
                                                self._rng(step, "public"))
        elif self.private_tokens >= config.private_token_cap:
            return None
        rule = config.aggregator
        if rule == "median_ptr":
            rule = self._tested_rule(step, members)
            if rule is None:
                return None
        result = aggregate_rows(combine_fn_for(config, logits.shape[-1], rule=rule), members)
        token = aggregation.sample_token(result.aggregate, config.temperature,
                                         self._rng(step, "token"))
        self.private_tokens += 1
        self.local_sensitivities.append(float(result.local_sensitivity))
        self.token_rhos.append(self._token_rho(result.local_sensitivity))
        return token

    def _tested_rule(self, step: int, members: np.ndarray) -> str | None:
        """median_ptr: "median" while the stability test passes, then the fallback
        ("mean", or None to stop the sequence)."""
        ptr = self.config.ptr
        if self._stability_test is None:
            self._stability_test = median_ptr.StabilityTest(
                threshold=ptr.threshold, noise_scale=ptr.noise_scale,
                rng=self._rng(-1, "stability threshold"))
        if not self._stability_test.failed:
            if members.shape[0]:
                clipped = aggregation.clip_logits(members, self.config.clip)
            else:
                clipped = np.zeros((0, members.shape[-1]))
            gamma = median_ptr.distance_to_instability(clipped, self.config.clip, ptr.bound)
            if self._stability_test.passes(gamma, self._rng(step, "stability")):
                self.median_tokens += 1
                return "median"
        return "mean" if ptr.fallback == "mean" else None

    def _token_rho(self, local_sensitivity: float) -> float:
        config = self.config
        if config.aggregator == "mean":
            return aggregation.token_rho_mean(config.clip, config.expected_batch_size,
                                              config.temperature)
        return aggregation.token_rho_median(local_sensitivity, config.temperature)


class PublicSamplingChooser:
    """Samples from one non-private prompt alone (epsilon 0): the public corpus, and
    Private Evolution's texts, whose prompts hold public or already released text.

    `top_k` keeps the prompt's k most likely tokens, as --top_k does for private runs.
    """

    def __init__(self, *, temperature: float, secret: str, sample_id: str,
                 top_k: int | None = None):
        self._temperature = temperature
        self._secret = secret
        self._sample_id = sample_id
        self._top_k = top_k

    def choose(self, step: int, logits: np.ndarray) -> int:
        rng = keyed_generator(self._secret, "public_corpus", self._sample_id, step)
        row = logits[-1]
        if self._top_k is not None:
            row = aggregation.apply_mask(row, aggregation.top_k_mask(row, self._top_k))
        return aggregation.sample_token(row, self._temperature, rng)


def check_template(template: str, *, labelled: bool) -> None:
    """Raises ValueError unless the template has {text} (and {label} only with labels)."""
    fields = set()
    try:
        for _, field, _, _ in string.Formatter().parse(template):
            if field is not None:
                fields.add(field)
    except ValueError as error:
        raise ValueError(f"the prompt template is malformed: {error}") from None
    if "text" not in fields:
        raise ValueError("the prompt template has no {text} placeholder")
    unknown = fields - {"text", "label"}
    if unknown:
        raise ValueError(f"the prompt template has unknown placeholders: "
                         f"{', '.join('{' + f + '}' for f in sorted(unknown))}")
    if "label" in fields and not labelled:
        raise ValueError("the prompt template uses {label} but no --label_column is given")


def render_prompt(template: str, text: str, label: str | None) -> str:
    return template.format(text=text, label=label if label is not None else "")
