import numpy as np

from mechanisms import cluster as clustering
from transforms.cluster import ClusterStatsCombineFn, ClusteringConfig, release_histogram


def _blobs(rng, centres, per_centre, spread=0.05):
    points = [c + rng.normal(0, spread, size=(per_centre, len(c))) for c in centres]
    return clustering.normalise_rows(np.concatenate(points))


def test_fit_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    truth = np.eye(4)[:3]
    points = _blobs(rng, truth, 30)
    centres = clustering.fit_kmeans(points, 3, rng=np.random.default_rng(1))
    assert np.allclose(np.linalg.norm(centres, axis=1), 1)
    assert sorted(np.argmax(centres, axis=1)) == [0, 1, 2]
    labels = clustering.nearest_centre(points, centres)
    assert len(set(labels[:30])) == len(set(labels[30:60])) == len(set(labels[60:])) == 1


def test_nearest_centre_breaks_ties_towards_the_lower_index():
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert list(clustering.nearest_centre(np.array([[1.0, 1.0], [0.0, 2.0]]), centres)) == [0, 1]


def test_keep_centres_takes_the_largest_noisy_counts_above_the_floor():
    noisy = np.array([3.0, 40.0, 9.0, 25.0, 8.0])
    assert list(clustering.keep_centres(noisy, keep=3, min_count=8)) == [1, 3, 2]
    assert list(clustering.keep_centres(noisy, keep=2, min_count=30)) == [1]


def test_noisy_lloyd_step_is_the_mean_direction_when_noise_is_small():
    sums = np.array([[3.0, 0.1], [0.0, 0.0]])
    counts = np.array([3.0, 0.0])
    previous = np.array([[0.0, 1.0], [0.6, 0.8]])
    centres, noisy = clustering.noisy_lloyd_centres(
        sums, counts, previous, sigma_sum=1e-9, sigma_count=1e-9, rng=np.random.default_rng(0))
    np.testing.assert_allclose(centres[0], clustering.normalise_rows(sums[:1])[0], atol=1e-6)
    np.testing.assert_allclose(centres[1], previous[1])  # an empty centre keeps its place
    np.testing.assert_allclose(noisy, counts, atol=1e-6)


def test_noise_has_the_stated_scale():
    rng = np.random.default_rng(3)
    draws = clustering.noisy_counts(np.zeros(20000), 2.5, rng)
    assert abs(draws.std() - 2.5) < 0.05 and abs(draws.mean()) < 0.05


def test_histogram_release_covers_every_cell_of_the_public_domain():
    combine = ClusterStatsCombineFn(with_sums=False)
    accumulator = combine.create_accumulator()
    for key in [("a", 0)] * 30 + [("a", 2)] * 12:
        accumulator = combine.add_input(accumulator, (key, np.zeros(2)))
    config = ClusteringConfig(mode="public_centers", expected_batch_size=8, histogram_noise=1e-6,
                              labels=("a", "b"), kept_centers=2)
    centres = {"a": np.eye(3), "b": np.eye(3)}
    release = release_histogram(combine.extract_output(accumulator), centres, config, "s",
                                keep_top=2, stage="test")
    assert sorted(release.noisy_counts) == [("a", 0), ("a", 2)]
    assert release.batch_counts(8) == {("a", 0): 3, ("a", 2): 1}
    assert list(release.usable["b"]) == [0, 1, 2]  # nothing kept: records still get a centre


def test_one_record_moves_a_rounds_sums_by_at_most_one_whatever_its_norm():
    """DP k-means' sums have L2 sensitivity 1 only if each embedding has norm <= 1: the
    CombineFn clips, whatever the encoder returns."""
    rng = np.random.default_rng(4)
    keys = [("a", 0), ("a", 1), ("b", 0)]
    combine = ClusterStatsCombineFn(with_sums=True)

    def sums(extra):
        parts = []
        for part in range(2):  # two bundles, merged: the path a runner takes
            accumulator = combine.create_accumulator()
            for i in range(part, 12, 2):
                accumulator = combine.add_input(
                    accumulator, (keys[i % 3], clustering.normalise_rows(rng.normal(size=5))))
            parts.append(accumulator)
        if extra is not None:
            parts[0] = combine.add_input(parts[0], extra)
        out = combine.extract_output(combine.merge_accumulators(parts))
        return (np.concatenate([np.broadcast_to(out.get(k, (0, 0.0))[1], 5) for k in keys]),
                np.array([out.get(k, (0, 0.0))[0] for k in keys]))

    for huge in (1e6 * np.ones(5), np.array([0, 0, -3e3, 0, 0])):
        state = rng.bit_generator.state
        without, counts_without = sums(None)
        rng.bit_generator.state = state
        with_it, counts_with = sums((("a", 1), huge))
        assert np.linalg.norm(with_it - without) <= 1 + 1e-9
        assert np.abs(counts_with - counts_without).sum() == 1
