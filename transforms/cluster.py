"""Cluster: private clustering of embedded records (METHOD.md §2).

Output: each record keyed by its cluster (label, centre index), and one
`ClusterRelease`, the DP release every later stage plans from: the noisy
count of every cluster and the centres records are assigned to. Nothing a
later stage reads about the private data comes from anywhere else.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from mechanisms import cluster as clustering
from mechanisms.assign_to_batches import planned_batch_count
from mechanisms.randomness import keyed_generator
from beam_pipeline import progress
from transforms.read import NAMESPACE

UNIFORM, PUBLIC_CENTERS, DP_KMEANS = "uniform", "public_centers", "dp_kmeans"


@dataclasses.dataclass(frozen=True)
class ClusteringConfig:
    mode: str
    expected_batch_size: int
    histogram_noise: float
    labels: tuple = (None,)            # the public label domain; (None,): no label column
    kept_centers: int = 8
    kmeans_clusters: int = 8
    kmeans_rounds: int = 3
    kmeans_sum_noise: float = 4.0
    kmeans_count_noise: float = 4.0


@dataclasses.dataclass
class ClusterRelease:
    """What the clustering stage releases (all of it DP or public)."""

    centres: dict              # label -> (K, D) centres
    usable: dict               # label -> indices of the centres records may join
    noisy_counts: dict         # (label, centre) -> noisy count, for every usable cluster

    def batch_counts(self, expected_batch_size: int) -> dict:
        return {key: planned_batch_count(count, expected_batch_size)
                for key, count in self.noisy_counts.items()}

    def cluster_of(self, label, embedding) -> tuple:
        usable = self.usable[label]
        return label, int(usable[nearest_index(embedding, self.centres[label][usable])])


class ClusterStatsCombineFn(beam.CombineFn):
    """Per (label, centre): the count and, optionally, the sum of member embeddings."""

    def __init__(self, with_sums: bool):
        super().__init__()
        self._with_sums = with_sums

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, keyed_embedding):
        key, embedding = keyed_embedding
        return clustering.add_to_cluster(accumulator, key,
                                         embedding if self._with_sums else None)

    def merge_accumulators(self, accumulators):
        return clustering.merge_cluster_statistics(accumulators)

    def extract_output(self, accumulator):
        return accumulator


def centres_by_label(centres, domain) -> dict:
    """label -> (K, D) centres for every label of `domain`, from None (uniform: one
    placeholder centre per label), a per-label dict, or one (K, D) array for all labels."""
    if centres is None:
        return {label: np.zeros((1, 1)) for label in domain}
    if isinstance(centres, dict):
        missing = [label for label in domain if label not in centres]
        if missing:
            raise ValueError(f"no centres for the labels {missing}")
        return {label: np.asarray(centres[label], dtype="float64") for label in domain}
    shared = np.asarray(centres, dtype="float64")
    return {label: shared for label in domain}


def centres_of_label(centres_by_label: dict, record) -> np.ndarray:
    """The centres of the record's label. The domain is public, so a label outside it is an
    error, never a new cell (the read stage rejects such records before they get here)."""
    centres = centres_by_label.get(record.label)
    if centres is None:
        raise ValueError("a record has a label outside the label domain")
    return centres


def nearest_index(embedding, centres) -> int:
    # One centre (uniform clustering's placeholder among them) needs no distance.
    if len(centres) == 1:
        return 0
    return int(clustering.nearest_centre(embedding[None, :], centres)[0])


def release_histogram(stats: dict, centres: dict, config: ClusteringConfig, secret: str, *,
                      keep_top: int | None, stage: str) -> ClusterRelease:
    """Noisy count for every (label, centre) of the domain, then the clusters kept.

    Every cell gets noise, empty ones included, so the set of released cells
    does not depend on the data.
    """
    noisy, usable = {}, {}
    for label in config.labels:
        k = len(centres[label])
        exact = np.array([stats.get((label, j), (0, 0.0))[0] for j in range(k)], "float64")
        rng = keyed_generator(secret, stage, "histogram", label)
        counts = clustering.noisy_counts(exact, config.histogram_noise, rng)
        if keep_top is None:
            kept = np.array([j for j in range(k)
                             if planned_batch_count(counts[j], config.expected_batch_size) > 0],
                            dtype=int)
        else:
            kept = clustering.keep_centres(counts, keep=keep_top,
                                           min_count=config.expected_batch_size)
        usable[label] = kept if len(kept) else np.arange(k)
        for j in kept:
            noisy[(label, int(j))] = float(counts[j])
    return ClusterRelease(centres=centres, usable=usable, noisy_counts=noisy)


class Cluster(beam.PTransform):
    """(record, embedding) -> ((label, centre), record), plus the ClusterRelease singleton.

    `public_centres`: for PUBLIC_CENTERS, a singleton PCollection of the
    (K, D) centres fitted on the public corpus. `dimension`: for DP_KMEANS, the
    encoder's output dimension (`offline_models.loading.encoder_dimension`).
    """

    def __init__(self, config: ClusteringConfig, secret: str, public_centres=None, *,
                 dimension: int | None = None):
        super().__init__()
        if config.mode not in (UNIFORM, PUBLIC_CENTERS, DP_KMEANS):
            raise ValueError(f"unknown clustering '{config.mode}'")
        if config.mode == PUBLIC_CENTERS and public_centres is None:
            raise ValueError("public_centers clustering needs the public centres")
        if config.mode == DP_KMEANS and dimension is None:
            raise ValueError("dp_kmeans clustering needs the encoder's dimension")
        self._config = config
        self._secret = secret
        self._public_centres = public_centres
        self._dimension = dimension

    def expand(self, embedded):
        config, secret = self._config, self._secret
        if config.mode == UNIFORM:
            centres = embedded.pipeline | "NoCentres" >> beam.Create([None])
        elif config.mode == PUBLIC_CENTERS:
            centres = self._public_centres
        else:
            centres = embedded | "DpKMeans" >> DpKMeans(config, secret, self._dimension)

        label_centres = centres | "CentresPerLabel" >> beam.Map(centres_by_label, config.labels)

        def nearest_of_all(pair, centres_by_label):
            record, embedding = pair
            return (record.label,
                    nearest_index(embedding, centres_of_label(centres_by_label, record))), \
                embedding

        stats = (embedded
                 | "NearestCentre" >> beam.Map(nearest_of_all, beam.pvalue.AsSingleton(label_centres))
                 | "ClusterCounts" >> beam.CombineGlobally(ClusterStatsCombineFn(with_sums=False)))
        keep_top = config.kept_centers if config.mode == PUBLIC_CENTERS else None
        release = stats | "NoisyHistogram" >> beam.Map(
            lambda exact, centres_by_label: release_histogram(
                exact, centres_by_label, config, secret, keep_top=keep_top, stage=config.mode),
            beam.pvalue.AsSingleton(label_centres))

        assigned_counter = Metrics.counter(NAMESPACE, "records_clustered")

        def assign(pair, release_):
            record, embedding = pair
            assigned_counter.inc()
            return release_.cluster_of(record.label, embedding), record

        clustered = embedded | "AssignToCluster" >> beam.Map(
            assign, beam.pvalue.AsSingleton(release))
        return {"clustered": clustered, "release": release}


class _NoisyLloydStep(beam.DoFn):
    def __init__(self, config: ClusteringConfig, secret: str, round_index: int):
        self._config = config
        self._secret = secret
        self._round = round_index

    def process(self, stats, previous):
        config = self._config
        updated = {}
        for label, centres in previous.items():
            k = len(centres)
            sums = np.array([np.broadcast_to(stats.get((label, j), (0, 0.0))[1], centres.shape[1])
                             for j in range(k)], "float64")
            counts = np.array([stats.get((label, j), (0, 0.0))[0] for j in range(k)], "float64")
            rng = keyed_generator(self._secret, DP_KMEANS, "lloyd", self._round, label)
            updated[label], _ = clustering.noisy_lloyd_centres(
                sums, counts, centres, sigma_sum=config.kmeans_sum_noise,
                sigma_count=config.kmeans_count_noise, rng=rng)
        progress.announce("clustering: DP k-means round %d/%d released", self._round + 1,
                          config.kmeans_rounds)
        yield updated


class DpKMeans(beam.PTransform):
    """T unrolled noisy Lloyd rounds; the centres travel as a singleton side input.

    The initial centres are random unit vectors of the encoder's `dimension`, keyed by the
    run secret: nothing about the records, not even their width, shapes them, so an empty
    input runs like any other.
    """

    def __init__(self, config: ClusteringConfig, secret: str, dimension: int):
        super().__init__()
        if dimension < 1:
            raise ValueError(f"the encoder's dimension must be >= 1, got {dimension}")
        self._config = config
        self._secret = secret
        self._dimension = int(dimension)

    def expand(self, embedded):
        config, secret, dimension = self._config, self._secret, self._dimension

        def initial_centres(_):
            return {label: clustering.random_unit_centres(
                config.kmeans_clusters, dimension,
                keyed_generator(secret, DP_KMEANS, "init", label)) for label in config.labels}

        centres = (embedded.pipeline | "Seed" >> beam.Create([None])
                   | "InitialCentres" >> beam.Map(initial_centres))
        for round_index in range(config.kmeans_rounds):
            stats = (embedded
                     | f"Assign {round_index}" >> beam.Map(
                         lambda pair, c: ((pair[0].label, nearest_index(
                             pair[1], centres_of_label(c, pair[0]))), pair[1]),
                         beam.pvalue.AsSingleton(centres))
                     | f"SumsAndCounts {round_index}" >> beam.CombineGlobally(
                         ClusterStatsCombineFn(with_sums=True)))
            centres = stats | f"Noise {round_index}" >> beam.ParDo(
                _NoisyLloydStep(config, secret, round_index), beam.pvalue.AsSingleton(centres))
        return centres

