"""The ledger agrees with dp_accounting and keeps ex-post figures apart."""

import json
import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from mechanisms import accounting
from mechanisms.accounting import PrivacyBudgetError, PrivacyLedger

DELTA = 1e-6


def _clustered_mean_ledger():
    ledger = PrivacyLedger(delta=DELTA)
    ledger.record_gaussian("Noisy histogram", noise_stddev=8.0)
    ledger.record_gaussian("DP k-means", noise_stddev=20.0, count=6)
    ledger.record_generation("Generation", rule="mean", clip=4.0, temperature=1.5,
                             max_private_tokens=32, expected_batch_size=10,
                             gate_noise_scale=0.2)
    return ledger


def test_formal_epsilon_equals_a_hand_built_rdp_accountant():
    ledger = _clustered_mean_ledger()
    by_hand = RdpAccountant()
    by_hand.compose(dp_accounting.GaussianDpEvent(8.0))
    by_hand.compose(dp_accounting.GaussianDpEvent(20.0), 6)
    by_hand.compose(dp_accounting.ZCDpEvent(4.0 ** 2 / (2 * 10 ** 2 * 1.5 ** 2)), 32)
    by_hand.compose(dp_accounting.ZCDpEvent(2 / (10 * 0.2) ** 2), 32)
    assert ledger.epsilon() == pytest.approx(by_hand.get_epsilon(DELTA), rel=1e-12)

    clustering = RdpAccountant()
    clustering.compose(dp_accounting.GaussianDpEvent(20.0), 6)
    assert ledger.epsilon("DP k-means") == pytest.approx(clustering.get_epsilon(DELTA),
                                                         rel=1e-12)


@pytest.mark.parametrize("clip, batch, tau, tokens", [(10.0, 8, 1.0, 64), (1.0, 50, 0.8, 200),
                                                      (0.3, 100, 1.0, 16)])
def test_pure_zcdp_ledger_is_below_the_closed_form_conversion(clip, batch, tau, tokens):
    ledger = PrivacyLedger(delta=DELTA)
    ledger.record_generation("Generation", rule="mean", clip=clip, temperature=tau,
                             max_private_tokens=tokens, expected_batch_size=batch)
    rho = tokens * clip ** 2 / (2 * batch ** 2 * tau ** 2)
    closed_form = accounting.zcdp_epsilon_closed_form(rho, DELTA)
    assert closed_form == pytest.approx(rho + 2 * math.sqrt(rho * math.log(1 / DELTA)))
    assert ledger.epsilon() <= closed_form
    assert ledger.epsilon() >= 0.5 * closed_form  # the same rho, not a vacuous ledger


def test_batches_compose_in_parallel():
    ledger = _clustered_mean_ledger()
    before = ledger.epsilon()
    for batch in range(100):
        ledger.record_batch("Generation", batch, tokens=40, private_tokens=32)
    assert ledger.epsilon() == before
    assert ledger.tokens()["Generation"] == {"batches": 100, "tokens": 4000,
                                             "private_tokens": 3200, "public_tokens": 800}


def test_batches_the_formal_bound_does_not_cover_are_refused():
    ledger = _clustered_mean_ledger()
    with pytest.raises(ValueError, match="cap"):
        ledger.record_batch("Generation", 0, tokens=40, private_tokens=33)
    with pytest.raises(ValueError, match="Only the median"):
        ledger.record_batch("Generation", 0, tokens=40, private_tokens=1, token_rhos=[0.1])


def _median_ledger():
    ledger = PrivacyLedger(delta=DELTA)
    ledger.record_gaussian("Noisy histogram", noise_stddev=8.0)
    ledger.record_generation("Generation", rule="median", clip=2.0, temperature=1.0,
                             max_private_tokens=10)
    return ledger


def test_median_formal_cost_is_the_data_independent_worst_case():
    ledger = _median_ledger()
    by_hand = RdpAccountant()
    by_hand.compose(dp_accounting.GaussianDpEvent(8.0))
    by_hand.compose(dp_accounting.ZCDpEvent(2 * 2.0 ** 2 / 1.0 ** 2), 10)
    assert ledger.epsilon() == pytest.approx(by_hand.get_epsilon(DELTA), rel=1e-12)


