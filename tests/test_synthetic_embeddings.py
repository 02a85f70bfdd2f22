"""DP synthetic embeddings: sensitivities by brute force, the noise, the mixture, the files,
the ledger, and the Beam transform on the FnApiRunner."""

import math

import apache_beam as beam
import dp_accounting
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from mechanisms import accounting
from mechanisms import release_embeddings as lib
from transforms import release_embeddings as embeddings_files
from transforms.read import Record
from transforms.release_embeddings import ReleaseSyntheticEmbeddings

DOMAIN = [(label, j) for label in ("a", "b") for j in range(3)]


def _unit(rng, count, dimension):
    vectors = rng.normal(size=(count, dimension))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _stacked(cells, vectors, dimension):
    return lib.stacked_statistics(lib.cluster_statistics(cells, vectors), DOMAIN, dimension)


def _extreme_vectors(dimension):
    """Unit vectors that maximise one bound or another: a basis vector (x∘x has norm 1),
    the uniform vector, and an over-norm vector that clipping must bring back."""
    basis = np.eye(dimension)[0]
    uniform = np.full(dimension, 1 / math.sqrt(dimension))
    return [basis, -basis, uniform, 50.0 * basis, np.full(dimension, 3.0)]


@pytest.mark.parametrize("seed", range(6))
def test_every_removal_and_addition_moves_each_release_by_at_most_one(seed):
    rng = np.random.default_rng(seed)
    dimension = int(rng.integers(2, 6))
    n = int(rng.integers(1, 9))
    vectors = _unit(rng, n, dimension) * rng.uniform(0.2, 3.0, size=(n, 1))   # some over norm 1
    cells = [DOMAIN[i] for i in rng.integers(len(DOMAIN), size=n)]
    base = _stacked(cells, vectors, dimension)
    neighbours = [_stacked(cells[:i] + cells[i + 1:], np.delete(vectors, i, axis=0), dimension)
                  for i in range(n)]
    additions = [*_unit(rng, 20, dimension), *_extreme_vectors(dimension)]
    for extra in additions:
        cell = DOMAIN[int(rng.integers(len(DOMAIN)))]
        neighbours.append(_stacked(cells + [cell], np.vstack([vectors, extra]), dimension))
    worst = [0.0, 0.0, 0.0]
    for neighbour in neighbours:
        for part in range(3):
            change = float(np.linalg.norm((neighbour[part] - base[part]).ravel()))
            worst[part] = max(worst[part], change)
    assert worst[0] == pytest.approx(1.0)                       # counts: exactly 1
    assert worst[1] <= 1.0 + 1e-9 and worst[2] <= 1.0 + 1e-9     # sums, sums of squares
    assert worst[1] == pytest.approx(1.0) and worst[2] == pytest.approx(1.0)  # basis vector


