"""`dpsynth audit`: insert canaries, run the configured job once, and try to break its
guarantee with the run's own synthetic output (the measurements: evaluation/audit.py).

1. The input is read with the job's own parser and schema (and `--label_values`):
   usable records only, in file and row order, duplicates of an id dropped as the job
   drops them; unusable rows are counted by reason. `--max_records` keeps about N of
   them, whole privacy units drawn with `--seed`.
2. The usable records are split with `--seed`: a `--holdout_fraction` share (whole privacy
   units with `--privacy_unit_column`) is held out and never given to the job.
3. `--canaries` random phrases, each copied `--canary_repeats` times (every copy its own
   record, id and privacy unit; the label a random valid label), are shuffled in among the
   kept records, written as JSONL into a working directory, and the job runs on that file
   with every other run option unchanged (`--max_records` has already been applied, so
   the audited job runs uncapped, and its formal epsilon carries no cap release).
4. The synthetic output is checked for the canaries, members and held-out records are
   scored by the similarity attack with the run's encoder, and the figures are written to
   audit.json and audit.md next to the privacy report's claimed epsilon.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.options import NO_TEXT, DpSynthOptions
from beam_pipeline.plan import check_budget, make_plan
from beam_pipeline.run import (pipeline_options, preflight, refuse_earlier_outputs, run,
                                with_folder_input)
from evaluation import audit as measures
from transforms.write import read_json_lines
from evaluation import memorisation
from transforms import read as records_lib
from transforms.read import DUPLICATE_ID_REASON, reencode_as_utf8

AUDIT_INPUT = "audit_input.jsonl"
CANARY_PREFIX = "dpsynth-audit-canary"
# Options of `dpsynth run` that the audit applies itself, before the job sees the records.
# The audit hands the job its own UTF-8 JSONL, so the job must not decode it again.
CONSUMED_RUN_OPTIONS = ("--input", "--input_format", "--max_records", "--encoding")


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    canaries: int = 8
    canary_repeats: int = 1
    holdout_fraction: float = 0.5
    seed: int = 0
    report: str | None = None        # directory of audit.json and audit.md
    work_dir: str | None = None      # where the job's input is written (default: a temp dir)
    confidence: float = measures.CONFIDENCE


class AuditError(ValueError):
    """A mistake the user can fix; one line."""


def run_audit(run_argv: list[str], settings: AuditSettings, *,
              say: Callable[[str], None] = print) -> dict:
    """Runs the audit; returns the audit result (also written to the report directory)."""
    _check_settings(settings)
    options = pipeline_options(run_argv)
    plan = with_folder_input(make_plan(options))
    refuse_earlier_outputs(plan, options.view_as(DpSynthOptions).overwrite)
    if plan.method == NO_TEXT:
        raise AuditError("the audit looks for canaries in synthetic text, and --method none "
                         "writes none: audit a run that writes text")
    check_budget(plan)
    preflight(plan)
    report_dir = settings.report or (os.path.join(plan.output, "audit")
                                     if not plan.output.startswith("gs://") else None)
    if report_dir is None:
        raise AuditError("with a gs:// --output, name a local --report directory")
    _check_writable(report_dir)

    usable, rejected = read_usable_records(plan, settings.seed)
    groups = [_group(r) for r, _ in usable]
    if len(set(groups)) < 2:
        raise AuditError(f"the input has {len(usable)} usable records: the audit needs at "
                         "least 2 (privacy units), some to give the job and some to hold out")
    held_mask = measures.holdout_split(groups, settings.holdout_fraction, settings.seed)
    members = [pair for pair, held in zip(usable, held_mask) if not held]
    held_out = [pair for pair, held in zip(usable, held_mask) if held]

    canaries = measures.make_canaries(2 * settings.canaries, seed=settings.seed,
                                      avoid_texts=[r.text for r, _ in usable])
    inserted, control = canaries[:settings.canaries], canaries[settings.canaries:]
    rng = np.random.default_rng([settings.seed, 0xA0D1])
    canary_labels = _canary_labels(plan, len(inserted), rng)
    canary_rows = [_canary_row(plan, text, label, i, j)
                   for i, (text, label) in enumerate(zip(inserted, canary_labels))
                   for j in range(settings.canary_repeats)]
    job_rows = [row for _, row in members] + canary_rows
    job_rows = [job_rows[i] for i in rng.permutation(len(job_rows))]
    say(f"dpsynth audit: {len(usable)} usable records: {len(members)} given to the job, "
        f"{len(held_out)} held out; {len(inserted)} canaries x {settings.canary_repeats} "
        f"inserted ({len(job_rows)} records in all)")

    work = settings.work_dir or tempfile.mkdtemp(prefix="dpsynth-audit-")
    input_path = FileSystems.join(work, AUDIT_INPUT)
    try:
        _write_jsonl(input_path, job_rows)
        summary = run(_job_argv(run_argv, input_path), say=say)
    finally:
        if settings.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    synthetic = read_json_lines(plan.output, "synthetic")
    with FileSystems.open(FileSystems.join(plan.output, "privacy_report.json")) as handle:
        privacy = json.loads(handle.read().decode("utf-8"))
    result = measure(
        plan=plan, settings=settings, synthetic_texts=[s["text"] for s in synthetic],
        member_texts=[r.text for r, _ in members], held_out_texts=[r.text for r, _ in held_out],
        inserted=inserted, control=control, canary_labels=canary_labels, privacy=privacy,
        say=say)
    result["input"] = {
        "rows_unusable": sum(rejected.values()), "rows_unusable_by_reason": rejected,
        "usable_records": len(usable), "records_given_to_job": len(members),
        "records_held_out": len(held_out), "canary_records": len(canary_rows),
        "job_records_accepted": summary.get("records_accepted"),
        "job_records_rejected": summary.get("records_rejected"),
        "job_records_batched": summary.get("records_batched"),
        "synthetic_records": len(synthetic),
        "max_records": plan.max_records,
    }
    result["run"] = {"output": plan.output, "run_argv": _redacted(run_argv),
                     "wall_seconds": summary.get("wall_seconds")}
    paths = measures_report(result, report_dir)
    for line in summary_lines(result):
        say(line)
    say(f"Report: {paths['md']} (figures in {paths['json']})")
    return result


def measure(*, plan, settings: AuditSettings, synthetic_texts, member_texts, held_out_texts,
            inserted, control, canary_labels, privacy: dict, say) -> dict:
    """Every figure of the audit from the texts (no Beam)."""
    from offline_models.loading import load_sentence_encoder

    delta = float(privacy["delta"])
    exposure = measures.canary_exposure(inserted, synthetic_texts)
    control_exposure = measures.canary_exposure(control, synthetic_texts)

    rng = np.random.default_rng([settings.seed, 0x5A3B])
    size = min(len(member_texts), len(held_out_texts))
    member_sample = [member_texts[i] for i in sorted(rng.permutation(len(member_texts))[:size])]
    held_sample = [held_out_texts[i] for i in
                   sorted(rng.permutation(len(held_out_texts))[:size])]
    say(f"audit: embedding {len(synthetic_texts)} synthetic texts, {2 * size} records and "
        f"{len(inserted) + len(control)} canaries with {plan.encoder}")
    encoder = load_sentence_encoder(plan.encoder, sequence_length=plan.encoder_sequence_length)
    synthetic_vectors = encoder.embed(list(synthetic_texts))
    score = lambda texts: measures.similarity_scores(encoder.embed(list(texts)),  # noqa: E731
                                                     synthetic_vectors)
    member_scores, held_scores = score(member_sample), score(held_sample)
    inserted_scores, control_scores = score(inserted), score(control)
    for row, value, label in zip(exposure, inserted_scores, canary_labels):
        row.update(attack_score=float(value), label=label)
    for row, value in zip(control_exposure, control_scores):
        row["attack_score"] = float(value)

    copying = {}
    for name, texts in (("members", member_texts), ("held_out", held_out_texts)):
        index = memorisation.CopyIndex(list(synthetic_texts), list(texts))
        longest = index.longest_shared()
        copied = index.copied_fraction()
        copying[name] = {"records": len(texts), "longest_shared_ngram": longest["length"],
                         "copied_texts": copied["copied"], "copied_fraction": copied["fraction"]}

    attack = "max cosine similarity of a record's embedding to any synthetic text's embedding"
    return {
        "settings": {"canaries": settings.canaries, "canary_repeats": settings.canary_repeats,
                     "holdout_fraction": settings.holdout_fraction, "seed": settings.seed,
                     "confidence": settings.confidence, "encoder": plan.encoder,
                     "canary_words": measures.CANARY_WORDS,
                     "copy_ngram": memorisation.COPY_NGRAM,
                     "near_verbatim_ratio": measures.NEAR_VERBATIM_RATIO},
        "claimed": {"formal_epsilon": privacy["formal_epsilon"], "delta": delta,
                    "privacy_unit": privacy.get("privacy_unit"),
                    # The median rule's realised cost: data-dependent, NOT a formal guarantee.
                    "ex_post_epsilon": {
                        stage: {"max": figures["total_epsilon"]["max"],
                                "median": figures["total_epsilon"]["p50"]}
                        for stage, figures in (privacy.get("ex_post") or {}).items()}},
        "canary_exposure": measures.exposure_summary(exposure, control_exposure),
        "canaries": exposure,
        "control_canaries": control_exposure,
        "membership_inference": {
            "attack": attack,
            "records": {"members": "a random sample of the records given to the job",
                        "non_members": "held-out records of the same input, never given to "
                                       "the job",
                        **measures.attack_figures(member_scores, held_scores, delta=delta,
                                                  confidence=settings.confidence,
                                                  seed=settings.seed)},
            "canaries": {"members": "the inserted canaries",
                         "non_members": "control canaries drawn the same way, never inserted",
                         **measures.attack_figures(inserted_scores, control_scores, delta=delta,
                                                   confidence=settings.confidence,
                                                   seed=settings.seed)},
        },
        "memorisation": copying,
    }


# ------------------------------------------------------------------------------- input

def read_usable_records(plan, seed: int = 0) -> tuple[list, dict]:
    """[(Record, raw row)] the audit studies, in file and row order, and {reason: count} of
    the rows left out (--label_values and duplicate ids as the job applies them;
    --max_records as a seeded sample of whole privacy units)."""
    paths = sorted((m.path for m in FileSystems.match([plan.input])[0].metadata_list),
                   key=lambda p: (p.rsplit("/", 1)[-1], p))
    usable, rejected, seen_ids = [], {}, set()
    labels = set(plan.labels) if plan.labels else None
    for path in paths:
        file_format = records_lib.format_of(path, plan.input_format)
        with FileSystems.open(path) as handle:
            data = handle.read()
        if file_format != "parquet":
            data = reencode_as_utf8(data, plan.encoding)
        for row, record in records_lib.parse_rows(path, data, plan.schema, file_format):
            record = records_lib.within_label_values(record, labels)
            if isinstance(record, records_lib.Record) and plan.schema.id_column:
                key = (record.unit, record.record_id)
                if key in seen_ids:
                    record = records_lib.Rejected(record.source, DUPLICATE_ID_REASON)
                seen_ids.add(key)
            if isinstance(record, records_lib.Rejected):
                rejected[record.reason] = rejected.get(record.reason, 0) + 1
                continue
            usable.append((record, _job_row(plan, row)))
    if plan.max_records is not None and len(usable) > plan.max_records:
        kept = _sample_units(usable, plan.max_records, seed)
        rejected["over --max_records"] = len(usable) - len(kept)
        usable = kept
    return usable, dict(sorted(rejected.items()))


def _sample_units(usable: list, max_records: int, seed: int) -> list:
    """About `max_records` of the records, whole privacy units drawn at random with the
    audit's seed (never the first rows: which units the audit studies must not depend
    on where they sit in the file), in file and row order."""
    sizes = collections.Counter(_group(record) for record, _ in usable)
    groups = list(sizes)    # first-seen order, so the seed alone decides the draw
    order = np.random.default_rng([seed, 0xCA9]).permutation(len(groups))
    chosen, total = set(), 0
    for index in order:
        if total >= max_records:
            break
        chosen.add(groups[index])
        total += sizes[groups[index]]
    return [pair for pair in usable if _group(pair[0]) in chosen]


def _group(record) -> str:
    return record.unit if record.unit is not None else record.record_id


def _job_row(plan, row: dict) -> dict:
    """The columns the job reads, as the input had them."""
    schema = plan.schema
    columns = [schema.text_column, schema.label_column, schema.id_column, schema.unit_column]
    return {column: row[column] for column in columns if column}


def _canary_labels(plan, count: int, rng) -> list:
    """Labels from the public domain (a labelled plan always has --label_values)."""
    if not plan.schema.label_column:
        return [None] * count
    domain = list(plan.labels)
    return [domain[int(i)] for i in rng.integers(0, len(domain), size=count)]


def _canary_row(plan, text: str, label, index: int, copy: int) -> dict:
    schema = plan.schema
    row = {schema.text_column: text}
    if schema.label_column:
        row[schema.label_column] = label
    # Every copy is its own record and its own privacy unit.
    name = f"{CANARY_PREFIX}-{index}-{copy}"
    if schema.id_column:
        row[schema.id_column] = name
    if schema.unit_column:
        row[schema.unit_column] = name
    return row


def _write_jsonl(path: str, rows: list[dict]) -> None:
    if not path.startswith("gs://"):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with FileSystems.create(path) as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def _job_argv(run_argv: list[str], input_path: str) -> list[str]:
    return [*strip_options(run_argv, CONSUMED_RUN_OPTIONS),
            "--input", input_path, "--input_format", "jsonl"]


def strip_options(argv: list[str], names) -> list[str]:
    """argv without the named options and their values (`--name value` or `--name=value`)."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
            continue
        name = argument.split("=", 1)[0]
        if name in names:
            skip = "=" not in argument
            continue
        kept.append(argument)
    return kept


