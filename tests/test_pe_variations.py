"""Private Evolution's Aug-PE levers: L candidates per member, more rounds calibrated to the
target, the rephrase and fill-in variation prompts, and the temperature and length of
variations. None of them may change the accounting except the number of rounds."""

import itertools
import json
import re

import numpy as np
import pytest

from beam_pipeline.options import DpSynthOptions
from beam_pipeline.plan import PlanError, make_plan, plan_ledger
from beam_pipeline.run import run
from mechanisms import evolve as pe
from mechanisms import variation
from tests.pipeline_fixtures import read_jsonl, tiny_args, write_reviews_csv
from transforms.generate import check_template


def _plan(tmp_path, *extra):
    return make_plan(DpSynthOptions(tiny_args(tmp_path / "in.csv", tmp_path / "out",
                                              "--method", "private_evolution", *extra)))


def test_blank_out_blanks_the_asked_share_of_words_and_keeps_the_rest_exhaustively():
    # Every text of 1 to 6 words with mixed whitespace, every fraction on a grid, 5 seeds:
    # exactly max(1, round(f * n)) words become blanks, the others keep their place and
    # spelling, the whitespace is untouched, and one seed always blanks the same words.
    checked = 0
    for words in range(0, 7):
        for separators in itertools.product((" ", "\n", "  "), repeat=max(words - 1, 0)):
            tokens = [f"w{i}" for i in range(words)]
            text = tokens[0] if tokens else ""
            for separator, token in zip(separators, tokens[1:]):
                text += separator + token
            for fraction in (0.1, 0.3, 0.5, 0.9):
                for seed in range(5):
                    blanked = variation.blank_out(text, fraction, np.random.default_rng(seed))
                    assert blanked == variation.blank_out(text, fraction,
                                                          np.random.default_rng(seed))
                    out_words = re.findall(r"\S+", blanked)
                    assert re.findall(r"\s+", blanked) == re.findall(r"\s+", text)
                    assert len(out_words) == words
                    expected = max(1, round(fraction * words)) if words else 0
                    assert out_words.count(variation.BLANK) == expected
                    assert all(w in (variation.BLANK, t) for w, t in zip(out_words, tokens))
                    checked += 1
    assert checked > 3000
    with pytest.raises(ValueError):
        variation.blank_out("a b", 1.0, np.random.default_rng(0))


def test_every_variation_prompt_is_a_valid_template_of_its_kind():
    for kind in (variation.REPHRASE, variation.FILL_IN):
        for labelled in (True, False):
            prompt = variation.variation_template(kind, labelled=labelled, template="unused")
            check_template(prompt, labelled=labelled)
            assert ("{label}" in prompt) == labelled
    assert variation.variation_template(variation.TEMPLATE, labelled=True,
                                        template="mine {text}") == "mine {text}"
    with pytest.raises(ValueError):
        variation.variation_template("paraphrase", labelled=True, template="{text}")


@pytest.mark.parametrize("extra", [
    ("--pe_candidates", "4"),
    ("--pe_variation", "rephrase"),
    ("--pe_variation", "fill_in", "--pe_blank_fraction", "0.5"),
    ("--pe_variation_temperature", "0.7", "--pe_variation_max_new_tokens", "2"),
])
def test_the_levers_cost_no_privacy(tmp_path, extra):
    base = plan_ledger(_plan(tmp_path, "--pe_vote_noise", "5", "--pe_rounds", "3"))
    lever = _plan(tmp_path, "--pe_vote_noise", "5", "--pe_rounds", "3", *extra)
    ledger = plan_ledger(lever)
    assert ledger.epsilon() == base.epsilon()
    assert [(e.stage, e.event) for e in ledger.entries] == [
        (e.stage, e.event) for e in base.entries]
    # The ledger names the population that votes: M * L texts.
    assert f"over the {lever.evolution.voting_population} texts" in ledger.entries[0].explanation


def test_more_rounds_are_calibrated_to_the_same_target(tmp_path):
    sigmas = {}
    for rounds in (3, 6, 12):
        plan = _plan(tmp_path, "--pe_rounds", str(rounds), "--target_epsilon", "1",
                     "--pe_population", "8")
        epsilon = plan_ledger(plan).epsilon()
        assert 0.95 <= epsilon <= 1.0 + 1e-9, (rounds, epsilon)
        sigmas[rounds] = plan.evolution.vote_noise
    # T Gaussian releases compose like one of sigma / sqrt(T).
    assert sigmas[3] < sigmas[6] < sigmas[12]
    assert sigmas[12] / sigmas[3] == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("extra, message", [
    (("--pe_candidates", "0"), "--pe_candidates must be >= 1"),
    (("--pe_variation", "fill_in", "--pe_blank_fraction", "1.5"), "--pe_blank_fraction"),
    (("--pe_blank_fraction", "0.2"), "needs --pe_variation fill_in"),
    (("--pe_variation_temperature", "0"), "--pe_variation_temperature"),
    (("--pe_variation_max_new_tokens", "0"), "--pe_variation_max_new_tokens"),
])
def test_bad_lever_options_are_one_line_errors(tmp_path, extra, message):
    with pytest.raises(PlanError, match=message) as error:
        _plan(tmp_path, *extra)
    assert "\n" not in str(error.value)


