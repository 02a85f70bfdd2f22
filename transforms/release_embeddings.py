"""ReleaseSyntheticEmbeddings: DP synthetic embeddings from DP centres (Beam glue only).

The math lives in transforms/synthetic_embeddings.py. Here each record joins the nearest
centre of its label, one CombineFn reduces the records to per-cell counts, sums and sums of
squares (nothing per record reaches a single worker), and one step releases them with
noise, samples the mixture and writes the file.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import synthetic_embeddings as lib
from transforms.cluster import centres_by_label, centres_of_label, nearest_index
from transforms.randomness import keyed_generator
from transforms.read import NAMESPACE


class EmbeddingStatsCombineFn(beam.CombineFn):
    """((label, centre), embedding) -> {cell: [count, sum, sum of squares]}, clipped to norm 1."""

    def create_accumulator(self):
        return lib.empty_statistics()

    def add_input(self, accumulator, keyed_embedding):
        cell, embedding = keyed_embedding
        return lib.add_to_statistics(accumulator, cell, embedding)

    def merge_accumulators(self, accumulators):
        return lib.merge_statistics(accumulators)

    def extract_output(self, accumulator):
        return accumulator


def release_and_sample(statistics: dict, centres: dict, config: lib.EmbeddingReleaseConfig,
                       secret: str, dimension: int
                       ) -> tuple[lib.EmbeddingRelease, lib.Mixture, tuple]:
    """The noisy release over every (label, centre) cell, its mixture and the samples
    (vectors, labels, clusters); the noise and the draws are keyed by the run secret.

    `dimension` is the encoder's (public), never the records': with no record the release
    would otherwise shrink to whatever width the centres happen to have.
    """
    domain = lib.release_domain(list(centres), centres)
    release = lib.release_statistics(statistics, domain, dimension, config,
                                     keyed_generator(secret, lib.STAGE, "release"))
    mixture = lib.mixture_from_release(release, config)
    samples = lib.sample_mixture(mixture, lib.sample_count(release, config),
                                 keyed_generator(secret, lib.STAGE, "sample"))
    return release, mixture, samples


class ReleaseSyntheticEmbeddings(beam.PTransform):
    """{"embedded": (Record, embedding) pairs, "centres": singleton centres} -> {"summary",
    "written"}.

    `centres`: what `transforms.cluster.centres_by_label` takes: a dict label -> (K, D)
    array (DpKMeans' output, or `ClusterRelease.centres` in any clustering mode), one (K, D)
    array for every label (public centres), or None (uniform: one cell per label).
    `labels`: the public label domain, (None,) for records without a label (the same labels,
    in the same order, as a release of transforms/cluster.py). `dimension`: the encoder's
    output dimension (`offline_models.loading.encoder_dimension`), the width of every
    released sum and sample whatever the input holds. `output_path` ends in .npz or
    .parquet. "summary" is a singleton dict (cells released, cells used, samples written,
    path); "written" a singleton holding the path, complete once the file is written (for
    PublishOutputs).
    """

    def __init__(self, config: lib.EmbeddingReleaseConfig, secret: str, output_path: str, *,
                 labels: tuple = (None,), dimension: int):
        super().__init__()
        lib.format_of(output_path)  # a wrong extension fails while the graph is built
        self._config = config
        self._secret = secret
        self._path = output_path
        self._labels = tuple(labels)
        if dimension < 1:
            raise ValueError(f"the encoder's dimension must be >= 1, got {dimension}")
        self._dimension = int(dimension)

    def expand(self, inputs):
        embedded, centres = inputs["embedded"], inputs["centres"]
        config, secret, path, labels = self._config, self._secret, self._path, self._labels
        dimension = self._dimension
        per_label = centres | "CentresPerLabel" >> beam.Map(centres_by_label, labels)

        def nearest(pair, centres_by_label):
            record, embedding = pair
            label_centres = centres_of_label(centres_by_label, record)
            if len(embedding) != dimension:
                raise ValueError(f"an embedding has {len(embedding)} coordinates, the encoder's "
                                 f"dimension is {dimension}")
            embedding = lib.clip_to_unit_norm(embedding)[0]
            return (record.label, nearest_index(embedding, label_centres)), embedding

        written_counter = Metrics.counter(NAMESPACE, "synthetic_embeddings_written")

        def release(statistics, centres_by_label):
            release_, mixture, (vectors, sample_labels, clusters) = release_and_sample(
                statistics, centres_by_label, config, secret, dimension)
            lib.write_embeddings(path, vectors, sample_labels, clusters)
            written_counter.inc(len(vectors))
            return {"path": path, "cells_released": len(release_.cells),
                    "cells_used": len(mixture.cells), "samples_written": int(len(vectors)),
                    "dimension": int(release_.noisy_sums.shape[1]),
                    "min_count": config.min_count}

        summary = (embedded
                   | "NearestCentre" >> beam.Map(nearest, beam.pvalue.AsSingleton(per_label))
                   | "CellStatistics" >> beam.CombineGlobally(EmbeddingStatsCombineFn())
                   | "ReleaseSampleWrite" >> beam.Map(release, beam.pvalue.AsSingleton(per_label)))
        written = summary | "WrittenPath" >> beam.Map(lambda s: s["path"])
        return {"summary": summary, "written": written}
