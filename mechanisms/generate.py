"""Choosing each synthetic token privately from one batch's next-token logits.

Beam-free. `PrivateTokenChooser` is the per-batch state of METHOD.md §4: it
receives the logits of the batch's seed prompts plus the public prompt (the
last row), applies the optional top-k mask and public-token gate, aggregates
with the rule's aggregator, samples, and records what accounting needs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mechanisms import gate, median, median_ptr, token_rules
from mechanisms.token_rules import ClippedMeanAggregator
from mechanisms.median import MedianAggregator
from mechanisms.randomness import keyed_generator

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
        if self.aggregator not in token_rules.RULES:
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


def aggregator_for(config: GenerationConfig, vocab_size: int, *, rule: str | None = None):
    if (rule or config.aggregator) == "mean":
        return ClippedMeanAggregator(config.clip, config.expected_batch_size,
                                    vocab_size=vocab_size)
    return MedianAggregator(config.clip, vocab_size=vocab_size)


def aggregate_rows(aggregator, member_logits: np.ndarray):
    """Runs an aggregator over one batch's rows."""
    accumulator = aggregator.create_accumulator()
    for row in member_logits:
        accumulator = aggregator.add_input(accumulator, row)
    return aggregator.extract_output(accumulator)


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

    @property
    def reads_other_rows_on_last_rows_columns(self) -> bool:
        """With a top-k mask every rule reads the members on the public row's top-k
        columns only (see `choose`), so the model need not compute the rest."""
        return bool(self.config.top_k)

    def _rng(self, step, purpose):
        return keyed_generator(self._secret, GENERATION_STAGE, self.batch_id, step, purpose)

    def choose(self, step: int, logits: np.ndarray) -> int | None:
        kept = None
        if self.config.top_k:
            # The mask reads the public row only. Tokens outside it have probability 0
            # whatever the members say, so every rule runs on the kept columns alone
            # (k of them instead of the whole vocabulary) and the sampled index is
            # mapped back to its token id.
            kept = np.flatnonzero(token_rules.top_k_mask(logits[-1], self.config.top_k))
            logits = logits[:, kept]
        token = self._choose_among(step, logits)
        return int(kept[token]) if kept is not None and token is not None else token

    def _choose_among(self, step: int, logits: np.ndarray) -> int | None:
        config = self.config
        members, public = logits[:-1], logits[-1]
        if config.public_tokens:
            if self._gate is None:
                self._gate = gate.PublicTokenGate(
                    threshold=config.gate_threshold, noise_scale=config.gate_noise,
                    max_private_tokens=config.private_token_cap, rng=self._rng(-1, "threshold"))
            if self._gate.must_stop:
                return None
            distance = gate.gate_distance(members, public, config.expected_batch_size)
            if not self._gate.use_private_token(distance, self._rng(step, "gate")):
                self.public_tokens += 1
                return token_rules.sample_token(public, config.public_temperature,
                                                self._rng(step, "public"))
        elif self.private_tokens >= config.private_token_cap:
            return None
        rule = config.aggregator
        if rule == "median_ptr":
            rule = self._tested_rule(step, members)
            if rule is None:
                return None
        result = aggregate_rows(aggregator_for(config, logits.shape[-1], rule=rule), members)
        token = token_rules.sample_token(result.aggregate, config.temperature,
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
                clipped = token_rules.clip_logits(members, self.config.clip)
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
            return token_rules.token_rho_mean(config.clip, config.expected_batch_size,
                                              config.temperature)
        return median.token_rho_median(local_sensitivity, config.temperature)