def test_levers_are_refused_outside_private_evolution(tmp_path):
    with pytest.raises(PlanError, match="--pe_candidates applies to --method "
                                        "private_evolution only"):
        make_plan(DpSynthOptions(tiny_args(tmp_path / "in.csv", tmp_path / "out",
                                           "--pe_candidates", "2")))


def test_a_misspelled_variation_kind_never_runs(tmp_path, capsys):
    from beam_pipeline import cli

    write_reviews_csv(tmp_path / "in.csv", n=8)
    code = cli.main(["run", *tiny_args(tmp_path / "in.csv", tmp_path / "out", "--method",
                                       "private_evolution", "--pe_variation", "paraphrase")])
    assert code == 2
    assert "paraphrase" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _evolve(tmp_path, name, *extra):
    arguments = ["--method", "private_evolution", "--label_column", "category",
                 "--label_values", "Restaurants,Shopping", "--pe_population", "6",
                 "--pe_rounds", "2", "--pe_vote_noise", "0.01", "--pe_vote_threshold", "0.5",
                 *extra]
    out = tmp_path / name
    summary = run(tiny_args(tmp_path / "in.csv", out, *arguments), say=lambda line: None)
    report = json.loads((out / "privacy_report.json").read_text())
    return summary, read_jsonl(out, "synthetic"), report


def test_candidates_grow_the_population_that_votes_and_keep_the_output_size(tmp_path):
    write_reviews_csv(tmp_path / "in.csv", n=40)
    summary, synthetic, report = _evolve(tmp_path, "three", "--pe_candidates", "3")
    assert len(synthetic) == summary["synthetic_records"] == 6
    rounds = report["private_evolution_rounds"]
    assert [r["voting_population"] for r in rounds] == [18, 18]
    for summary_of_round in rounds:
        assert summary_of_round["noisy_votes_total"] == pytest.approx(40, abs=0.2)
        assert 1 <= summary_of_round["distinct_members_drawn"] <= 6
    assert report["parameters"]["pe_candidates"] == 3
    _, one, one_report = _evolve(tmp_path, "one")
    assert [r["voting_population"] for r in one_report["private_evolution_rounds"]] == [6, 6]
    assert one_report["formal_epsilon"] == report["formal_epsilon"]


def test_variation_kind_and_length_reach_the_lm(tmp_path):
    write_reviews_csv(tmp_path / "in.csv", n=40)
    _, plain, _ = _evolve(tmp_path, "plain", "--max_new_tokens", "6")
    _, short, _ = _evolve(tmp_path, "short", "--max_new_tokens", "6",
                          "--pe_variation_max_new_tokens", "1")
    # The output is the last round's variations: at most one token each.
    assert np.mean([len(r["text"]) for r in short]) < np.mean([len(r["text"]) for r in plain])
    _, rephrased, report = _evolve(tmp_path, "rephrase", "--max_new_tokens", "6",
                                   "--pe_variation", "rephrase")
    assert report["parameters"]["pe_variation"] == "rephrase"
    assert "in other words" in report["parameters"]["pe_variation_template"]
    # Another prompt, another continuation (the tiny LM's output depends on its prompt).
    assert [r["text"] for r in rephrased] != [r["text"] for r in plain]
    _, filled, report = _evolve(tmp_path, "fill", "--max_new_tokens", "6",
                                "--pe_variation", "fill_in", "--pe_blank_fraction", "0.5",
                                "--pe_variation_temperature", "0.5")
    assert report["parameters"]["pe_blank_fraction"] == 0.5
    assert report["parameters"]["pe_variation_temperature"] == 0.5
    assert [r["text"] for r in filled] != [r["text"] for r in rephrased]


def test_a_variation_template_of_the_users_replaces_the_kinds_own_prompt(tmp_path):
    """The generic rephrase and fill-in prompts know nothing of the domain; a user's
    prompt takes their place, and fill-in still blanks the member it shows."""
    domain = "Review:\\n{text}\\n\\nThe same review in other words:\\n"
    plan = _plan(tmp_path, "--pe_variation", "rephrase", "--pe_variation_template", domain)
    assert plan.variation_template == domain.replace("\\n", "\n")
    plan = _plan(tmp_path, "--pe_variation", "fill_in", "--pe_variation_template", domain)
    assert plan.variation == "fill_in" and plan.variation_template.startswith("Review:")
    assert _plan(tmp_path, "--pe_variation", "rephrase").variation_template != \
        plan.variation_template