def test_over_norm_embeddings_are_scaled_to_norm_one_and_shorter_ones_kept():
    vectors = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = lib.clip_to_unit_norm(vectors)
    np.testing.assert_allclose(clipped, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    statistics = lib.cluster_statistics([("a", 0)] * 3, vectors)
    count, total, squares = statistics[("a", 0)]
    assert count == 3
    np.testing.assert_allclose(total, [0.9, 1.2])
    np.testing.assert_allclose(squares, [0.36 + 0.09, 0.64 + 0.16])
    with pytest.raises(ValueError, match="NaN"):
        lib.clip_to_unit_norm(np.array([[np.nan, 1.0]]))


def test_release_noise_has_the_configured_standard_deviations():
    config = lib.EmbeddingReleaseConfig(count_noise=2.5, sum_noise=0.7)
    statistics = lib.cluster_statistics([("a", 0), ("b", 2)], np.eye(4)[:2])
    exact = lib.stacked_statistics(statistics, DOMAIN, 4)
    rng = np.random.default_rng(7)
    draws = 4000
    noise = {"count": [], "sum": [], "square": []}
    for _ in range(draws // len(DOMAIN)):
        release = lib.release_statistics(statistics, DOMAIN, 4, config, rng)
        noise["count"].append(release.noisy_counts - exact[0])
        noise["sum"].append((release.noisy_sums - exact[1]).ravel())
        noise["square"].append((release.noisy_squares - exact[2]).ravel())
    for name, sigma in (("count", 2.5), ("sum", 0.7), ("square", 0.7)):
        values = np.concatenate(noise[name])
        # The sample standard deviation of m normal draws has relative error ~ 1/sqrt(2m).
        tolerance = 5 * sigma / math.sqrt(2 * len(values))
        assert abs(values.std() - sigma) < tolerance, name
        assert abs(values.mean()) < 5 * sigma / math.sqrt(len(values)), name


def test_every_cell_of_the_domain_is_released_empty_ones_included():
    config = lib.EmbeddingReleaseConfig(count_noise=1.0, sum_noise=1.0)
    statistics = lib.cluster_statistics([("a", 1)], np.eye(3)[:1])
    release = lib.release_statistics(statistics, DOMAIN, 3, config, np.random.default_rng(0))
    assert release.cells == tuple(DOMAIN)
    assert release.noisy_counts.shape == (6,) and release.noisy_sums.shape == (6, 3)
    assert np.all(release.noisy_counts != 0) and np.all(release.noisy_squares != 0)
    # The same data-independent domain whether or not the data fill it.
    empty = lib.release_statistics({}, DOMAIN, 3, config, np.random.default_rng(0))
    assert empty.cells == release.cells
    with pytest.raises(ValueError, match="outside the release domain"):
        lib.release_statistics(lib.cluster_statistics([("c", 0)], np.eye(3)[:1]), DOMAIN, 3,
                               config, np.random.default_rng(0))


def test_mixture_sampling_reproduces_a_known_mixture_when_noise_is_tiny():
    rng = np.random.default_rng(11)
    dimension = 3
    true_means = np.array([[0.5, 0.0, 0.0], [0.0, -0.4, 0.2]])
    true_sd = np.array([[0.05, 0.1, 0.02], [0.08, 0.03, 0.06]])
    sizes = {("a", 0): 3000, ("b", 1): 1000}
    cells, vectors = [], []
    for (cell, size), mean, sd in zip(sizes.items(), true_means, true_sd):
        cells += [cell] * size
        vectors.append(mean + sd * rng.standard_normal((size, dimension)))
    vectors = np.vstack(vectors)
    config = lib.EmbeddingReleaseConfig(count_noise=1e-6, sum_noise=1e-6)
    release = lib.release_statistics(lib.cluster_statistics(cells, vectors), DOMAIN, dimension,
                                     config, rng)
    mixture = lib.mixture_from_release(release, config)
    assert mixture.cells == (("a", 0), ("b", 1))          # empty cells fall below min_count
    np.testing.assert_allclose(mixture.weights, [0.75, 0.25], atol=1e-6)
    for row, cell in enumerate(mixture.cells):
        members = vectors[[c == cell for c in cells]]
        np.testing.assert_allclose(mixture.means[row], members.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(mixture.variances[row], members.var(axis=0), atol=1e-5)
    assert lib.sample_count(release, config) == 4000

    draws = 40000
    samples, labels, clusters = lib.sample_mixture(mixture, draws, np.random.default_rng(3),
                                                   normalise=False)
    assert samples.dtype == np.float32 and samples.shape == (draws, dimension)
    share_a = np.mean(np.asarray(labels) == "a")
    assert abs(share_a - 0.75) < 5 * math.sqrt(0.75 * 0.25 / draws)
    assert set(zip(labels, clusters.tolist())) == {("a", 0), ("b", 1)}
    for row, (label, centre) in enumerate(mixture.cells):
        chosen = samples[(np.asarray(labels) == label) & (clusters == centre)]
        sd = np.sqrt(mixture.variances[row])
        np.testing.assert_array_less(np.abs(chosen.mean(axis=0) - mixture.means[row]),
                                     5 * sd / math.sqrt(len(chosen)))
        np.testing.assert_allclose(chosen.std(axis=0), sd, rtol=0.05)

    unit, _, _ = lib.sample_mixture(mixture, 50, np.random.default_rng(3))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


def test_mixture_floors_variances_and_skips_cells_below_the_minimum_count():
    release = lib.EmbeddingRelease(
        cells=(("a", 0), ("a", 1), ("b", 0)), noisy_counts=np.array([4.0, 0.5, -2.0]),
        noisy_sums=np.array([[2.0, 0.0], [1.0, 1.0], [1.0, 1.0]]),
        noisy_squares=np.array([[0.5, -3.0], [1.0, 1.0], [1.0, 1.0]]))
    config = lib.EmbeddingReleaseConfig(count_noise=1.0, sum_noise=1.0, variance_floor=1e-4)
    mixture = lib.mixture_from_release(release, config)
    assert mixture.cells == (("a", 0),)
    np.testing.assert_allclose(mixture.means, [[0.5, 0.0]])
    np.testing.assert_allclose(mixture.variances, [[1e-4, 1e-4]])  # 0.125 - 0.25 < 0; -0.75 < 0
    assert lib.sample_count(release, config) == 4                   # round(4 + 0.5)
    none = lib.mixture_from_release(dataclass_replace_counts(release, [-1.0, 0.2, 0.0]), config)
    vectors, labels, clusters = lib.sample_mixture(none, 10, np.random.default_rng(0))
    assert vectors.shape == (0, 2) and labels == [] and len(clusters) == 0


def dataclass_replace_counts(release, counts):
    import dataclasses

    return dataclasses.replace(release, noisy_counts=np.asarray(counts, dtype=float))


@pytest.mark.parametrize("extension", ["npz", "parquet"])
def test_files_round_trip(tmp_path, extension):
    vectors = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    labels = ["pos", None, "neg", "pos", "neg"]
    path = embeddings_files.write_embeddings(str(tmp_path / f"embeddings.{extension}"), vectors, labels,
                                [0, 1, 2, 0, 1])
    read_vectors, read_labels = embeddings_files.read_embeddings(path)
    assert read_vectors.dtype == np.float32
    np.testing.assert_array_equal(read_vectors, vectors)
    assert read_labels == labels
    if extension == "npz":
        with np.load(path) as arrays:
            assert arrays["labels"].tolist() == ["pos", "", "neg", "pos", "neg"]
            assert arrays["clusters"].tolist() == [0, 1, 2, 0, 1]
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        assert table.column_names == ["embedding", "label", "cluster"]
        embedding_type = table.schema.field("embedding").type
        assert pa.types.is_list(embedding_type) and embedding_type.value_type == pa.float32()
        assert table.column("cluster").to_pylist() == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("extension", ["npz", "parquet"])
def test_files_round_trip_on_cloud_storage(gcs_bucket, extension):
    vectors = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)
    path = f"gs://{gcs_bucket}/run/synthetic_embeddings.{extension}"
    embeddings_files.write_embeddings(path, vectors, ["x", "y", None], [2, 0, 1])
    read_vectors, labels = embeddings_files.read_embeddings(path)
    np.testing.assert_array_equal(read_vectors, vectors)
    assert labels == ["x", "y", None]
    with pytest.raises(embeddings_files.EmbeddingsFileError, match="does not exist"):
        embeddings_files.read_embeddings(f"gs://{gcs_bucket}/run/nothing.{extension}")


def test_empty_file_round_trips(tmp_path):
    path = embeddings_files.write_embeddings(str(tmp_path / "none.npz"), np.zeros((0, 3)), [], [])
    vectors, labels = embeddings_files.read_embeddings(path)
    assert vectors.shape == (0, 3) and labels == []


@pytest.mark.parametrize("problem, expected", [
    ("missing", "does not exist"),
    ("extension", "cannot tell the format"),
    ("corrupt", "is not a readable npz file"),
    ("no_labels", "has no array 'labels'"),
])
def test_unreadable_files_give_one_line_errors(tmp_path, problem, expected):
    path = tmp_path / "embeddings.npz"
    if problem == "extension":
        path = tmp_path / "embeddings.csv"
        path.write_text("a,b\n")
    elif problem == "corrupt":
        path.write_bytes(b"not a zip file")
    elif problem == "no_labels":
        np.savez(path, embeddings=np.zeros((2, 2)))
    with pytest.raises(embeddings_files.EmbeddingsFileError, match=expected) as error:
        embeddings_files.read_embeddings(str(path))
    assert "\n" not in str(error.value)


def test_ledger_entries_equal_a_hand_computed_gaussian_rdp():
    config = lib.EmbeddingReleaseConfig(count_noise=3.0, sum_noise=5.0)
    delta = 1e-6
    ledger = accounting.PrivacyLedger(delta=delta)
    entries = lib.record_release(ledger, "Synthetic embeddings", config)
    assert [e.parameters["noise_stddev"] for e in entries] == [3.0, 5.0, 5.0]
    assert all(e.parameters["l2_sensitivity"] == 1.0 for e in entries)
    # RDP of a Gaussian with multiplier m at order a is a / (2 m^2); compose by summing.
    orders = np.array(accounting.rdp_accountant()._orders)
    rdp = orders / (2 * 3.0 ** 2) + 2 * orders / (2 * 5.0 ** 2)
    by_hand = dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0]
    assert ledger.epsilon() == pytest.approx(by_hand, rel=1e-9)
    assert ledger.epsilon("Synthetic embeddings") == pytest.approx(by_hand, rel=1e-9)
    assert "sum of the squared embedding coordinates" in ledger.to_markdown()


def test_config_refuses_nonpositive_noise():
    with pytest.raises(ValueError, match="must be > 0"):
        lib.EmbeddingReleaseConfig(count_noise=0.0, sum_noise=1.0)


# ---------------------------------------------------------------------------- Beam

def _records(rng, per_label=24):
    """Two labels in 4 dimensions, each around its own direction."""
    pairs = []
    for label, direction in (("pos", np.array([1.0, 0, 0, 0])), ("neg", np.array([0, 0, 1.0, 0]))):
        vectors = direction + 0.1 * rng.normal(size=(per_label, 4))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, vector in enumerate(vectors):
            pairs.append((Record(record_id=f"{label}{i}", text="private", label=label), vector))
    return pairs


@pytest.mark.parametrize("extension", ["npz", "parquet"])
def test_transform_writes_the_sampled_embeddings_on_the_fn_api_runner(tmp_path, extension):
    pairs = _records(np.random.default_rng(5))
    centres = {"pos": np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]),
               "neg": np.array([[0, 0, 1.0, 0], [0, 0, 0, 1.0]])}
    config = lib.EmbeddingReleaseConfig(count_noise=0.5, sum_noise=0.05, samples=40)
    path = str(tmp_path / f"synthetic_embeddings.{extension}")
    pipeline = TestPipeline(runner="FnApiRunner")
    result = ({"embedded": pipeline | "Embedded" >> beam.Create(pairs),
               "centres": pipeline | "Centres" >> beam.Create([centres])}
              | ReleaseSyntheticEmbeddings(config, "secret", path, labels=("pos", "neg"),
                                           dimension=4))
    assert_that(result["written"], equal_to([path]), label="Written")
    assert_that(result["summary"] | beam.Map(
        lambda s: (s["cells_released"], s["samples_written"], s["dimension"])),
        equal_to([(4, 40, 4)]), label="Summary")
    outcome = pipeline.run()
    outcome.wait_until_finish()
    counters = outcome.metrics().query(MetricsFilter().with_name("synthetic_embeddings_written"))
    assert sum(c.committed for c in counters["counters"]) == 40
    vectors, labels = embeddings_files.read_embeddings(path)
    assert vectors.shape == (40, 4)
    assert set(labels) == {"pos", "neg"}
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # The samples sit near their label's direction: the noise is small against 24 records.
    for vector, label in zip(vectors, labels):
        assert np.argmax(np.abs(vector)) == (0 if label == "pos" else 2)


