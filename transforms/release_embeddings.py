"""ReleaseSyntheticEmbeddings: DP synthetic embeddings from DP centres (Beam glue only).

The math lives in mechanisms/release_embeddings.py; the file formats are here. Here each record joins the nearest
centre of its label, one CombineFn reduces the records to per-cell counts, sums and sums of
squares (nothing per record reaches a single worker), and one step releases them with
noise, samples the mixture and writes the file.
"""

from __future__ import annotations

import io
from typing import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from mechanisms import release_embeddings as lib
from transforms.cluster import centres_by_label, centres_of_label, nearest_index
from mechanisms.randomness import keyed_generator
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
        format_of(output_path)  # a wrong extension fails while the graph is built
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
            write_embeddings(path, vectors, sample_labels, clusters)
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


# ------------------------------------------------------------------ files

FORMATS = {".npz": "npz", ".parquet": "parquet"}
# NPZ stores labels as a str array: a record without a label is written as the empty string.
# Labels read from input files are never empty (an empty label is a rejected row), so ""
# means "no label" without ambiguity. Parquet writes a null instead.
NO_LABEL = ""


class EmbeddingsFileError(ValueError):
    """An embeddings file that cannot be read: wrong format, unreadable or malformed."""


def format_of(path: str) -> str:
    for extension, name in FORMATS.items():
        if path.lower().endswith(extension):
            return name
    raise EmbeddingsFileError(f"cannot tell the format of the embeddings file {path}: name it "
                              f"{' or '.join(FORMATS)}")


def embeddings_bytes(file_format: str, vectors: np.ndarray, labels: Sequence,
                     clusters: Sequence[int]) -> bytes:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a (N, D) array, got shape {vectors.shape}")
    if not len(vectors) == len(labels) == len(clusters):
        raise ValueError("embeddings, labels and clusters differ in length")
    clusters = np.asarray(clusters, dtype=np.int64)
    buffer = io.BytesIO()
    if file_format == "npz":
        np.savez(buffer, embeddings=vectors,
                 labels=np.array([NO_LABEL if label is None else str(label) for label in labels],
                                 dtype=str),
                 clusters=clusters)
    elif file_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        dimension = vectors.shape[1]
        table = pa.table({
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), type=pa.float32()), dimension).cast(
                    pa.list_(pa.float32())),
            "label": pa.array([None if label is None else str(label) for label in labels],
                              type=pa.string()),
            "cluster": pa.array(clusters, type=pa.int64())})
        pq.write_table(table, buffer)
    else:
        raise ValueError(f"unknown embeddings format {file_format!r}")
    return buffer.getvalue()


def write_embeddings(path: str, vectors: np.ndarray, labels: Sequence,
                     clusters: Sequence[int]) -> str:
    """Writes .npz (arrays `embeddings` float32 (N, D), `labels` str with "" for no label,
    `clusters` int64) or .parquet (columns `embedding` list<float32>, `label` string or null,
    `cluster` int64), by the extension, through Beam's FileSystems (local or gs://)."""

    data = embeddings_bytes(format_of(path), vectors, labels, clusters)
    with FileSystems.create(path, mime_type="application/octet-stream") as handle:
        handle.write(data)
    return path


def read_embeddings(path: str) -> tuple[np.ndarray, list]:
    """(vectors float32 (N, D), labels with None for no label) of a file `write_embeddings`
    wrote; EmbeddingsFileError (one line) when the file is missing, unreadable or malformed."""

    file_format = format_of(path)
    try:
        if not FileSystems.exists(path):
            raise EmbeddingsFileError(f"the embeddings file {path} does not exist")
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            data = handle.read()
    except EmbeddingsFileError:
        raise
    except Exception as error:  # noqa: BLE001 (any filesystem's error: one line)
        raise EmbeddingsFileError(f"cannot read the embeddings file {path}: {error}") from None
    try:
        if file_format == "npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                missing = {"embeddings", "labels"} - set(arrays.files)
                if missing:
                    raise EmbeddingsFileError(
                        f"the embeddings file {path} has no array {sorted(missing)[0]!r} "
                        f"(its arrays: {', '.join(arrays.files) or 'none'})")
                vectors = np.asarray(arrays["embeddings"], dtype=np.float32)
                labels = [None if label == NO_LABEL else str(label)
                          for label in arrays["labels"].tolist()]
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
            missing = {"embedding", "label"} - set(table.column_names)
            if missing:
                raise EmbeddingsFileError(
                    f"the embeddings file {path} has no column {sorted(missing)[0]!r} "
                    f"(its columns: {', '.join(table.column_names)})")
            rows = table.column("embedding").to_pylist()
            vectors = np.asarray(rows, dtype=np.float32) if rows else np.zeros((0, 0), np.float32)
            labels = [None if label is None else str(label)
                      for label in table.column("label").to_pylist()]
    except EmbeddingsFileError:
        raise
    except Exception as error:  # noqa: BLE001 (a corrupt or foreign file: one line)
        raise EmbeddingsFileError(f"the embeddings file {path} is not a readable "
                                  f"{file_format} file: {error}") from None
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise EmbeddingsFileError(f"the embeddings file {path} does not hold one vector per "
                                  f"label (shape {vectors.shape}, {len(labels)} labels)")
    if not np.all(np.isfinite(vectors)):
        raise EmbeddingsFileError(f"the embeddings file {path} holds NaN or infinite values")
    return vectors, labels
