"""The privacy report says which of its figures another runner may not reproduce."""

from beam_pipeline.plan import GENERATION_STAGE, make_plan, plan_ledger
from beam_pipeline.run import pipeline_options
from tests.pipeline_fixtures import tiny_args, write_reviews_csv
from transforms.report import RUNNER_DEPENDENT_NOTE, privacy_report


def _notes(tmp_path, *options):
    data = write_reviews_csv(tmp_path / "r.csv", n=8)
    plan = make_plan(pipeline_options(tiny_args(data, tmp_path / "o", *options)))
    report, markdown = privacy_report(plan_ledger(plan), [], generation_stage=GENERATION_STAGE,
                                      parameters={}, planned_batches=1)
    return report["notes"], markdown


def test_the_median_rules_ex_post_figures_are_marked_runner_dependent(tmp_path):
    notes, markdown = _notes(tmp_path, "--aggregator", "median", "--clip", "4")
    assert RUNNER_DEPENDENT_NOTE in notes and RUNNER_DEPENDENT_NOTE in markdown


def test_a_formal_rule_has_no_such_note(tmp_path):
    notes, _ = _notes(tmp_path, "--aggregator", "mean")
    assert RUNNER_DEPENDENT_NOTE not in notes