def test_transform_releases_the_public_domain_with_shared_centres(tmp_path):
    pairs = _records(np.random.default_rng(6), per_label=12)
    shared = np.eye(4)[:3]
    config = lib.EmbeddingReleaseConfig(count_noise=0.5, sum_noise=0.05)
    path = str(tmp_path / "synthetic_embeddings.npz")
    with TestPipeline(runner="FnApiRunner") as pipeline:
        result = ({"embedded": pipeline | "Embedded" >> beam.Create(pairs),
                   "centres": pipeline | "Centres" >> beam.Create([shared])}
                  | ReleaseSyntheticEmbeddings(config, "secret", path,
                                               labels=("neg", "pos", "unseen"), dimension=4))
        assert_that(result["summary"] | beam.Map(lambda s: s["cells_released"]),
                    equal_to([9]))
    vectors, labels = embeddings_files.read_embeddings(path)
    assert abs(len(labels) - 24) <= 6          # round(sum of positive noisy counts) ~ 24
    assert set(labels) <= {"neg", "pos", "unseen"} and {"neg", "pos"} <= set(labels)
    # Same secret, same file: retried or re-run, the release is the same.
    again = str(tmp_path / "again.npz")
    with TestPipeline(runner="FnApiRunner") as pipeline:
        _ = ({"embedded": pipeline | "Embedded" >> beam.Create(pairs),
              "centres": pipeline | "Centres" >> beam.Create([shared])}
             | ReleaseSyntheticEmbeddings(config, "secret", again,
                                          labels=("neg", "pos", "unseen"), dimension=4))
    np.testing.assert_array_equal(embeddings_files.read_embeddings(again)[0], vectors)


