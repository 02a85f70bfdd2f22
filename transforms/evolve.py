"""PrivateEvolution: the Private Evolution loop on Beam, T rounds unrolled in the graph.

A round: embed the population; every private record finds its nearest member
(of its label) on its worker, the population riding along as a side input;
a CombineFn counts the votes; one step adds the Gaussian noise and redraws;
the LM writes L variations of every member drawn (one in the last round). The
math is in mechanisms/evolve.py, the variation prompts in mechanisms/variation.py.
"""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from mechanisms import evolve as pe
from mechanisms import variation as variations
from transforms.embed import EmbedRecords
from transforms.prompt_sampling import Member, SampleFromPrompts
from mechanisms.randomness import keyed_generator
from transforms.read import NAMESPACE
from transforms.read import Record

_LOG = logging.getLogger(__name__)


class VoteCountsCombineFn(beam.CombineFn):
    """Votes per population index: {index: count}. None (no member of the label) is counted
    apart under the key None, so no vote disappears unseen."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, index):
        accumulator[index] = accumulator.get(index, 0) + 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for index, count in accumulator.items():
                merged[index] = merged.get(index, 0) + count
        return merged

    def extract_output(self, accumulator):
        return accumulator


@dataclasses.dataclass(frozen=True)
class _PopulationIndex:
    """Member vectors per label, for the nearest-member search on every worker."""
    by_label: dict          # label -> (population indices, (m, d) vectors)

    @classmethod
    def of(cls, embedded_members):
        grouped = {}
        for member, vector in sorted(embedded_members, key=lambda pair: pair[0].index):
            grouped.setdefault(member.label, []).append((member.index, vector))
        by_label = {label: (np.array([i for i, _ in pairs], dtype=np.int64),
                            np.stack([v for _, v in pairs]).astype("float64"))
                    for label, pairs in grouped.items()}
        return cls(by_label=by_label)

    def nearest(self, label, embedding):
        indices, vectors = self.by_label.get(label, (np.zeros(0, np.int64), None))
        return pe.nearest_member(embedding, vectors, indices)


class PrivateEvolution(beam.PTransform):
    """(Record, embedding) of the private records -> the final population of Members.

    Also returns, under "rounds", one summary dict per round (what the noisy
    release led to, for the report: noisy figures and public sizes only).
    `labels` is the public label domain, (None,) for records without a label.
    """

    def __init__(self, config: pe.EvolutionConfig, *, lm: str, encoder: str,
                 encoder_sequence_length: int, template: str, variation_template: str,
                 labels, secret: str, stop_text: str | None, max_new_tokens: int,
                 temperature: float, top_k: int | None, texts_per_call: int = 64,
                 variation_temperature: float, variation_max_new_tokens: int,
                 variation: str = variations.TEMPLATE,
                 blank_fraction: float = variations.DEFAULT_BLANK_FRACTION):
        """`temperature` and `max_new_tokens` write the first population, the
        `variation_*` ones every variation."""
        super().__init__()
        self._variation = variation
        self._blank_fraction = blank_fraction
        self._variation_temperature = variation_temperature
        self._variation_max_new_tokens = variation_max_new_tokens
        self._config = config
        self._lm = lm
        self._encoder = encoder
        self._sequence_length = encoder_sequence_length
        self._template = template
        self._variation_template = variation_template
        self._labels = labels
        self._secret = secret
        self._stop_text = stop_text
        self._max_new_tokens = max_new_tokens
        self._temperature = temperature
        self._top_k = top_k
        self._per_call = texts_per_call

    def expand(self, embedded):
        first_members = [Member(index, label, "") for index, label in enumerate(
            pe.initial_labels(self._labels, self._config.voting_population))]
        seeds = (embedded.pipeline | "Start" >> beam.Create([None])
                 | "InitialLabels" >> beam.FlatMap(lambda _: first_members))
        population = seeds | "InitialPopulation" >> self._generate(
            self._template, round_index=None, temperature=self._temperature,
            max_new_tokens=self._max_new_tokens)
        summaries = []
        for round_index in range(self._config.rounds):
            population, summary = self._round(embedded, population, round_index)
            summaries.append(summary)
        rounds = (summaries | "AllRounds" >> beam.Flatten()
                  | "RoundList" >> beam.combiners.ToList()
                  | "InOrder" >> beam.Map(lambda rows: sorted(rows, key=lambda r: r["round"])))
        return {"population": population, "rounds": rounds}

    def _round(self, embedded, population, round_index):
        config, secret = self._config, self._secret
        name = f"Round {round_index + 1}"
        no_member = Metrics.counter(NAMESPACE, "pe_votes_without_member_of_label")

        index = (population
                 | f"{name} AsRecords" >> beam.Map(
                     lambda m: Record(record_id=f"member:{round_index}:{m.index:08d}",
                                      text=m.text, label=m.label, source="population"))
                 | f"{name} EmbedPopulation" >> EmbedRecords(
                     self._encoder, sequence_length=self._sequence_length)
                 | f"{name} CollectPopulation" >> beam.combiners.ToList()
                 | f"{name} PopulationIndex" >> beam.Map(
                     lambda pairs: _PopulationIndex.of(
                         [(_member_of(record), vector) for record, vector in pairs])))

        def vote(pair, population_index):
            record, embedding = pair
            choice = population_index.nearest(record.label, embedding)
            if choice is None:
                no_member.inc()
            return choice

        votes = (embedded
                 | f"{name} Vote" >> beam.Map(vote, beam.pvalue.AsSingleton(index))
                 | f"{name} CountVotes" >> beam.CombineGlobally(VoteCountsCombineFn()))

        def release(counts, members):
            members = sorted(members, key=lambda m: m.index)
            exact = pe.vote_histogram({i: c for i, c in counts.items() if i is not None},
                                      config.voting_population)
            rng = keyed_generator(secret, pe.STAGE, "votes", round_index)
            noisy = pe.noisy_votes(exact, config.vote_noise, rng)
            drawn = pe.redraw_by_label([m.label for m in members], noisy,
                                       config.vote_threshold, config.population, rng)
            survivors = [Member(position, members[parent].label, members[parent].text,
                                parent=int(parent)) for position, parent in enumerate(drawn)]
            summary = {"round": round_index + 1, "voting_population": len(members),
                       "members_above_threshold": int(np.sum(noisy > config.vote_threshold)),
                       "distinct_members_drawn": len(set(drawn.tolist())),
                       "noisy_votes_total": float(noisy.sum())}
            _LOG.info("private evolution: round %d/%d: %d distinct members drawn of %d",
                      round_index + 1, config.rounds, summary["distinct_members_drawn"],
                      len(members))
            return survivors, summary

        released = votes | f"{name} NoisyRedraw" >> beam.Map(
            release, beam.pvalue.AsList(population))
        survivors = released | f"{name} Survivors" >> beam.FlatMap(lambda pair: pair[0])
        summary = released | f"{name} Summary" >> beam.Map(lambda pair: pair[1])
        # L variations of every survivor while the population still votes; one in the last
        # round, whose texts are the output.
        copies = 1 if round_index == config.rounds - 1 else config.candidates
        to_vary = survivors | f"{name} Candidates" >> beam.FlatMap(_candidates_of, copies)
        if self._variation == variations.FILL_IN:
            fraction = self._blank_fraction
            to_vary = to_vary | f"{name} BlankOut" >> beam.Map(
                lambda m: dataclasses.replace(m, text=variations.blank_out(
                    m.text, fraction, keyed_generator(secret, pe.STAGE, "blanks",
                                                      round_index, m.index))))
        varied = to_vary | f"{name} Variations" >> self._generate(
            self._variation_template, round_index=round_index,
            temperature=self._variation_temperature,
            max_new_tokens=self._variation_max_new_tokens)
        return varied, summary

    def _generate(self, template, *, round_index, temperature, max_new_tokens):
        stage = "initial" if round_index is None else f"round-{round_index}"
        return SampleFromPrompts(
            lm=self._lm, template=template, secret=self._secret, stop_text=self._stop_text,
            max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=self._top_k, per_call=self._per_call, sample_id_prefix=f"pe:{stage}:",
            counter="pe_texts_generated")


def _candidates_of(survivor: Member, copies: int):
    """The `copies` members that survivor p's variations fill: indices p * L .. p * L + L - 1."""
    for copy in range(copies):
        yield dataclasses.replace(survivor, index=survivor.index * copies + copy)


def _member_of(record: Record) -> Member:
    return Member(index=int(record.record_id.rsplit(":", 1)[1]), label=record.label,
                  text=record.text)
