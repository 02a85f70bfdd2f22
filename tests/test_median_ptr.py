"""median_ptr: distance to instability, the stability test, its accounting, and the
released distributions on neighbouring batches (docs/privacy.md)."""

import itertools
import math

import dp_accounting
import numpy as np
import pytest

from mechanisms import accounting, median, token_rules
from mechanisms import median_ptr
from mechanisms.generate import GenerationConfig, PrivateTokenChooser

C = 1.0
GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)


def local_sensitivity(batch):
    return median.median_local_sensitivity(np.asarray(batch, dtype=float).reshape(-1, 1)
                                                if np.ndim(batch) == 1 else batch, C)


def brute_force_gamma(batch, bound, additions, limit):
    """Breadth-first search over every batch reachable by removing a member or adding
    one of `additions`: the least number of edits to a batch whose exact local
    sensitivity exceeds the bound (None if more than `limit`)."""
    start = tuple(sorted(map(tuple, batch)))
    frontier, seen = {start}, {start}
    for depth in range(limit + 1):
        for state in frontier:
            members = np.array(state, dtype=float).reshape(len(state), -1) if state \
                else np.zeros((0, len(additions[0])))
            if median.median_local_sensitivity(members, C) > bound:
                return depth
        following = set()
        for state in frontier:
            for index in range(len(state)):
                following.add(state[:index] + state[index + 1:])
            for added in additions:
                following.add(tuple(sorted(state + (tuple(added),))))
        frontier = following - seen
        seen |= frontier
    return None


def column(values):
    return np.array(values, dtype=float).reshape(-1, 1)


# ----------------------------------------------------------- distance to instability


@pytest.mark.parametrize("bound", [0.25, 0.6, 1.2])
def test_gamma_matches_brute_force_on_every_small_batch(bound):
    """All multisets of up to 4 members over a 5-value grid, one coordinate: the
    search adds grid values (the formula's extremes included) and removes members,
    so it finds the exact distance whenever the formula's construction is optimal."""
    additions = [(v,) for v in GRID]
    checked = 0
    for n in range(0, 5):
        for batch in itertools.combinations_with_replacement(GRID, n):
            gamma = median_ptr.distance_to_instability(column(batch), C, bound)
            assert brute_force_gamma([(v,) for v in batch], bound, additions,
                                     limit=gamma) == gamma, (batch, bound)
            checked += 1
    assert checked == 126


def test_gamma_matches_brute_force_in_two_coordinates():
    """Random two-coordinate batches with off-grid values: the batch's distance is
    its closest coordinate's, and no off-grid or mixed addition does better."""
    rng = np.random.default_rng(7)
    grid = (-1.0, 0.0, 1.0)
    for _ in range(25):
        n = int(rng.integers(1, 4))
        batch = np.round(rng.uniform(-1, 1, size=(n, 2)), 2)
        bound = float(rng.choice([0.3, 0.7]))
        values = sorted(set(grid) | set(batch.ravel()))
        additions = list(itertools.product(values, repeat=2))
        gamma = median_ptr.distance_to_instability(batch, C, bound)
        per_column = min(median_ptr.distance_to_instability(batch[:, [k]], C, bound)
                         for k in range(2))
        assert gamma == per_column
        assert brute_force_gamma(batch.tolist(), bound, additions, limit=gamma) == gamma


def test_gamma_has_sensitivity_one():
    """Adding or removing one member moves gamma by at most 1, on every small batch."""
    for bound in (0.25, 0.6):
        for n in range(0, 5):
            for batch in itertools.combinations_with_replacement(GRID, n):
                gamma = median_ptr.distance_to_instability(column(batch), C, bound)
                neighbours = [batch[:i] + batch[i + 1:] for i in range(n)]
                neighbours += [batch + (v,) for v in GRID]
                for neighbour in neighbours:
                    other = median_ptr.distance_to_instability(column(neighbour), C, bound)
                    assert abs(gamma - other) <= 1, (batch, neighbour, bound)


def test_gamma_zero_exactly_when_local_sensitivity_exceeds_the_bound():
    rng = np.random.default_rng(3)
    for _ in range(200):
        batch = token_rules.clip_logits(rng.normal(size=(int(rng.integers(0, 7)), 6)), C) \
            if rng.random() < 0.9 else np.zeros((0, 6))
        bound = float(rng.uniform(0.05, 1.5))
        gamma = median_ptr.distance_to_instability(batch, C, bound)
        assert (gamma == 0) == (median.median_local_sensitivity(batch, C) > bound)