def test_transform_without_labels_and_one_placeholder_centre(tmp_path):
    """Uniform clustering's release: one (1, 1) placeholder centre per label, here the one
    label None of a run without a label column."""
    pairs = [(Record(record_id=str(i), text="private"), vector)
             for i, vector in enumerate(_unit(np.random.default_rng(8), 30, 4))]
    config = lib.EmbeddingReleaseConfig(count_noise=0.5, sum_noise=0.05, samples=10)
    path = str(tmp_path / "synthetic_embeddings.parquet")
    with TestPipeline(runner="FnApiRunner") as pipeline:
        result = ({"embedded": pipeline | "Embedded" >> beam.Create(pairs),
                   "centres": pipeline | "Centres" >> beam.Create([{None: np.zeros((1, 1))}])}
                  | ReleaseSyntheticEmbeddings(config, "secret", path, dimension=4))
        assert_that(result["summary"] | beam.Map(
            lambda s: (s["cells_released"], s["cells_used"], s["dimension"])),
            equal_to([(1, 1, 4)]))
    vectors, labels = embeddings_files.read_embeddings(path)
    assert vectors.shape == (10, 4) and labels == [None] * 10


def test_transform_takes_the_centres_of_dp_kmeans_cluster_release(tmp_path):
    """The wiring of the pipeline: Cluster (dp_kmeans) -> release.centres -> this transform."""
    from transforms.cluster import DP_KMEANS, Cluster, ClusteringConfig

    pairs = _records(np.random.default_rng(9))
    clustering = ClusteringConfig(mode=DP_KMEANS, expected_batch_size=4, histogram_noise=1.0,
                                  labels=("neg", "pos"), kmeans_clusters=2, kmeans_rounds=2,
                                  kmeans_sum_noise=0.5, kmeans_count_noise=0.5)
    config = lib.EmbeddingReleaseConfig(count_noise=0.5, sum_noise=0.05)
    path = str(tmp_path / "synthetic_embeddings.npz")
    with TestPipeline(runner="FnApiRunner") as pipeline:
        embedded = pipeline | "Embedded" >> beam.Create(pairs)
        release = (embedded | "Cluster" >> Cluster(clustering, "secret", dimension=4))["release"]
        result = ({"embedded": embedded,
                   "centres": release | "Centres" >> beam.Map(lambda r: r.centres)}
                  | ReleaseSyntheticEmbeddings(config, "secret", path, labels=clustering.labels,
                                               dimension=4))
        assert_that(result["summary"] | beam.Map(lambda s: s["cells_released"]), equal_to([4]))
    vectors, labels = embeddings_files.read_embeddings(path)
    assert abs(len(labels) - 48) <= 6 and set(labels) == {"neg", "pos"}
    assert vectors.shape[1] == 4


