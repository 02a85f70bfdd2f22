"""Brute-force and statistical tests of the aggregation rules (docs/privacy.md)."""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats

from mechanisms import gate, median, token_rules

C = 1.0
GRID = np.linspace(-C, C, 5)  # -c, -c/2, 0, c/2, c: ties are common


def _random_batch(rng, n, vocab, kind):
    if kind == "grid":
        return rng.choice(GRID, size=(n, vocab))
    if kind == "continuous":
        return rng.uniform(-C, C, size=(n, vocab))
    return token_rules.clip_logits(rng.normal(scale=C, size=(n, vocab)), C)


def _neighbours(batch, extra_values=GRID):
    """Every removal, and every addition whose coordinates come from -c, +c,
    the batch's own values in that coordinate and a grid.

    The lower median of S + {y} is a non-decreasing function of y, so the
    shift it makes is largest at y = -c or y = +c; the other candidates are
    there to catch ties and mistakes in that argument.
    """
    for i in range(batch.shape[0]):
        yield np.delete(batch, i, axis=0)
    candidates = [np.union1d(extra_values, batch[:, j]) for j in range(batch.shape[1])]
    for added in itertools.product(*candidates):
        yield np.vstack([batch, added])


def _log_ratio_ranges(aggregate, neighbour_aggregates, tau):
    log_p = np.log(token_rules.softmax(aggregate, tau))
    for other in neighbour_aggregates:
        ratio = log_p - np.log(token_rules.softmax(other, tau))
        yield np.abs(ratio).max(), ratio.max() - ratio.min()


# ----------------------------------------------------------------- clipping


def test_clip_matches_the_formula_on_vectors_and_batches():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=5.0, size=(6, 11))
    clipped = token_rules.clip_logits(z, 2.0)
    expected = np.maximum(-2.0, z - z.max(axis=1, keepdims=True) + 2.0)
    np.testing.assert_array_equal(clipped, expected)
    np.testing.assert_array_equal(token_rules.clip_logits(z[3], 2.0), expected[3])
    assert clipped.min() >= -2.0 and np.all(clipped.max(axis=1) == 2.0)


def test_clip_ignores_masked_tokens_for_its_max_and_floors_them():
    z = np.array([9.0, 1.0, 0.5, -3.0])
    mask = np.array([False, True, True, True])
    clipped = token_rules.clip_logits(token_rules.apply_mask(z, mask), 1.0)
    np.testing.assert_array_equal(clipped, [-1.0, 1.0, 0.5, -1.0])


def test_clip_rejects_unusable_logits():
    with pytest.raises(ValueError):
        token_rules.clip_logits([np.nan, 1.0], 1.0)
    with pytest.raises(ValueError):
        token_rules.clip_logits([-np.inf, -np.inf], 1.0)
    with pytest.raises(ValueError):
        token_rules.clip_logits([0.0, 1.0], 0.0)


def test_top_k_mask_keeps_exactly_the_k_largest_public_logits():
    z = np.array([0.3, 2.0, -1.0, 5.0, 1.0])
    np.testing.assert_array_equal(token_rules.top_k_mask(z, 2), [False, True, False, True, False])
    assert token_rules.top_k_mask(z, None).all() and token_rules.top_k_mask(z, 99).all()
    with pytest.raises(ValueError):
        token_rules.top_k_mask(z, 0)


# ---------------------------------------------------------------- mean rule


