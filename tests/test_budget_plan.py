"""A stated epsilon is met: unset parameters are calibrated to it, the split is stated and
overridable, and a run without a target never carries a vacuous guarantee unannounced."""

import re
import shlex
from pathlib import Path

import pytest

from beam_pipeline import cli
from beam_pipeline import run as run_module
from beam_pipeline.plan import PlanError, check_budget, make_plan, plan_ledger
from beam_pipeline.run import pipeline_options

README = Path(__file__).resolve().parents[1] / "README.md"
BASE = ["--input", "never-read.csv", "--output", "never-written"]


def _plan(*extra):
    return make_plan(pipeline_options([*BASE, *extra]))


def test_the_default_run_has_a_formal_epsilon_of_at_most_10():
    plan = _plan()
    assert plan.generation.aggregator == "mean"
    assert check_budget(plan) <= 10.0


@pytest.mark.parametrize("extra", [
    [],
    ["--aggregator", "median_ptr"],
    ["--clustering", "dp_kmeans", "--output_embeddings", "--max_records", "500"],
    ["--clustering", "uniform", "--public_tokens", "--gate_noise", "5"],
    ["--method", "private_evolution", "--output_embeddings"],
    ["--method", "none", "--output_embeddings", "--clustering", "dp_kmeans"],
])
def test_a_stated_target_is_met_by_calibrating_what_is_unset(extra):
    plan = _plan("--target_epsilon", "3", *extra)
    epsilon = check_budget(plan)
    assert 0.99 * 3 <= epsilon <= 3


def test_the_split_is_honoured_and_overridable():
    default = plan_ledger(_plan("--target_epsilon", "4", "--clustering", "uniform"))
    assert default.epsilon("clustering") == pytest.approx(0.4, rel=1e-3)
    split = plan_ledger(_plan("--target_epsilon", "4", "--clustering", "uniform",
                              "--budget_split", "clustering=0.25"))
    assert split.epsilon("clustering") == pytest.approx(1.0, rel=1e-3)
    assert split.epsilon() <= 4


@pytest.mark.parametrize("split, message", [
    ("clustering=1.5", "must lie in (0, 1)"),
    ("generation=0.5", "the last stage gets what is left"),
    ("clustering=0.6,record_cap=0.5", "leaving nothing for generation"),
])
def test_a_bad_split_is_one_line(split, message):
    extra = ["--max_records", "100"] if "record_cap" in split else []
    with pytest.raises(PlanError, match=re.escape(message)):
        _plan("--budget_split", split, *extra)


def test_what_the_user_set_is_kept_and_what_costs_too_much_is_refused():
    plan = _plan("--target_epsilon", "30", "--clip", "0.5", "--histogram_noise", "8")
    assert plan.generation.clip == 0.5 and plan.clustering.histogram_noise == 8
    with pytest.raises(PlanError, match="more than --target_epsilon 1"):
        check_budget(_plan("--target_epsilon", "1", "--clip", "10"))


def test_the_median_with_a_target_and_no_clip_is_refused_with_the_alternatives():
    with pytest.raises(PlanError, match=r"use --aggregator mean \(--clip [0-9.]+ at this target"):
        _plan("--target_epsilon", "10", "--aggregator", "median")


def test_the_median_without_a_target_shows_its_formal_worst_case_loudly(tmp_path, capsys):
    code = cli.main(["plan", *BASE, "--aggregator", "median"])
    out = capsys.readouterr().out
    assert code == 0
    assert "its formal guarantee is its worst case, epsilon 1.421e+04" in out
    assert "warning: formal epsilon 1.421e+04 is above 10" in out


def test_plan_prints_the_plan_and_the_ledger_and_touches_nothing(tmp_path, capsys):
    ledger = tmp_path / "ledger.json"
    code = cli.main(["plan", "--input", str(tmp_path / "absent.csv"),
                     "--output", str(tmp_path / "out"), "--target_epsilon", "5",
                     "--budget_ledger", str(ledger), "--privacy_unit_domain", "tickets",
                     "--lifetime_epsilon", "40"])
    out = capsys.readouterr().out
    assert code == 0
    assert "target epsilon 5 at delta 1e-06 (--target_epsilon)" in out
    assert "split of the target: clustering 10%, generation the rest" in out
    assert "calibrated: --histogram_noise" in out and "--clip" in out
    assert "# Privacy report" in out and "**generation**" in out
    assert "domain tickets has no run yet" in out
    assert not ledger.exists() and not (tmp_path / "out").exists()


def test_run_prints_the_plan_before_reading_any_data(tmp_path, monkeypatch):
    said = []

    def stop(_plan):
        said.append("preflight")
        raise PlanError("stop here")

    monkeypatch.setattr(run_module, "preflight", stop)
    with pytest.raises(PlanError):
        run_module.run([*BASE, "--target_epsilon", "7"], say=said.append)
    assert said[-1] == "preflight"
    assert any(line.startswith("dpsynth: plan: formal epsilon") for line in said[:-1])


def readme_commands(text: str) -> list[list[str]]:
    """The arguments of every `dpsynth run` or `dpsynth plan` command in the fenced code
    blocks of `text` that states --target_epsilon."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            # Transcripts and outputs share the blocks; only command lines are shell.
            if not re.search(r"dpsynth\s+(run|plan)\b", command):
                continue
            words = shlex.split(command, comments=True)
            for index, word in enumerate(words[:-1]):
                if word.endswith("dpsynth") and words[index + 1] in ("run", "plan"):
                    arguments = words[index + 2:]
                    if "--target_epsilon" in arguments and "..." not in arguments:
                        commands.append(arguments)
    return commands


def _meets_its_target(arguments):
    plan = make_plan(pipeline_options(arguments))
    return check_budget(plan) <= plan.target_epsilon


def test_readme_commands_meet_their_own_targets():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert commands, "the README states no --target_epsilon in a dpsynth run or plan command"
    for arguments in commands:
        try:
            assert _meets_its_target(arguments), arguments
        except PlanError as error:
            pytest.fail(f"{shlex.join(arguments)}: {error}")


def test_the_readme_parser_finds_continued_commands():
    text = ("x\n```\n.venv/bin/dpsynth run --input 'a b.csv' --output out/ \\\n"
            "    --aggregator mean --max_new_tokens 48 \\\n    --target_epsilon 10\n```\n"
            "```\ndpsynth run ... --target_epsilon 3\n.venv/bin/dpsynth evaluate --x 1\n```\n")
    assert readme_commands(text) == [["--input", "a b.csv", "--output", "out/", "--aggregator",
                                      "mean", "--max_new_tokens", "48", "--target_epsilon",
                                      "10"]]
    assert _meets_its_target(readme_commands(text)[0])


def test_the_report_states_the_split_and_what_it_calibrated():
    from beam_pipeline.pipeline import report_parameters

    plan = _plan("--target_epsilon", "4", "--clustering", "uniform",
                 "--budget_split", "clustering=0.25", "--clip", "2")
    stated = report_parameters(plan)["budget_plan"]
    assert stated["target_epsilon"] == 4 and stated["target"] == "--target_epsilon"
    assert stated["shares"] == {"clustering": 0.25}
    assert stated["last_stage_takes_the_rest"] == "generation"
    assert stated["calibrated"]["histogram_noise"] == plan.clustering.histogram_noise
    assert stated["as_set"] == {"clip": 2.0}
    assert plan_ledger(plan).epsilon("clustering") == pytest.approx(0.25 * 4, rel=1e-3)
    unstated = report_parameters(_plan())["budget_plan"]
    assert unstated["target"] == "the default" and unstated["target_epsilon"] == 10