def test_transform_refuses_an_unknown_extension():
    config = lib.EmbeddingReleaseConfig(count_noise=1.0, sum_noise=1.0)
    with pytest.raises(embeddings_files.EmbeddingsFileError, match="cannot tell the format"):
        ReleaseSyntheticEmbeddings(config, "secret", "out/embeddings.csv", dimension=4)


@pytest.mark.parametrize("centres", [{"a": np.zeros((1, 1)), "b": np.zeros((1, 1))},
                                     {"a": np.eye(6)[:2], "b": np.eye(6)[2:5]}],
                         ids=["placeholder", "centres"])
def test_the_release_has_the_same_shape_for_no_record_and_one(centres):
    from transforms.release_embeddings import release_and_sample

    config = lib.EmbeddingReleaseConfig(count_noise=1.0, sum_noise=1.0, samples=5)
    one = lib.cluster_statistics([("b", 0)], _unit(np.random.default_rng(2), 1, 6))
    releases = [release_and_sample(statistics, centres, config, "secret", dimension=6)[0]
                for statistics in ({}, one)]
    assert releases[0].cells == releases[1].cells
    assert releases[0].noisy_sums.shape == releases[1].noisy_sums.shape == (
        len(releases[0].cells), 6)
    assert releases[0].noisy_squares.shape == releases[1].noisy_squares.shape