def test_mean_divides_by_the_expected_size_and_accepts_an_empty_batch():
    batch = np.array([[1.0, -1.0], [0.5, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(token_rules.mean_aggregate(batch, 4), [2.5 / 4, 0.0])
    np.testing.assert_array_equal(token_rules.mean_aggregate(np.zeros((0, 3)), 4), np.zeros(3))


@pytest.mark.parametrize("n", [0, 1, 3, 8, 13])
def test_one_member_moves_the_mean_by_at_most_c_over_s_and_that_is_attained(n):
    rng = np.random.default_rng(n)
    s, vocab = 8, 4
    batch = _random_batch(rng, n, vocab, "clipped")
    base = token_rules.mean_aggregate(batch, s)
    bound = token_rules.mean_sensitivity(C, s)
    assert bound == C / s
    shifts = [np.abs(token_rules.mean_aggregate(other, s) - base).max()
              for other in _neighbours(batch)]
    assert max(shifts) <= bound * (1 + 1e-12)
    assert max(shifts) == pytest.approx(bound, rel=1e-12)


@pytest.mark.parametrize("n", [0, 1, 4, 9])
def test_exact_token_privacy_loss_of_the_mean_never_exceeds_eta(n):
    rng = np.random.default_rng(100 + n)
    s, tau, vocab = 4, 0.7, 4
    batch = _random_batch(rng, n, vocab, "clipped")
    eta = 2 * token_rules.mean_sensitivity(C, s) / tau
    assert eta ** 2 / 8 == pytest.approx(token_rules.token_rho_mean(C, s, tau), rel=1e-12)
    neighbours = (token_rules.mean_aggregate(b, s) for b in _neighbours(batch))
    worst = np.array(list(_log_ratio_ranges(token_rules.mean_aggregate(batch, s), neighbours, tau)))
    assert worst.max() <= eta * (1 + 1e-12)
    # Adding a member with +c and -c coordinates spans the whole range.
    assert worst[:, 1].max() == pytest.approx(eta, rel=1e-9)


# -------------------------------------------------------------- median rule


def _lower_median_by_hand(column):
    ordered = sorted(column)
    return ordered[(len(ordered) - 1) // 2]


@pytest.mark.parametrize("n", range(0, 10))
def test_median_is_the_lower_median_and_empty_gives_zeros(n):
    rng = np.random.default_rng(200 + n)
    batch = _random_batch(rng, n, 5, "grid")
    expected = ([_lower_median_by_hand(batch[:, j]) for j in range(5)] if n
                else np.zeros(5))
    np.testing.assert_array_equal(median.median_aggregate(batch), expected)


def _brute_force_local_sensitivity(batch):
    base = median.median_aggregate(batch)
    return max(np.abs(median.median_aggregate(other) - base).max()
               for other in _neighbours(batch))


@pytest.mark.parametrize("n", range(0, 10))
@pytest.mark.parametrize("kind", ["grid", "continuous", "clipped"])
def test_median_local_sensitivity_equals_the_brute_force_maximum(n, kind):
    rng = np.random.default_rng(1000 * n + len(kind))
    for _ in range(3):
        batch = _random_batch(rng, n, 3, kind)
        assert median.median_local_sensitivity(batch, C) == _brute_force_local_sensitivity(batch)


def test_median_local_sensitivity_on_hand_made_cases():
    assert median.median_local_sensitivity(np.zeros((0, 2)), C) == C
    # One member: adding -c takes the top token from c to -c.
    assert median.median_local_sensitivity([[C, -C]], C) == 2 * C
    assert median.median_local_sensitivity([[-C, -C]], C) == C  # removal -> 0
    # Three agreeing members centred on the median pin it.
    assert median.median_local_sensitivity([[-1.0], [0.2], [0.2], [0.2], [1.0]], C) == 0.0
    # Three agree, but the lower median's neighbour gap lies outside them.
    assert median.median_local_sensitivity(
        [[-1.0], [-0.5], [0.2], [0.2], [0.2]], C) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        median.median_local_sensitivity([[3.0, 0.0]], C)


def test_masked_tokens_do_not_change_the_median_local_sensitivity():
    rng = np.random.default_rng(7)
    for n in range(0, 9):
        logits = rng.normal(size=(n, 12))
        mask = token_rules.top_k_mask(rng.normal(size=12), 5)
        clipped = token_rules.clip_logits(token_rules.apply_mask(logits, mask), C) if n else np.zeros((0, 12))
        assert (median.median_local_sensitivity(clipped, C)
                == median.median_local_sensitivity(clipped[:, mask], C))


@pytest.mark.parametrize("n", range(0, 8))
def test_exact_token_privacy_loss_of_the_median_never_exceeds_its_local_eta(n):
    rng = np.random.default_rng(300 + n)
    tau = 0.5
    for kind in ("grid", "clipped"):
        batch = _random_batch(rng, n, 3, kind)
        local = median.median_local_sensitivity(batch, C)
        eta = 2 * local / tau
        assert eta ** 2 / 8 == pytest.approx(median.token_rho_median(local, tau), rel=1e-12)
        neighbours = (median.median_aggregate(b) for b in _neighbours(batch))
        worst = np.array(list(_log_ratio_ranges(median.median_aggregate(batch), neighbours, tau)))
        assert worst.max() <= eta + 1e-12
        assert worst.max() <= 2 * median.median_worst_case_sensitivity(C) / tau + 1e-12


def test_five_agreeing_members_of_eight_cost_nothing_ex_post():
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=3.0, size=(8, 50))
    logits[1:5] = logits[0]
    assert median.median_local_sensitivity(token_rules.clip_logits(logits, 10.0), 10.0) == 0.0


# ----------------------------------------------------------------- sampling


def test_sample_token_frequencies_match_the_softmax():
    rng = np.random.default_rng(11)
    aggregate = np.array([0.5, -0.2, 0.0, 1.0, -1.0, -np.inf])
    tau, draws = 0.7, 20_000
    counts = np.bincount([token_rules.sample_token(aggregate, tau, rng) for _ in range(draws)],
                         minlength=aggregate.size)
    assert counts[-1] == 0  # masked
    expected = token_rules.softmax(aggregate, tau)[:-1] * draws
    np.testing.assert_allclose(expected.sum(), draws)
    assert stats.chisquare(counts[:-1], expected).pvalue > 1e-3
    # The same data rejects a wrong temperature: the test has power.
    wrong = token_rules.softmax(aggregate, 2 * tau)[:-1] * draws
    assert stats.chisquare(counts[:-1], wrong).pvalue < 1e-6


def test_sample_token_never_draws_a_masked_token():
    rng = np.random.default_rng(12)
    aggregate = token_rules.apply_mask(np.zeros(8), token_rules.top_k_mask(np.arange(8.0), 3))
    assert {token_rules.sample_token(aggregate, 1e-3, rng) for _ in range(500)} <= {5, 6, 7}


# ----------------------------------------------------- public-token gate


def test_gate_distance_moves_by_at_most_one_over_s_per_member():
    rng = np.random.default_rng(21)
    s, vocab = 4, 6
    public = rng.normal(size=vocab)
    for n in range(0, 7):
        members = rng.normal(scale=2.0, size=(n, vocab))
        base = gate.gate_distance(members, public, s)
        for i in range(n):
            removed = gate.gate_distance(np.delete(members, i, 0), public, s)
            assert abs(removed - base) <= 1 / s + 1e-12
        for _ in range(50):
            added = np.vstack([members, rng.normal(scale=5.0, size=vocab)])
            assert abs(gate.gate_distance(added, public, s) - base) <= 1 / s + 1e-12
    # A member all on a token the batch already over-weights moves d by 1/s.
    members = np.full((2, 3), -np.inf)
    members[:, 0] = 0.0
    public = np.array([-np.inf, 0.0, -np.inf])
    assert gate.gate_distance(np.vstack([members, members[:1]]), public, s) - \
        gate.gate_distance(members, public, s) == pytest.approx(1 / s)


def _laplace_cdf(x, scale):
    return 0.5 * math.exp(x / scale) if x < 0 else 1 - 0.5 * math.exp(-x / scale)


def _above_threshold_probability(distances, sigma, above_last):
    """P(d_1..d_{k-1} below, d_k above (or below)) for threshold 0 + Lap(sigma)
    and query noise Lap(2 sigma), integrated over the threshold noise."""
    def integrand(u):
        density = math.exp(-abs(u) / sigma) / (2 * sigma)
        below = math.prod(_laplace_cdf(u - d, 2 * sigma) for d in distances[:-1])
        last = _laplace_cdf(u - distances[-1], 2 * sigma)
        return density * below * ((1 - last) if above_last else last)
    kinks = sorted({0.0, *map(float, distances)})
    value, _ = integrate.quad(integrand, -60 * sigma, 60 * sigma, points=kinks,
                              limit=500, epsabs=0, epsrel=1e-11)
    return value


def test_an_above_threshold_round_is_two_sensitivities_over_sigma_dp():
    # The derived cost of one private token of the gate: with queries of
    # sensitivity 1/s, every outcome of a round changes probability by at most
    # exp(2 / (s sigma)) between neighbours, whichever way each query moves.
    rng = np.random.default_rng(31)
    s, sigma = 4, 0.1
    sensitivity = 1 / s
    epsilon = 2 * sensitivity / sigma
    worst = 0.0
    for length in (1, 2, 3):
        for _ in range(4):
            distances = rng.uniform(-0.5, 0.5, size=length)
            for signs in itertools.product((-1, 1), repeat=length):
                moved = distances + sensitivity * np.array(signs)
                for above_last in (True, False):
                    p = _above_threshold_probability(distances, sigma, above_last)
                    q = _above_threshold_probability(moved, sigma, above_last)
                    worst = max(worst, abs(np.log(p / q)))
    assert worst <= epsilon * (1 + 1e-6)
    assert worst > 0.5 * epsilon  # the check is not vacuous
    assert gate.gate_rho_per_private_token(sigma, s) == pytest.approx(epsilon ** 2 / 2)
    assert gate.gate_rho_per_private_token(sigma, s) == pytest.approx(2 / (s * sigma) ** 2)


class _ScriptedRng:
    """Returns scripted Laplace draws and records the scales asked for."""

    def __init__(self, draws):
        self.draws, self.scales = list(draws), []

    def laplace(self, loc, scale):
        self.scales.append(scale)
        return loc + self.draws.pop(0)


def test_gate_draws_threshold_and_query_noise_at_the_right_scales():
    rng = _ScriptedRng([0.1, 0.0, 0.5, -0.2, 0.0, 0.0])
    token_gate = gate.PublicTokenGate(threshold=1.0, noise_scale=0.3, max_private_tokens=5, rng=rng)
    assert not token_gate.use_private_token(1.05, rng)  # 1.05 + 0.0 < 1.0 + 0.1
    assert token_gate.use_private_token(0.7, rng)       # 0.7 + 0.5 >= 1.1, then redraw
    assert token_gate.use_private_token(0.8, rng)       # 0.8 + 0.0 >= 1.0 - 0.2
    assert rng.scales == [0.3, 0.6, 0.6, 0.3, 0.6, 0.3]
    assert token_gate.private_tokens == 2


def test_gate_emits_public_tokens_when_distributions_agree():
    rng = np.random.default_rng(41)
    s = 4
    public = rng.normal(size=20)
    members = np.tile(public, (s, 1))
    distance = gate.gate_distance(members, public, s)
    assert distance == pytest.approx(0.0, abs=1e-12)
    token_gate = gate.PublicTokenGate(threshold=1.0, noise_scale=0.05, max_private_tokens=3, rng=rng)
    assert not any(token_gate.use_private_token(distance, rng) for _ in range(200))
    assert token_gate.private_tokens == 0 and not token_gate.must_stop


def test_gate_spends_private_tokens_when_distributions_diverge_and_stops_at_the_cap():
    rng = np.random.default_rng(42)
    s, vocab = 4, 20
    public = np.zeros(vocab)
    public[0] = 30.0
    members = np.zeros((s, vocab))
    members[:, 1] = 30.0
    distance = gate.gate_distance(members, public, s)
    assert distance == pytest.approx(2.0, abs=1e-9)
    token_gate = gate.PublicTokenGate(threshold=1.0, noise_scale=0.05, max_private_tokens=3, rng=rng)
    decisions = []
    while not token_gate.must_stop:
        decisions.append(token_gate.use_private_token(distance, rng))
    assert decisions == [True, True, True] and token_gate.private_tokens == 3
    with pytest.raises(RuntimeError):
        token_gate.use_private_token(distance, rng)


def test_gate_decision_probability_matches_the_two_laplace_scales():
    rng = np.random.default_rng(43)
    sigma, threshold, gap = 0.2, 1.0, 0.2
    trials = 20_000
    private = sum(
        gate.PublicTokenGate(threshold=threshold, noise_scale=sigma, max_private_tokens=1,
                            rng=rng).use_private_token(threshold + gap, rng)
        for _ in range(trials))
    expected = _above_threshold_probability(np.array([gap]), sigma, above_last=True)
    assert abs(private / trials - expected) < 4 * np.sqrt(expected * (1 - expected) / trials)
