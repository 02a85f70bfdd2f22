"""SampleFromPrompts: one text per element, sampled from one non-private prompt.

The public corpus (prompts with empty text) and Private Evolution's population
(prompts holding public or already released texts) are both written this way:
no private record is in any prompt, so sampling costs no privacy.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.metrics import Metrics

import numpy as np

from mechanisms import token_rules
from mechanisms.randomness import keyed_generator
from offline_models.joint_decoding import GenerationRequest
from transforms.generate import render_prompt
from transforms.model_handlers import GenerateInFixedCalls
from beam_pipeline import progress
from transforms.read import NAMESPACE


@dataclasses.dataclass(frozen=True)
class Member:
    """One text of a set written from prompts; `index` is its place in the set."""
    index: int
    label: object
    text: str = dataclasses.field(repr=False)
    parent: int | None = None     # Private Evolution: the member of the previous round it varies

    def to_output(self) -> dict:
        output = {"text": self.text}
        if self.label is not None:
            output["label"] = self.label
        return output


class SampleFromPrompts(beam.PTransform):
    """Member -> Member with the text the LM writes from `template` filled with the member's
    text and label. Members `per_call` apart in index share a model call, in index order, so
    every runner writes the same bytes; draws are keyed by `sample_id_prefix` + index."""

    def __init__(self, *, lm: str, template: str, secret: str, stop_text: str | None,
                 max_new_tokens: int, temperature: float, top_k: int | None, per_call: int,
                 sample_id_prefix: str, counter: str | None = None,
                 phase: str = "sampling"):
        super().__init__()
        self._phase = phase
        self._lm = lm
        self._template = template
        self._secret = secret
        self._stop_text = stop_text
        self._max_new_tokens = max_new_tokens
        self._temperature = temperature
        self._top_k = top_k
        self._per_call = per_call
        self._prefix = sample_id_prefix
        self._counter = counter

    def expand(self, members):
        template, secret, prefix, per_call = (self._template, self._secret, self._prefix,
                                              self._per_call)
        temperature, top_k, max_new_tokens, stop_text = (self._temperature, self._top_k,
                                                         self._max_new_tokens, self._stop_text)
        written = Metrics.counter(NAMESPACE, self._counter) if self._counter else None
        tick = progress.counter(self._phase, "texts written")

        def request(member):
            chooser = PublicSamplingChooser(temperature=temperature, secret=secret,
                                            sample_id=f"{prefix}{member.index}", top_k=top_k)
            return member.index // per_call, GenerationRequest(
                key=(member.index, member.label, member.parent),
                prompts=[render_prompt(template, member.text, member.label)],
                chooser=chooser, max_new_tokens=max_new_tokens, stop_text=stop_text)

        def to_member(prediction):
            index, label, parent = prediction.inference.key
            if written is not None:
                written.inc()
            tick()
            return Member(index, label, prediction.inference.text.strip(), parent=parent)

        return (members
                | "ToRequest" >> beam.Map(request)
                | "Generate" >> GenerateInFixedCalls(self._lm, sort_key=lambda r: r.key[0])
                | "ToMember" >> beam.Map(to_member))


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
            row = token_rules.apply_mask(row, token_rules.top_k_mask(row, self._top_k))
        return token_rules.sample_token(row, self._temperature, rng)
