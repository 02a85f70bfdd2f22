"""The privacy report and the run summary, from the plan's ledger and what generation did."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.write import output_path, write_text_file


NO_BATCH_NOTE = ("No batch was planned: every cluster's noisy count was below --batch_size, "
                 "so no synthetic record was written. Use more records or a smaller "
                 "--batch_size.")


RUNNER_DEPENDENT_NOTE = (
    "The ex-post figures are computed from each batch's logits, whose last bits can "
    "differ between runners and worker processes: the same run secret can give slightly "
    "different ex-post figures, and tokens, on another runner (docs/dask.md). The formal "
    "epsilon does not depend on them.")


def privacy_report(ledger, synthetic_records, *, generation_stage: str, parameters: dict,
                   planned_batches: int | None = None,
                   lifetime_budget: dict | None = None) -> tuple[dict, str]:
    """(JSON-able report, markdown). Feeds each batch's realised costs into the ledger.

    Notes use DP releases and public parameters only (the planned batch count
    comes from noisy counts), never exact counts of the data. `lifetime_budget`
    is the budget ledger's reservation for this run, if any.
    """
    for record in synthetic_records:
        ledger.record_batch(generation_stage, record.batch_id, tokens=record.tokens,
                            private_tokens=record.private_tokens, token_rhos=record.token_rhos,
                            median_tokens=record.median_tokens,
                            test_failed=record.test_failed)
    report = ledger.to_dict()
    report["parameters"] = parameters
    notes = []
    if planned_batches == 0:
        notes.append(NO_BATCH_NOTE)
    if any(entry.ex_post_replaceable for entry in ledger.entries):
        notes.append(RUNNER_DEPENDENT_NOTE)
    report["notes"] = notes
    markdown = ledger.to_markdown()
    if lifetime_budget:
        report["lifetime_budget"] = lifetime_budget
        markdown += lifetime_budget_markdown(lifetime_budget)
    if notes:
        markdown += "\n## Notes\n\n" + "".join(f"- {note}\n" for note in notes)
    markdown += "\n## Parameters\n\n" + "".join(
        f"- {name}: {value!r}\n" if isinstance(value, str) else f"- {name}: {value}\n"
        for name, value in parameters.items())
    return report, markdown


def lifetime_budget_markdown(budget: dict) -> str:
    return (
        f"\n## Lifetime budget of domain {budget['privacy_unit_domain']}\n\n"
        f"- This run: epsilon {budget['this_run_epsilon']:.4g} at delta {budget['delta']:g}.\n"
        f"- Cumulative, {budget['earlier_runs']} earlier run(s) and this one: epsilon "
        f"{budget['cumulative_epsilon']:.4g} of the lifetime {budget['lifetime_epsilon']:g} "
        f"({budget['remaining_epsilon']:.4g} left; before this run "
        f"{budget['cumulative_epsilon_before_this_run']:.4g}).\n"
        f"- How: {budget['composition']}. Ledger: {budget['ledger']}, run {budget['run_id']}.\n")


class WriteReports(beam.PTransform):
    """Writes privacy_report.json/.md and run_summary.json once all counts are in."""

    def __init__(self, output_dir: str, make_ledger, *, generation_stage: str, parameters: dict,
                 lifetime_budget: dict | None = None):
        super().__init__()
        self._lifetime_budget = lifetime_budget
        self._output = output_dir
        self._make_ledger = make_ledger
        self._stage = generation_stage
        self._parameters = parameters

    def expand(self, inputs):
        """`inputs`: "counts" (name, count) pairs; with logit aggregation "generation" (the
        SyntheticRecords) and "release" (the ClusterRelease); with Private Evolution
        "rounds" (its per-round summaries)."""
        counts = inputs["counts"]
        output, make_ledger, stage, parameters = (self._output, self._make_ledger, self._stage,
                                                  self._parameters)
        lifetime_budget = self._lifetime_budget
        batch_size = parameters.get("batch_size")
        epsilon_gauge = Metrics.gauge("dpsynth", "formal_epsilon_x1000")

        def write(_, counts_, records, release_, rounds):
            records = sorted(records, key=lambda r: r.batch_id)
            planned = (sum(release_.batch_counts(batch_size).values())
                       if release_ is not None else None)
            report, markdown = privacy_report(
                make_ledger(), records, generation_stage=stage, parameters=parameters,
                planned_batches=planned,
                lifetime_budget=lifetime_budget)
            if rounds:
                report["private_evolution_rounds"] = rounds
                markdown += "\n## Private Evolution rounds\n\n" + "".join(
                    f"- Round {r['round']}: {r['members_above_threshold']} member(s) above the "
                    f"vote threshold, {r['distinct_members_drawn']} distinct member(s) "
                    f"redrawn.\n" for r in rounds)
            write_text_file(output_path(output, "privacy_report.json"),
                            json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
            write_text_file(output_path(output, "privacy_report.md"), markdown)
            summary = dict(sorted(counts_.items()))
            summary.setdefault("synthetic_records", 0)
            if planned is not None:
                summary["planned_batches"] = planned
                summary["tokens"] = sum(r.tokens for r in records)
                summary["private_tokens"] = sum(r.private_tokens for r in records)
                summary["public_tokens"] = sum(r.public_tokens for r in records)
            summary["formal_epsilon"] = report["formal_epsilon"]
            epsilon_gauge.set(int(round(1000 * report["formal_epsilon"])))
            summary["delta"] = report["delta"]
            summary["notes"] = run_notes(summary, batch_size)
            if lifetime_budget:
                summary["cumulative_epsilon"] = lifetime_budget["cumulative_epsilon"]
            write_text_file(output_path(output, "run_summary.json"),
                            json.dumps(summary, indent=2, sort_keys=True) + "\n")
            yield summary

        pipeline = counts.pipeline
        generation = inputs.get("generation")
        if generation is None:
            generation = pipeline | "NoGeneration" >> beam.Create([])
        release = inputs.get("release")
        release_side = (beam.pvalue.AsSingleton(release) if release is not None
                        else beam.pvalue.AsSingleton(pipeline | "NoRelease" >> beam.Create([None])))
        rounds = inputs.get("rounds")
        rounds_side = (beam.pvalue.AsSingleton(rounds) if rounds is not None
                       else beam.pvalue.AsSingleton(pipeline | "NoRounds" >> beam.Create([[]])))
        return (pipeline
                | "Once" >> beam.Create([None])
                | "Write" >> beam.FlatMap(write, beam.pvalue.AsDict(counts),
                                          beam.pvalue.AsList(generation), release_side,
                                          rounds_side))


def run_notes(summary: dict, batch_size: int) -> list[str]:
    """What the operator should know about a run's input, from its exact counts.

    For the run summary only: exact counts are not DP.
    """
    notes = []
    accepted = summary.get("records_accepted", 0)
    if accepted == 0 and summary.get("records_rejected", 0) == 0:
        notes.append("No record was accepted: the input holds no rows.")
    elif accepted == 0:
        notes.append("No record was accepted: see rejected-*.jsonl for the reasons.")
    elif batch_size is not None and accepted < batch_size:
        notes.append(f"The input has fewer accepted records ({accepted}) than one batch "
                     f"(--batch_size {batch_size}).")
    if summary.get("planned_batches") == 0:
        notes.append(NO_BATCH_NOTE)
    return notes