def test_agreeing_batches_are_far_from_instability():
    agreeing = np.full((16, 3), 0.5)
    assert median_ptr.distance_to_instability(agreeing, C, 0.3) >= 8
    assert median_ptr.distance_to_instability(agreeing[:8], C, 0.3) < 8


def test_gamma_refuses_unclipped_values_and_a_vacuous_bound():
    with pytest.raises(ValueError, match=r"\[-c, c\]"):
        median_ptr.distance_to_instability(column([2.0]), C, 0.5)
    with pytest.raises(ValueError, match="nothing to test"):
        median_ptr.distance_to_instability(column([0.0]), C, 2.0)


# ------------------------------------------------------------- the sparse vector


@pytest.mark.parametrize("a,b", [(2.0, 1.0), (1.0, 1.0), (0.4, 0.2)])
def test_laplace_difference_tail_matches_integration_and_sampling(a, b):
    z = np.linspace(-60 * a, 60 * a, 400_001)
    if math.isclose(a, b):
        density = np.exp(-np.abs(z) / a) * (a + np.abs(z)) / (4 * a * a)
    else:
        density = (a * np.exp(-np.abs(z) / a) - b * np.exp(-np.abs(z) / b)) / (2 * (a * a - b * b))
    rng = np.random.default_rng(11)
    samples = rng.laplace(0, a, 1_000_000) - rng.laplace(0, b, 1_000_000)
    for t in (-1.0, 0.0, 0.5, 2.0, 5.0):
        tail = median_ptr.laplace_difference_tail(t, a, b)
        integral = np.trapezoid(np.where(z > t, density, 0.0), z)
        assert tail == pytest.approx(integral, abs=2e-4)
        assert tail == pytest.approx((samples > t).mean(), abs=2e-3)


def test_threshold_is_the_smallest_that_meets_delta():
    sigma, tokens, delta = 0.5, 48, 1e-6
    threshold = median_ptr.threshold_for_delta(noise_scale=sigma, max_tokens=tokens,
                                               delta=delta)
    assert median_ptr.ptr_delta(threshold=threshold, noise_scale=sigma,
                                max_tokens=tokens) <= delta
    assert median_ptr.ptr_delta(threshold=threshold - 1e-3, noise_scale=sigma,
                                max_tokens=tokens) > delta


@pytest.mark.parametrize("gamma", [0, 2, 4])
def test_stability_test_passes_at_the_analytic_rate(gamma):
    """Fresh tests, fixed seed: the first step passes with P(gamma + Lap(2s) > T + Lap(s))."""
    sigma, threshold = 1.0, 2.5
    rng = np.random.default_rng(5)
    trials = 40_000
    passed = sum(median_ptr.StabilityTest(threshold=threshold, noise_scale=sigma, rng=rng)
                 .passes(gamma, rng) for _ in range(trials))
    expected = median_ptr.laplace_difference_tail(threshold - gamma, 2 * sigma, sigma)
    assert passed / trials == pytest.approx(expected, abs=4 * math.sqrt(0.25 / trials))


def test_stability_test_halts_at_the_first_failure():
    rng = np.random.default_rng(0)
    test = median_ptr.StabilityTest(threshold=1e6, noise_scale=1.0, rng=rng)
    assert not test.passes(0, rng) and test.failed
    with pytest.raises(RuntimeError, match="already failed"):
        test.passes(10, rng)


# ------------------------------------------------------------------ accounting


def ptr_ledger(fallback, *, clip=2.0, s=8, tau=1.5, tokens=20, bound=0.4, svt_epsilon=2.0,
               delta=1e-5):
    ptr = median_ptr.PtrSettings.for_run(bound=bound, svt_epsilon=svt_epsilon,
                                         fallback=fallback, max_tokens=tokens,
                                         delta=delta * median_ptr.TEST_DELTA_SHARE)
    ledger = accounting.PrivacyLedger(delta=delta)
    ledger.record_gaussian("clustering", noise_stddev=4.0)
    ledger.record_generation("generation", rule="median_ptr", clip=clip, temperature=tau,
                             max_private_tokens=tokens, expected_batch_size=s, ptr=ptr)
    return ledger, ptr


