"""PublicCentres: k-means centres fitted on a public corpus (METHOD.md §2, public_centers).

The corpus is either a public input file or texts the LM writes from the
public prompt (the template with empty text), which are public by
construction: they depend on no private record.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from mechanisms import cluster as clustering
from beam_pipeline import progress
from transforms.embed import EmbedRecords
from transforms.prompt_sampling import Member, SampleFromPrompts
from transforms.read import NAMESPACE, ReadRecords
from transforms.read import RecordSchema

KMEANS_SEED = 20250605  # public data, so a fixed public seed


class GeneratePublicCorpus(beam.PTransform):
    """N texts sampled from the public prompt, cycling through the public labels."""

    def __init__(self, *, lm: str, template: str, labels, size: int, max_new_tokens: int,
                 temperature: float, secret: str, stop_text: str | None,
                 batches_per_call: int = 8):
        super().__init__()
        self._lm = lm
        self._template = template
        self._labels = list(labels) if labels else [None]
        self._size = size
        self._max_new_tokens = max_new_tokens
        self._temperature = temperature
        self._secret = secret
        self._stop_text = stop_text
        self._batches_per_call = batches_per_call

    def expand(self, pbegin):
        labels = self._labels
        # Fixed calls: the corpus, and so the centres, are the same bytes on every runner.
        return (pbegin
                | "Indices" >> beam.Create(range(self._size))
                | "ToMember" >> beam.Map(lambda index: Member(
                    index, labels[index % len(labels)], ""))
                | "Generate" >> SampleFromPrompts(
                    lm=self._lm, template=self._template, secret=self._secret,
                    stop_text=self._stop_text, max_new_tokens=self._max_new_tokens,
                    temperature=self._temperature, top_k=None,
                    per_call=self._batches_per_call, sample_id_prefix="",
                    phase="public corpus")
                # Empty texts stay: they are public points like any other.
                | "Text" >> beam.Map(lambda member: member.text))


class PublicCentres(beam.PTransform):
    """A singleton (K, D) array of unit-norm centres fitted on the public corpus."""

    def __init__(self, *, public_input: str | None, text_column: str, encoder: str,
                 encoder_sequence_length: int, centres: int, corpus: GeneratePublicCorpus | None):
        super().__init__()
        self._public_input = public_input
        self._text_column = text_column
        self._encoder = encoder
        self._sequence_length = encoder_sequence_length
        self._centres = centres
        self._corpus = corpus

    def expand(self, pbegin):
        if self._public_input:
            texts = (pbegin | "ReadPublic" >> ReadRecords(
                self._public_input, RecordSchema(text_column=self._text_column)))["records"]
        else:
            texts = (pbegin | "GeneratePublicCorpus" >> self._corpus
                     | "AsRecords" >> beam.Map(_public_record))
        counter = Metrics.counter(NAMESPACE, "public_corpus_texts")
        k = self._centres

        def fit(embedded):
            counter.inc(len(embedded))
            if not embedded:
                raise ValueError("the public corpus is empty: no centres can be fitted")
            vectors = np.stack([vector for _, vector in
                                sorted(embedded, key=lambda pair: pair[0].text)])
            centres = clustering.fit_kmeans(vectors, k, rng=np.random.default_rng(KMEANS_SEED))
            progress.announce("public corpus: %d texts, %d centres fitted", len(embedded),
                              len(centres))
            return centres

        return (texts
                | "EmbedPublic" >> EmbedRecords(self._encoder,
                                                sequence_length=self._sequence_length,
                                                phase="public corpus: embedding")
                | "CollectPublic" >> beam.combiners.ToList()
                | "FitKMeans" >> beam.Map(fit))


def _public_record(text):
    import hashlib

    from transforms.read import Record

    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
    return Record(record_id=f"public:{digest}", text=text, source="public")
