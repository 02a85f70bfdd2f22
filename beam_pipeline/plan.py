"""From options to a validated run plan and its privacy ledger, before any data is read."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path

import codecs

from beam_pipeline import budget_ledger
from beam_pipeline import budget_plan
from beam_pipeline import options as opts
from mechanisms.accounting import PrivacyLedger
from mechanisms import median_ptr
from mechanisms import record_cap
from mechanisms import evolve as private_evolution
from mechanisms import variation as variations
from mechanisms import release_embeddings as synthetic_embeddings
from transforms.cluster import DP_KMEANS, PUBLIC_CENTERS, UNIFORM, ClusteringConfig
from mechanisms.generate import GenerationConfig
from transforms.generate import check_template
from mechanisms.randomness import check_run_secret, new_run_secret
from transforms.read import FORMATS, RecordSchema

GENERATION_STAGE = "generation"
EMBEDDINGS_STAGE = "synthetic embeddings"


class PlanError(ValueError):
    """A configuration mistake; its message is one line that says what to fix."""


@dataclasses.dataclass(frozen=True)
class RunPlan:
    input: str
    input_format: str | None
    output: str
    schema: RecordSchema
    labels: tuple | None
    max_records: int | None
    clustering: ClusteringConfig
    generation: GenerationConfig
    template: str
    stop_text: str | None
    public_input: str | None
    public_corpus_size: int
    public_centers: int
    lm: str
    encoder: str
    encoder_sequence_length: int
    batches_per_call: int
    delta: float
    target_epsilon: float | None
    secret: str = dataclasses.field(repr=False)
    secret_is_fixed: bool = False
    run_id: str = ""
    budget_ledger: str | None = None
    lifetime_epsilon: float | None = None
    privacy_unit_domain: str | None = None
    method: str = opts.LOGIT_AGGREGATION
    evolution: private_evolution.EvolutionConfig | None = None
    variation_template: str | None = None
    # Private Evolution's variations: kind, blanked share (fill_in), temperature and length
    # (make_plan sets the last two: the run's --temperature and --max_new_tokens unless set
    # apart).
    variation: str = variations.TEMPLATE
    blank_fraction: float = variations.DEFAULT_BLANK_FRACTION
    variation_temperature: float | None = None
    variation_max_new_tokens: int | None = None
    embeddings: synthetic_embeddings.EmbeddingReleaseConfig | None = None
    embeddings_format: str = "npz"
    max_records_noise: float = 10.0
    encoding: str = "utf-8"
    budget: budget_plan.BudgetChoice | None = None
    # Filled in by run.py once the budget ledger has reserved this run's cost.
    lifetime_budget: dict | None = None

    @property
    def privacy_unit(self) -> str:
        if self.schema.unit_column:
            return f"one privacy unit (column '{self.schema.unit_column}'), one record each"
        return "one input record"


def make_plan(options: opts.DpSynthOptions) -> RunPlan:
    o = options.view_as(opts.DpSynthOptions)
    if not o.input:
        raise PlanError("--input is required: a file or glob of records")
    if not o.output:
        raise PlanError("--output is required: a directory for the results")
    run_date = _run_date(o.run_date)
    if o.input_format and o.input_format not in FORMATS:
        raise PlanError(f"--input_format must be one of {', '.join(FORMATS)}")
    _require(o.batch_size >= 2, f"--batch_size must be at least 2, got {o.batch_size}")
    _require(o.temperature > 0, "--temperature must be > 0")
    _require(o.clip is None or o.clip > 0, "--clip must be > 0")
    _require(o.max_new_tokens >= 1, "--max_new_tokens must be >= 1")
    _require(0 < o.delta < 1, "--delta must be in (0, 1)")
    _require(o.target_epsilon is None or o.target_epsilon > 0, "--target_epsilon must be > 0")
    _require(o.max_records is None or o.max_records >= 1, "--max_records must be >= 1")
    _require(o.max_records_noise is None or o.max_records_noise > 0,
             "--max_records_noise must be > 0")
    _require(o.max_chars >= 1, "--max_chars must be >= 1")
    _require(o.top_k is None or o.top_k >= 0, "--top_k must be >= 0 (0 keeps every token)")
    _require(o.histogram_noise is None or o.histogram_noise > 0, "--histogram_noise must be > 0")
    _require(o.gate_noise > 0, "--gate_noise must be > 0")
    _require(o.ptr_svt_epsilon > 0, "--ptr_svt_epsilon must be > 0")
    _require(not (o.aggregator == "median_ptr" and o.public_tokens),
             "--public_tokens does not combine with --aggregator median_ptr yet: drop one")
    _require(o.kmeans_rounds >= 1 and o.kmeans_clusters >= 1,
             "--kmeans_rounds and --kmeans_clusters must be >= 1")
    _require(all(v is None or v > 0 for v in (o.kmeans_sum_noise, o.kmeans_count_noise)),
             "--kmeans_sum_noise and --kmeans_count_noise must be > 0")
    _require(o.public_centers >= 1 and o.kept_centers >= 1,
             "--public_centers and --kept_centers must be >= 1")
    _require(o.public_corpus_size >= 1, "--public_corpus_size must be >= 1")
    _require(o.pe_rounds >= 1, f"--pe_rounds must be >= 1, got {o.pe_rounds}")
    _require(o.pe_population >= 1, f"--pe_population must be >= 1, got {o.pe_population}")
    _require(o.pe_vote_noise is None or o.pe_vote_noise > 0, "--pe_vote_noise must be > 0")
    _require(o.pe_vote_threshold >= 0, "--pe_vote_threshold must be >= 0")
    _check_evolution_options(o)
    _require(o.method != opts.NO_TEXT or o.output_embeddings,
             "--method none writes no text: add --output_embeddings, or choose a method")
    _require(all(v is None or v > 0 for v in (o.embeddings_count_noise, o.embeddings_sum_noise)),
             "--embeddings_count_noise and --embeddings_sum_noise must be > 0")
    encoding = _encoding(o.encoding)
    try:
        budget = budget_plan.choose(o)
    except budget_plan.BudgetPlanError as error:
        raise PlanError(str(error)) from None
    value = budget.value
    _require(o.ptr_bound is None or 0 < o.ptr_bound < 2 * value("clip"),
             "--ptr_bound must lie in (0, 2 * --clip): the median never moves by more than 2c")
    embeddings = None
    if o.output_embeddings:
        _require(o.embeddings_samples is None or o.embeddings_samples >= 1,
                 "--embeddings_samples must be >= 1")
        embeddings = synthetic_embeddings.EmbeddingReleaseConfig(
            count_noise=value("embeddings_count_noise"), sum_noise=value("embeddings_sum_noise"),
            samples=o.embeddings_samples)
    _check_budget_options(o)
    labelled = bool(o.label_column)
    template = o.prompt_template or (opts.DEFAULT_TEMPLATE if labelled
                                     else opts.DEFAULT_UNLABELLED_TEMPLATE)
    template = template.replace("\\n", "\n")
    try:
        check_template(template, labelled=labelled)
    except ValueError as error:
        raise PlanError(str(error)) from None
    evolution, variation_template = None, None
    if o.method == opts.PRIVATE_EVOLUTION:
        evolution = private_evolution.EvolutionConfig(
            rounds=o.pe_rounds, population=o.pe_population, vote_noise=value("pe_vote_noise"),
            vote_threshold=o.pe_vote_threshold, candidates=o.pe_candidates or 1)
        # A prompt of the user's replaces the kind's own: the generic rephrase and fill-in
        # prompts know nothing of the domain ("Text:"), which a small base LM then copies.
        variation_template = (
            o.pe_variation_template.replace("\\n", "\n") if o.pe_variation_template
            else variations.variation_template(o.pe_variation or variations.TEMPLATE,
                                               labelled=labelled, template=template))
        try:
            check_template(variation_template, labelled=labelled)
        except ValueError as error:
            raise PlanError(f"--pe_variation_template: {error}") from None
    labels = _label_values(o.label_values) if o.label_values else None
    if labels is not None and not labelled:
        raise PlanError("--label_values needs --label_column")
    # Labels seen in the data are not public: releasing a cell per observed label would
    # show which labels occur (METHOD.md §0, example 4).
    if labelled and labels is None:
        raise PlanError("--label_column needs --label_values: list the public label values "
                        "(comma-separated, or @file with one per line)")
    schema = RecordSchema(text_column=o.text_column, label_column=o.label_column,
                          id_column=o.id_column, unit_column=o.privacy_unit_column,
                          max_chars=o.max_chars, over_length=o.over_length)
    clustering = ClusteringConfig(
        mode=o.clustering, expected_batch_size=o.batch_size,
        histogram_noise=value("histogram_noise"),
        labels=labels if labelled else (None,), kept_centers=o.kept_centers,
        kmeans_clusters=o.kmeans_clusters, kmeans_rounds=o.kmeans_rounds,
        kmeans_sum_noise=value("kmeans_sum_noise"),
        kmeans_count_noise=value("kmeans_count_noise"))
    generation = GenerationConfig(
        aggregator=o.aggregator, clip=value("clip"), temperature=o.temperature,
        expected_batch_size=o.batch_size, max_new_tokens=o.max_new_tokens, top_k=o.top_k or None,
        public_tokens=o.public_tokens, gate_threshold=o.gate_threshold,
        gate_noise=o.gate_noise, max_private_tokens=o.max_private_tokens,
        public_temperature=o.public_temperature,
        ptr=_ptr_settings(o, value("clip")) if o.aggregator == "median_ptr" else None)
    try:
        secret = check_run_secret(o.run_secret) if o.run_secret else new_run_secret()
    except ValueError as error:
        raise PlanError(str(error)) from None
    stop_text = o.stop_text.replace("\\n", "\n") if o.stop_text else None
    return RunPlan(
        input=o.input.replace("{date}", run_date), input_format=o.input_format,
        output=o.output.replace("{date}", run_date).rstrip("/"),
        schema=schema, labels=labels, max_records=o.max_records, clustering=clustering,
        generation=generation, template=template, stop_text=stop_text,
        public_input=o.public_input, public_corpus_size=o.public_corpus_size,
        public_centers=o.public_centers, lm=o.lm, encoder=o.encoder,
        encoder_sequence_length=o.encoder_sequence_length,
        batches_per_call=o.generation_batches_per_call, delta=o.delta,
        target_epsilon=o.target_epsilon, secret=secret, secret_is_fixed=bool(o.run_secret),
        run_id=uuid.uuid4().hex, budget_ledger=o.budget_ledger,
        lifetime_epsilon=o.lifetime_epsilon, privacy_unit_domain=o.privacy_unit_domain,
        method=o.method, evolution=evolution, variation_template=variation_template,
        variation=o.pe_variation or variations.TEMPLATE,
        blank_fraction=o.pe_blank_fraction or variations.DEFAULT_BLANK_FRACTION,
        variation_temperature=o.pe_variation_temperature or o.temperature,
        variation_max_new_tokens=o.pe_variation_max_new_tokens or o.max_new_tokens,
        embeddings=embeddings, embeddings_format=o.embeddings_format,
        max_records_noise=value("max_records_noise"), encoding=encoding, budget=budget)


def _check_evolution_options(o) -> None:
    """The variation options: their ranges, and that they are given only where they act."""
    given = [name for name in ("pe_candidates", "pe_variation", "pe_blank_fraction",
                               "pe_variation_temperature", "pe_variation_max_new_tokens")
             if getattr(o, name) is not None]
    if given and o.method != opts.PRIVATE_EVOLUTION:
        raise PlanError(f"--{given[0]} applies to --method private_evolution only")
    _require(o.pe_candidates is None or o.pe_candidates >= 1,
             f"--pe_candidates must be >= 1, got {o.pe_candidates}")
    _require(o.pe_blank_fraction is None or 0 < o.pe_blank_fraction < 1,
             f"--pe_blank_fraction must lie in (0, 1), got {o.pe_blank_fraction}")
    _require(o.pe_blank_fraction is None or o.pe_variation == variations.FILL_IN,
             "--pe_blank_fraction needs --pe_variation fill_in")
    _require(o.pe_variation_temperature is None or o.pe_variation_temperature > 0,
             f"--pe_variation_temperature must be > 0, got {o.pe_variation_temperature}")
    _require(o.pe_variation_max_new_tokens is None or o.pe_variation_max_new_tokens >= 1,
             f"--pe_variation_max_new_tokens must be >= 1, got "
             f"{o.pe_variation_max_new_tokens}")


def plan_ledger(plan: RunPlan) -> PrivacyLedger:
    """Every DP event one unit takes part in, known before any data is read."""
    ledger = PrivacyLedger(delta=plan.delta, privacy_unit=plan.privacy_unit)
    if plan.max_records is not None:
        ledger.record_gaussian(record_cap.STAGE, noise_stddev=plan.max_records_noise,
                               released=record_cap.RELEASED)
    if plan.method == opts.LOGIT_AGGREGATION:
        _record_logit_aggregation(ledger, plan)
    elif plan.method == opts.PRIVATE_EVOLUTION:
        evolution = plan.evolution
        ledger.record_gaussian(
            private_evolution.STAGE, noise_stddev=evolution.vote_noise, count=evolution.rounds,
            released=f"noisy histogram of nearest-member votes over the "
                     f"{evolution.voting_population} texts that vote (one vote per record and "
                     f"round; candidates and variation prompts cost nothing)")
    if plan.embeddings:
        if plan.method != opts.LOGIT_AGGREGATION and plan.clustering.mode == DP_KMEANS:
            _record_dp_kmeans(ledger, plan.clustering, EMBEDDINGS_STAGE)
        synthetic_embeddings.record_release(ledger, EMBEDDINGS_STAGE, plan.embeddings)
    return ledger


def _record_logit_aggregation(ledger: PrivacyLedger, plan: RunPlan) -> None:
    clustering = plan.clustering
    if clustering.mode == DP_KMEANS:
        _record_dp_kmeans(ledger, clustering, "clustering")
    released = {UNIFORM: "noisy record count per label",
                PUBLIC_CENTERS: "noisy histogram over public centres",
                DP_KMEANS: "noisy histogram over the final centres"}[clustering.mode]
    ledger.record_gaussian("clustering", noise_stddev=clustering.histogram_noise,
                           released=released)
    generation = plan.generation
    ledger.record_generation(
        GENERATION_STAGE, rule=generation.aggregator, clip=generation.clip,
        temperature=generation.temperature, max_private_tokens=generation.private_token_cap,
        expected_batch_size=generation.expected_batch_size,
        gate_noise_scale=generation.gate_noise if generation.public_tokens else None,
        ptr=generation.ptr)


def _record_dp_kmeans(ledger: PrivacyLedger, clustering: ClusteringConfig, stage: str) -> None:
    ledger.record_gaussian(stage, noise_stddev=clustering.kmeans_sum_noise,
                           count=clustering.kmeans_rounds,
                           released="noisy per-centre sum of unit-norm embeddings")
    ledger.record_gaussian(stage, noise_stddev=clustering.kmeans_count_noise,
                           count=clustering.kmeans_rounds,
                           released="noisy per-centre count (a Lloyd round)")


def check_budget(plan: RunPlan) -> float:
    """The formal epsilon of the plan; raises PlanError if it exceeds --target_epsilon."""
    epsilon = plan_ledger(plan).epsilon()
    if plan.target_epsilon is not None and epsilon > plan.target_epsilon:
        raise PlanError(
            f"this configuration costs epsilon {epsilon:.4g} (delta {plan.delta:g}), more than "
            f"--target_epsilon {plan.target_epsilon:g}: {_CHEAPER[plan.method]}")
    return epsilon


def describe_plan(plan: RunPlan, epsilon: float) -> list[str]:
    """The plan in a few lines, printed before any data is read: the target, how it is
    split, what was calibrated, and what the run costs."""
    budget = plan.budget
    origin = ("--target_epsilon" if budget.target_stated
              else "the default: no --target_epsilon given")
    lines = [f"plan: {_method_words(plan)}; target epsilon {budget.target:g} at delta "
             f"{plan.delta:g} ({origin})"]
    split = [f"{stage} {share:.0%}" for stage, share in budget.shares.items()]
    split.append(f"{budget.last_stage} the rest")
    if not budget.unmet:
        lines.append("plan: split of the target: " + ", ".join(split))
    if budget.chosen:
        lines.append("plan: calibrated: " + ", ".join(
            f"--{option} {value:.4g}" for option, value in budget.chosen.items()))
    if budget.given:
        lines.append("plan: as you set them: " + ", ".join(
            f"--{option} {value:g}" for option, value in budget.given.items()))
    ledger = plan_ledger(plan)
    lines.append(f"plan: formal epsilon {epsilon:.4g}; stages alone: " + ", ".join(
        f"{stage} {ledger.epsilon(stage):.4g}" for stage in ledger.stages))
    median = plan.method == opts.LOGIT_AGGREGATION and plan.generation.aggregator == "median"
    if median:
        lines.append(f"plan: median rule at --clip {plan.generation.clip:g}: its formal "
                     f"guarantee is its worst case, epsilon {epsilon:.4g}; the report shows "
                     f"its ex-post figure beside it, which depends on the data and is not a "
                     f"guarantee")
    if not budget.target_stated and epsilon > budget.target:
        if budget.unmet:
            why = f"nothing was calibrated, as {budget.unmet}"
        elif median and "clip" not in budget.given:
            why = ("the median rule is charged its worst case: --aggregator mean or "
                   "median_ptr meet this epsilon")
        else:
            why = "the options you set cost more: leave them unset to have them calibrated"
        lines.append(f"plan: warning: formal epsilon {epsilon:.4g} is above {budget.target:g} "
                     f"and no --target_epsilon holds the run to it; {why}")
    return lines


def lifetime_preview(plan: RunPlan) -> list[str]:
    """What the budget ledger would say of this run, read without writing anything."""
    if not plan.budget_ledger:
        return []
    import dp_accounting

    state = budget_ledger.read_ledger(plan.budget_ledger)
    entry = state["domains"].get(plan.privacy_unit_domain)
    ledger = plan_ledger(plan)
    event = dp_accounting.ComposedDpEvent([e.event for e in ledger.entries])
    if entry is None:
        return [f"budget ledger {plan.budget_ledger}: domain {plan.privacy_unit_domain} has no "
                f"run yet; this run would spend {ledger.epsilon():.4g} of the lifetime "
                f"{plan.lifetime_epsilon:g}"]
    runs = entry["runs"]
    delta = float(entry.get("delta", plan.delta))
    earlier = [budget_ledger.event_from_json(run["dp_event"]) for run in runs]
    spent_delta = sum(float(run.get("mechanism_delta", 0.0)) for run in runs)
    before = (budget_ledger.composed_epsilon(earlier, delta, spent_delta) if earlier else 0.0)
    after = budget_ledger.composed_epsilon(earlier + [event], delta,
                                           spent_delta + ledger.mechanism_delta)
    return [f"budget ledger {plan.budget_ledger}: domain {plan.privacy_unit_domain}: "
            f"{len(runs)} run(s) spent epsilon {before:.4g}; with this run {after:.4g} of the "
            f"lifetime {float(entry['lifetime_epsilon']):g} (at delta {delta:g})"]


def _method_words(plan: RunPlan) -> str:
    if plan.method == opts.PRIVATE_EVOLUTION:
        return f"private evolution, {plan.evolution.rounds} round(s)"
    if plan.method == opts.LOGIT_AGGREGATION:
        g = plan.generation
        return (f"{plan.clustering.mode} + {g.aggregator}, s={g.expected_batch_size}, "
                f"{g.private_token_cap} private tokens at most, temperature {g.temperature:g}")
    return "synthetic embeddings only"


_CHEAPER = {
    opts.LOGIT_AGGREGATION: "lower --clip or --max_new_tokens, or raise --batch_size, "
                            "--temperature or the noise",
    opts.PRIVATE_EVOLUTION: "lower --pe_rounds or raise --pe_vote_noise",
    opts.NO_TEXT: "raise the noise",
}


def _ptr_settings(o, clip: float) -> median_ptr.PtrSettings:
    bound = o.ptr_bound if o.ptr_bound is not None else 2.0 * clip / o.batch_size
    return median_ptr.PtrSettings.for_run(
        bound=bound, svt_epsilon=o.ptr_svt_epsilon, fallback=o.ptr_fallback,
        max_tokens=o.max_new_tokens, delta=o.delta * median_ptr.TEST_DELTA_SHARE)


def _encoding(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise PlanError(f"--encoding {name} is not an encoding Python knows: try utf-8, "
                        f"cp1252 or latin-1") from None


def _run_date(text: str | None) -> str:
    today = dt.datetime.now(dt.timezone.utc).date()
    if not text or text == "today":
        return today.isoformat()
    if text == "yesterday":
        return (today - dt.timedelta(days=1)).isoformat()
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise PlanError(f"--run_date must be a date like 2026-01-31, today or yesterday, "
                        f"got {text!r}") from None


def _check_budget_options(o) -> None:
    given = [o.budget_ledger, o.lifetime_epsilon, o.privacy_unit_domain]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise PlanError("--budget_ledger, --lifetime_epsilon and --privacy_unit_domain go "
                        "together: a ledger needs the domain it counts and its lifetime budget")
    if o.budget_ledger is None:
        return
    _require(o.lifetime_epsilon > 0, "--lifetime_epsilon must be > 0")
    try:
        budget_ledger.check_domain(o.privacy_unit_domain)
    except budget_ledger.BudgetLedgerError as error:
        raise PlanError(str(error)) from None


def _label_values(spec: str) -> tuple:
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise PlanError(f"--label_values file {path} does not exist")
        values = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        values = [value.strip() for value in spec.split(",")]
    values = tuple(dict.fromkeys(v for v in values if v))
    if not values:
        raise PlanError("--label_values is empty")
    return values


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise PlanError(message)