@pytest.mark.parametrize("fallback", ["mean", "stop"])
def test_ledger_matches_a_hand_computation(fallback):
    clip, s, tau, tokens, bound, svt_epsilon, delta = 2.0, 8, 1.5, 20, 0.4, 2.0, 1e-5
    ledger, ptr = ptr_ledger(fallback)
    # By hand: sigma = 2/eps_svt = 1; per-step pass chance at gamma = 0 from the closed
    # form with a = 2, b = 1; tokens at max(b^2, c^2/s^2 if mean)/(2 tau^2).
    a_, b_ = 2.0, 1.0
    per_step = (a_ ** 2 * math.exp(-ptr.threshold / a_)
                - b_ ** 2 * math.exp(-ptr.threshold / b_)) / (2 * (a_ ** 2 - b_ ** 2))
    assert ptr.noise_scale == 1.0
    assert ledger.mechanism_delta == pytest.approx(tokens * per_step, rel=1e-12)
    assert ledger.mechanism_delta <= delta / 2
    rho_tokens = max(bound ** 2, (clip / s) ** 2 if fallback == "mean" else 0) / (2 * tau ** 2)
    # The test is svt_epsilon-DP: binary randomized response with p = 2/(1 + e^eps).
    orders = np.array(accounting.rdp_accountant()._orders)
    p1 = math.exp(svt_epsilon) / (1 + math.exp(svt_epsilon))
    log_p, log_q = math.log(p1), math.log(1 - p1)
    test_rdp = np.logaddexp(orders * log_p + (1 - orders) * log_q,
                            orders * log_q + (1 - orders) * log_p) / (orders - 1)
    assert (test_rdp <= svt_epsilon + 1e-12).all()
    total_rdp = orders / (2 * 4.0 ** 2) + test_rdp + tokens * rho_tokens * orders
    accountant_delta = delta - tokens * per_step
    by_hand = min(dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(
        orders, total_rdp, accountant_delta)[0], math.inf)
    assert ledger.epsilon() == pytest.approx(by_hand, rel=1e-9)
    # Charging the test as svt_epsilon^2/2-zCDP instead would cost more.
    zcdp_view = accounting.zcdp_epsilon_closed_form(
        svt_epsilon ** 2 / 2 + tokens * rho_tokens, accountant_delta)
    assert ledger.epsilon("generation") < zcdp_view
    report = ledger.to_dict()
    assert report["delta_of_mechanisms"] == pytest.approx(tokens * per_step)
    assert report["delta"] == delta
    assert "stability test" in ledger.to_markdown()


def test_fallback_to_the_mean_is_charged_when_it_costs_more():
    cheap_bound, _ = ptr_ledger("mean", bound=0.1)     # c/s = 0.25 > b: the mean dominates
    stop, _ = ptr_ledger("stop", bound=0.1)
    assert cheap_bound.epsilon() > stop.epsilon()


def test_batch_records_count_median_tokens():
    ledger, _ = ptr_ledger("mean")
    ledger.record_batch("generation", "b0", tokens=5, private_tokens=5, median_tokens=3,
                        test_failed=True)
    ledger.record_batch("generation", "b1", tokens=4, private_tokens=4, median_tokens=4)
    tokens = ledger.tokens()["generation"]
    assert tokens["median_tokens"] == 7 and tokens["batches_whose_test_failed"] == 1
    assert ledger.ex_post() == {}          # the formal figure is the only one
    with pytest.raises(ValueError, match="median_tokens"):
        ledger.record_batch("generation", "b2", tokens=4, private_tokens=4)


@pytest.mark.parametrize("target", [1.0, 3.0, 10.0])
def test_calibrated_clip_meets_the_target(target):
    s, tau, tokens, ratio, svt_epsilon, delta = 8, 1.0, 32, 2.0, target / 4, 1e-5
    clip = accounting.calibrate_median_ptr_clip(
        target_epsilon=target, delta=delta, expected_batch_size=s, temperature=tau,
        max_private_tokens=tokens, bound_ratio=ratio, svt_epsilon=svt_epsilon,
        gaussian_noise_multipliers=[10.0])
    ledger = accounting.PrivacyLedger(delta=delta)
    ledger.record_gaussian("clustering", noise_stddev=10.0)
    ptr = median_ptr.PtrSettings.for_run(bound=ratio * clip / s, svt_epsilon=svt_epsilon,
                                         fallback="mean", max_tokens=tokens,
                                         delta=delta / 2)
    ledger.record_generation("generation", rule="median_ptr", clip=clip, temperature=tau,
                             max_private_tokens=tokens, expected_batch_size=s, ptr=ptr)
    # The ledger spends only the test's actual delta, at most its share: never above target.
    assert target * 0.97 <= ledger.epsilon() <= target + 1e-6