def _redacted(argv: list[str]) -> list[str]:
    """The run options as given, without the run secret's value."""
    shown, hide = [], False
    for argument in argv:
        if hide:
            shown.append("<hidden>")
            hide = False
        elif argument.split("=", 1)[0] == "--run_secret":
            shown.append("--run_secret=<hidden>" if "=" in argument else argument)
            hide = "=" not in argument
        else:
            shown.append(argument)
    return shown


def _check_settings(settings: AuditSettings) -> None:
    if settings.canaries < 1:
        raise AuditError(f"--canaries must be >= 1, got {settings.canaries}")
    if settings.canary_repeats < 1:
        raise AuditError(f"--canary_repeats must be >= 1, got {settings.canary_repeats}")
    if not 0 < settings.holdout_fraction < 1:
        raise AuditError(f"--holdout_fraction must lie strictly between 0 and 1, got "
                         f"{settings.holdout_fraction:g}")
    if settings.seed < 0:
        raise AuditError(f"--seed must be >= 0, got {settings.seed}")


def _check_writable(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, ".dpsynth-write-check")
        with open(probe, "w", encoding="utf-8") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise AuditError(f"cannot write to --report {directory} "
                         f"({error.strerror or error}): choose a directory you can write to"
                         ) from None


# ------------------------------------------------------------------------------ report