def test_median_ex_post_is_reported_apart_and_never_as_formal():
    ledger = _median_ledger()
    formal = ledger.epsilon()
    token_rhos = {0: [0.0] * 10, 1: [0.01] * 4 + [0.0] * 6, 2: [0.05] * 3}
    for batch, rhos in token_rhos.items():
        ledger.record_batch("Generation", batch, tokens=12, private_tokens=len(rhos),
                            token_rhos=rhos)
    assert ledger.epsilon() == formal

    figures = ledger.ex_post()["Generation"]
    assert "ex-post" in figures["label"] and "NOT a formal" in figures["label"]
    worst = RdpAccountant()
    worst.compose(dp_accounting.GaussianDpEvent(8.0))
    worst.compose(dp_accounting.ZCDpEvent(0.15))
    assert figures["total_epsilon"]["max"] == pytest.approx(worst.get_epsilon(DELTA), rel=1e-12)
    assert figures["stage_epsilon"]["min"] == 0.0
    assert figures["data_independent_total_epsilon"] == formal
    assert figures["total_epsilon"]["max"] < formal

    report = json.loads(json.dumps(ledger.to_dict()))
    assert report["formal_epsilon"] == formal
    assert report["ex_post"]["Generation"]["total_epsilon"]["max"] != formal
    with pytest.raises(ValueError, match="one ex-post rho per private token"):
        ledger.record_batch("Generation", 3, tokens=5, private_tokens=2, token_rhos=[0.1])


def test_report_is_json_and_plain_words():
    ledger = _clustered_mean_ledger()
    ledger.record_batch("Generation", 0, tokens=40, private_tokens=12)
    report = json.loads(json.dumps(ledger.to_dict()))
    assert [s["stage"] for s in report["stages"]] == ["Noisy histogram", "DP k-means",
                                                      "Generation"]
    mechanisms = [m["mechanism"] for m in report["stages"][2]["mechanisms"]]
    assert mechanisms == ["exponential mechanism on the clipped mean",
                          "sparse vector gate (AboveThreshold)"]
    assert report["adjacency"] == accounting.ADJACENCY and report["delta"] == DELTA
    text = _median_ledger().to_markdown() + ledger.to_markdown()
    for phrase in ("Privacy unit", "Noisy histogram", "Gaussian", "12 private, 28 public",
                   f"{ledger.epsilon():.4g}"):
        assert phrase in text


def test_ex_post_section_appears_only_with_median_batches():
    ledger = _median_ledger()
    ledger.record_batch("Generation", 0, tokens=3, private_tokens=2, token_rhos=[0.1, 0.2])
    assert "ex-post cost (not a formal guarantee)" in ledger.to_markdown()
    assert "ex-post" not in _clustered_mean_ledger().to_markdown()


def test_require_fails_fast_above_the_target():
    ledger = _clustered_mean_ledger()
    ledger.require(ledger.epsilon() + 0.01)
    with pytest.raises(PrivacyBudgetError, match="target"):
        ledger.require(ledger.epsilon() - 0.01)


@pytest.mark.parametrize("target, gaussians, gate", [(1.0, (), None), (3.0, (), None),
                                                     (10.0, (), None),
                                                     (3.0, (10.0, 25.0, 25.0), 3.0)])
def test_calibrated_clip_meets_the_target_from_below(target, gaussians, gate):
    settings = dict(expected_batch_size=16, temperature=1.0, max_private_tokens=64)
    clip = accounting.calibrate_mean_clip(target_epsilon=target, delta=DELTA,
                                          gaussian_noise_multipliers=gaussians,
                                          gate_noise_scale=gate, **settings)
    ledger = PrivacyLedger(delta=DELTA)
    for multiplier in gaussians:
        ledger.record_gaussian(f"Gaussian {multiplier}", noise_stddev=multiplier)
    ledger.record_generation("Generation", rule="mean", clip=clip, gate_noise_scale=gate,
                             **settings)
    assert target - 1e-3 <= ledger.epsilon() <= target


def test_calibration_refuses_a_budget_the_fixed_stages_already_spend():
    with pytest.raises(PrivacyBudgetError):
        accounting.calibrate_mean_clip(target_epsilon=0.5, delta=DELTA, expected_batch_size=16,
                                       temperature=1.0, max_private_tokens=64,
                                       gaussian_noise_multipliers=(1.0,))


@pytest.mark.parametrize("target, releases", [(1.0, 3), (3.0, 3), (10.0, 7)])
def test_calibrated_gaussian_noise_is_the_smallest_that_meets_the_target(target, releases):
    delta = 1e-5
    sigma = accounting.calibrate_gaussian_noise(target_epsilon=target, delta=delta,
                                                releases=releases,
                                                gaussian_noise_multipliers=[20.0])

    def epsilon(multiplier):
        ledger = PrivacyLedger(delta=delta)
        ledger.record_gaussian("fixed", noise_stddev=20.0)
        ledger.record_gaussian("calibrated", noise_stddev=multiplier, count=releases)
        return ledger.epsilon()

    assert 0.99 * target <= epsilon(sigma) <= target * (1 + 1e-6)
    assert epsilon(sigma * 0.98) > target