# ------------------------------------------- released distributions on neighbours


def test_passing_batches_release_distributions_within_the_bound():
    """Exhaustively over one batch's neighbours (remove any member, or add any grid
    vector): where gamma >= 1 the median moves by at most b, so every token's log
    probability ratio is within 2b/tau; a gamma = 0 batch has a neighbour beyond it."""
    tau, bound = 0.5, 0.3
    stable = np.array([[0.9, 0.1, -0.5], [1.0, 0.2, -0.4], [0.95, 0.15, -0.45],
                       [1.0, 0.1, -0.5], [0.9, 0.2, -0.4], [0.95, 0.1, -0.5],
                       [1.0, 0.15, -0.45]])
    assert median_ptr.distance_to_instability(stable, C, bound) >= 1

    def worst_ratio(batch):
        released = token_rules.softmax(median.median_aggregate(batch), tau)
        neighbours = [np.delete(batch, i, axis=0) for i in range(len(batch))]
        neighbours += [np.vstack([batch, np.array(v)])
                       for v in itertools.product(GRID, repeat=batch.shape[1])]
        return max(np.abs(np.log(released) - np.log(token_rules.softmax(
            median.median_aggregate(other), tau))).max() for other in neighbours)

    assert worst_ratio(stable) <= 2 * bound / tau + 1e-12
    unstable = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert median_ptr.distance_to_instability(unstable, C, bound) == 0
    assert worst_ratio(unstable) > 2 * bound / tau


def test_chooser_samples_the_median_at_the_test_rate_and_the_mean_after():
    """The chooser end to end, fixed seeds: over many batch ids, the first token comes
    from the median as often as the test passes, the token frequencies are the
    mixture of softmax(median/tau) and softmax(mean/tau), and after a failure every
    later token comes from the mean."""
    tau, s, clip = 1.0, 7, C
    members = np.log(np.array([[0.6, 0.3, 0.1]] * 4 + [[0.5, 0.4, 0.1]] * 3))
    logits = np.vstack([members, np.zeros(3)])            # the public row is last
    bound = 0.2
    ptr = median_ptr.PtrSettings(bound=bound, noise_scale=0.5, threshold=1.5,
                                 fallback="mean")
    config = GenerationConfig(aggregator="median_ptr", clip=clip, temperature=tau,
                              expected_batch_size=s, max_new_tokens=3, ptr=ptr)
    clipped = token_rules.clip_logits(members, clip)
    gamma = median_ptr.distance_to_instability(clipped, clip, bound)
    p_pass = median_ptr.laplace_difference_tail(ptr.threshold - gamma, 1.0, 0.5)
    median_p = token_rules.softmax(median.median_aggregate(clipped), tau)
    mean_p = token_rules.softmax(token_rules.mean_aggregate(clipped, s), tau)
    trials = 6000
    counts, passed = np.zeros(3), 0
    for trial in range(trials):
        chooser = PrivateTokenChooser(config, secret="ab12", batch_id=f"b{trial}")
        counts[chooser.choose(0, logits)] += 1
        passed += chooser.median_tokens
        if chooser.test_failed:
            chooser.choose(1, logits)
            assert chooser.median_tokens == 0       # no test after a failure
    assert 0.2 < p_pass < 0.8
    assert passed / trials == pytest.approx(p_pass, abs=4 * math.sqrt(0.25 / trials))
    expected = p_pass * median_p + (1 - p_pass) * mean_p
    assert np.allclose(counts / trials, expected, atol=0.025)


def test_stop_fallback_ends_the_sequence_at_the_failure():
    members = token_rules.clip_logits(np.array([[3.0, -2.0], [-2.0, 3.0]]), C)
    ptr = median_ptr.PtrSettings(bound=0.1, noise_scale=0.1, threshold=5.0, fallback="stop")
    config = GenerationConfig(aggregator="median_ptr", clip=C, temperature=1.0,
                              expected_batch_size=2, max_new_tokens=4, ptr=ptr)
    chooser = PrivateTokenChooser(config, secret="ab12", batch_id="b")
    assert chooser.choose(0, np.vstack([members, np.zeros(2)])) is None
    assert chooser.test_failed and chooser.private_tokens == 0