def measures_report(result: dict, directory: str) -> dict:
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "audit.json")
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    md_path = os.path.join(directory, "audit.md")
    with open(md_path, "w", encoding="utf-8") as handle:
        handle.write(audit_markdown(result))
    return {"json": json_path, "md": md_path}


def _number(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def summary_lines(result: dict) -> list[str]:
    exposure = result["canary_exposure"]
    inserted, control = exposure["inserted"], exposure["control"]
    records = result["membership_inference"]["records"]
    canaries = result["membership_inference"]["canaries"]
    bound = records["empirical_epsilon"]
    claimed = result["claimed"]
    return [
        f"canaries: verbatim {inserted['verbatim']}/{inserted['count']}, near-verbatim "
        f"{inserted['near_verbatim']}/{inserted['count']} (control canaries, never inserted: "
        f"{control['verbatim']}, {control['near_verbatim']}); longest canary run in a "
        f"synthetic text {inserted['longest_shared_run_max']} words",
        f"membership inference (embedding similarity): AUC {_number(records['auc'])} on "
        f"{bound['members']} members vs {bound['non_members']} held-out records; canaries "
        f"AUC {_number(canaries['auc'])} vs control canaries",
        f"empirical epsilon lower bound {bound['epsilon_lower_bound']:.3g} "
        f"({bound['confidence']:.0%} Clopper-Pearson; at most {_number(bound.get('ceiling'))} "
        f"on the half of the scores it is measured on) vs claimed formal epsilon "
        f"{_number(claimed['formal_epsilon'], 4)} at delta {claimed['delta']:g}"
        + "".join(f"; {stage} ex-post (not a formal guarantee): max "
                  f"{_number(figures['max'], 4)}, median {_number(figures['median'], 4)}"
                  for stage, figures in claimed.get("ex_post_epsilon", {}).items()),
    ]


def audit_markdown(result: dict) -> str:
    exposure = result["canary_exposure"]
    records = result["membership_inference"]["records"]
    canaries = result["membership_inference"]["canaries"]
    claimed, info, settings = result["claimed"], result.get("input", {}), result["settings"]
    lines = [
        "# Privacy audit", "",
        f"Claimed: formal epsilon {_number(claimed['formal_epsilon'], 4)} at delta "
        f"{claimed['delta']:g} per {claimed.get('privacy_unit') or 'record'} "
        "(privacy_report.json)."
        + "".join(f" Ex-post {stage} epsilon (data-dependent, not a formal guarantee): max "
                  f"{_number(figures['max'], 4)}, median {_number(figures['median'], 4)}."
                  for stage, figures in claimed.get("ex_post_epsilon", {}).items()), "",
    ]
    if info:
        lines += [
            f"Input: {info['usable_records']} usable records; {info['records_given_to_job']} "
            f"given to the job, {info['records_held_out']} held out (never given to it); "
            f"{info['canary_records']} canary records inserted ({settings['canaries']} "
            f"canaries x {settings['canary_repeats']}); {info['synthetic_records']} synthetic "
            "records.", ""]
    lines += ["## Canary exposure", "",
              f"- verbatim: {exposure['verbatim_rule']}",
              f"- near-verbatim: {exposure['near_verbatim_rule']}", "",
              "| canaries | count | verbatim | near-verbatim | longest run (words) "
              "| best LCS ratio | mean LCS ratio |",
              "|---|---|---|---|---|---|---|"]
    for name in ("inserted", "control"):
        f = exposure[name]
        lines.append(f"| {name} | {f['count']} | {f['verbatim']} | {f['near_verbatim']} | "
                     f"{f['longest_shared_run_max']} | {f['lcs_ratio_max']:.2f} | "
                     f"{f['lcs_ratio_mean']:.2f} |")
    lines += ["", "## Membership inference", "",
              f"Attack: {result['membership_inference']['attack']}; the higher the score, "
              "the likelier a member.", "",
              "| members vs non-members | n | AUC | epsilon lower bound | ceiling at this n "
              "| TPR | FPR |", "|---|---|---|---|---|---|---|"]
    for name, figures in (("records vs held-out records", records),
                          ("canaries vs control canaries", canaries)):
        bound = figures["empirical_epsilon"]
        lines.append(
            f"| {name} | {bound['members']} + {bound['non_members']} | "
            f"{_number(figures['auc'])} | {bound['epsilon_lower_bound']:.3g} | "
            f"{_number(bound.get('ceiling'))} | {_number(bound.get('tpr'))} | "
            f"{_number(bound.get('fpr'))} |")
    memo = result.get("memorisation", {})
    if memo:
        lines += ["", "## Verbatim copying", "",
                  "| records | longest shared run (words) | synthetic texts sharing 8 words |",
                  "|---|---|---|"]
        for name, figures in memo.items():
            lines.append(f"| {name.replace('_', ' ')} ({figures['records']}) | "
                         f"{figures['longest_shared_ngram']} | {figures['copied_texts']} |")
    lines += [
        "", "## How to read it", "",
        "- The epsilon lower bound is the larger of log((TPR_lo - delta) / FPR_hi) and "
        "log((1 - FPR_hi - delta) / (1 - TPR_lo)), with "
        f"{settings['confidence']:.0%} Clopper-Pearson intervals (Jagielski et al. 2020; Nasr "
        "et al. 2021), at one threshold of the attack's score. The members and the "
        "non-members are each split in two by a permutation seeded with --seed, whatever "
        "their scores: the threshold is the one with the "
        "largest bound on one half, and TPR and FPR are measured on the other half only, so "
        "the confidence still holds after the choice; 0 when that bound is not positive. "
        "TPR and FPR in the table are the measured half's. It comes from one run of "
        "one attack, so it is far below the claimed epsilon unless the guarantee is broken; "
        "it can never exceed the ceiling, the bound of a perfect attack on the measured "
        "half.",
        "- The guarantee is per record (or privacy unit). A canary repeated k times is k "
        "records, whose group guarantee is about k times weaker: repeats are a stress test, "
        "not a contradiction of the claim.",
        "- Control canaries were drawn like the inserted ones and never given to the job: "
        "their figures are the chance level.",
        "- This report quotes no private record; it names the canaries, which are random.",
    ]
    return "\n".join(lines) + "\n"
