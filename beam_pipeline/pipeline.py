"""The whole job in one function: read, bound, embed, cluster, batch, generate, write."""

from __future__ import annotations

import apache_beam as beam

from beam_pipeline.options import LOGIT_AGGREGATION, PRIVATE_EVOLUTION
from beam_pipeline.plan import GENERATION_STAGE, RunPlan, plan_ledger
from offline_models.loading import encoder_dimension
from transforms.assign_to_batches import AssignToBatches, planned_batch_id_list
from transforms.cluster import DP_KMEANS, PUBLIC_CENTERS, Cluster, DpKMeans
from transforms.embed import BoundContributions, EmbedRecords
from transforms.evolve import PrivateEvolution
from transforms.generate import GenerateSynthetic
from beam_pipeline import progress
from transforms.public_corpus import GeneratePublicCorpus, PublicCentres
from transforms.record_cap import SKIPPED_TAG as CAP_SKIPPED_TAG, CapRecords
from transforms.read import REJECTED_TAG, ReadRecords
from transforms.release_embeddings import ReleaseSyntheticEmbeddings
from transforms.report import WriteReports
from transforms.write import PublishOutputs, WriteJsonLines, output_path, staging_dir


def embedding_dimension(plan: RunPlan) -> int | None:
    """The encoder's output dimension when a release is sized by it (DP k-means with logit
    aggregation, or the synthetic embeddings), else None. It comes from the encoder's
    preset, never from the records, so an empty input releases the same shapes."""
    sized = plan.embeddings or (plan.method == LOGIT_AGGREGATION
                                and plan.clustering.mode == DP_KMEANS)
    return encoder_dimension(plan.encoder) if sized else None


def usable_records(pipeline: beam.Pipeline, plan: RunPlan) -> dict:
    """Every step before the first release: read (parse, label filter, duplicate ids),
    one record per privacy unit, the record cap. Each is stable: adding or removing one
    row changes what comes out by at most that row's unit (docs/privacy.md).

    {"read": ReadRecords' outputs, "bounded": after unit bounding, "skipped": the
    sources the cap left out, "records": what the job uses}."""
    read = pipeline | "ReadRecords" >> ReadRecords(
        plan.input, plan.schema, input_format=plan.input_format, label_values=plan.labels,
        encoding=plan.encoding)
    records = read["records"]
    ids_from_column = plan.schema.id_column is not None
    if plan.schema.unit_column:
        records = records | "BoundContributions" >> BoundContributions(
            plan.secret, ids_from_column=ids_from_column)
    bounded = records
    skipped = pipeline | "NoneSkipped" >> beam.Create([])
    if plan.max_records is not None:
        capped = records | "CapRecords" >> CapRecords(
            plan.max_records, noise_stddev=plan.max_records_noise, secret=plan.secret,
            ids_from_column=ids_from_column)
        records, skipped = capped.records, capped[CAP_SKIPPED_TAG]
    return {"read": read, "bounded": bounded, "skipped": skipped, "records": records}


def build_pipeline(pipeline: beam.Pipeline, plan: RunPlan) -> None:
    usable = usable_records(pipeline, plan)
    read, bounded, skipped = usable["read"], usable["bounded"], usable["skipped"]
    embedded = usable["records"] | "EmbedRecords" >> EmbedRecords(
        plan.encoder, sequence_length=plan.encoder_sequence_length)

    # Everything is written to a staging folder and published by the last step.
    staging = staging_dir(plan.output, plan.run_id)
    counts = [
        _count(read["records"], "records_accepted"),
        _count(read[REJECTED_TAG], "records_rejected"),
        _count(read["records"] | "Truncated" >> beam.Filter(lambda r: r.truncated),
               "records_truncated"),
        _count(bounded, "records_after_unit_bound"),
        _count(skipped, "records_over_max_records"),
        _count(embedded, "records_embedded"),
        _count_rejections_by_reason(read[REJECTED_TAG]),
    ]
    written = [read[REJECTED_TAG] | "WriteRejected" >> WriteJsonLines(
        staging, "rejected", lambda r: {"source": r.source, "reason": r.reason,
                                         "raw_excerpt": r.raw_excerpt})]
    report_inputs = {}
    dimension = embedding_dimension(plan)
    if plan.method == LOGIT_AGGREGATION:
        synthetic, release, batches = _logit_aggregation(pipeline, plan, embedded, dimension)
        counts += [_count(batches | "Members" >> beam.FlatMap(lambda b: b.members),
                          "records_batched")]
        report_inputs.update(generation=synthetic, release=release)
    elif plan.method == PRIVATE_EVOLUTION:
        evolved = embedded | "PrivateEvolution" >> _private_evolution(plan)
        synthetic = evolved["population"]
        report_inputs.update(rounds=evolved["rounds"])
    else:
        synthetic = None
    if synthetic is not None:
        written.append(synthetic | "WriteSynthetic" >> WriteJsonLines(
            staging, "synthetic", lambda r: r.to_output()))
        counts.append(_count(synthetic, "synthetic_records"))
    if plan.embeddings:
        if "release" in report_inputs:  # the clustering's centres serve the embeddings too
            centres = report_inputs["release"] | "ReleasedCentres" >> beam.Map(
                lambda r: r.centres)
        else:
            centres = _embedding_centres(pipeline, plan, embedded, dimension)
        released = ({"embedded": embedded, "centres": centres}
                    | "ReleaseSyntheticEmbeddings" >> ReleaseSyntheticEmbeddings(
                        plan.embeddings, plan.secret,
                        output_path(staging, f"synthetic_embeddings.{plan.embeddings_format}"),
                        labels=plan.clustering.labels, dimension=dimension))
        written.append(released["written"])
        counts.append(released["summary"] | "EmbeddingsWritten" >> beam.Map(
            lambda summary: ("synthetic_embeddings", summary["samples_written"])))
    report_inputs["counts"] = counts | "AllCounts" >> beam.Flatten()
    written.append(report_inputs | "WriteReports" >> WriteReports(
        staging, lambda: plan_ledger(plan), generation_stage=GENERATION_STAGE,
        parameters=report_parameters(plan), lifetime_budget=plan.lifetime_budget))
    tuple(written) | "PublishOutputs" >> PublishOutputs(staging, plan.output)


def _logit_aggregation(pipeline, plan: RunPlan, embedded, dimension: int | None):
    """Cluster, batch and generate: (synthetic records, the cluster release, the batches)."""
    public_centres = None
    if plan.clustering.mode == PUBLIC_CENTERS:
        public_centres = pipeline | "PublicCentres" >> _public_centres(plan)
    clusters = embedded | "Cluster" >> Cluster(plan.clustering, plan.secret, public_centres,
                                               dimension=dimension)
    release = clusters["release"]
    batches = clusters["clustered"] | "AssignToBatches" >> AssignToBatches(
        release, expected_batch_size=plan.generation.expected_batch_size, secret=plan.secret)
    planned_batch_ids = release | "PlannedBatchIds" >> beam.Map(
        planned_batch_id_list, plan.generation.expected_batch_size)
    synthetic = batches | "GenerateSynthetic" >> GenerateSynthetic(
        plan.generation, lm=plan.lm, template=plan.template, secret=plan.secret,
        stop_text=plan.stop_text, planned_batch_ids=planned_batch_ids,
        batches_per_call=plan.batches_per_call)
    return synthetic, release, batches


def _private_evolution(plan: RunPlan) -> PrivateEvolution:
    generation = plan.generation
    return PrivateEvolution(
        plan.evolution, lm=plan.lm, encoder=plan.encoder,
        encoder_sequence_length=plan.encoder_sequence_length, template=plan.template,
        variation_template=plan.variation_template, labels=plan.clustering.labels,
        secret=plan.secret, stop_text=plan.stop_text, max_new_tokens=generation.max_new_tokens,
        temperature=generation.temperature, top_k=generation.top_k,
        # A member is one prompt row, a batch s + 1: calls keep the rows of that many batches.
        texts_per_call=plan.batches_per_call * (generation.expected_batch_size + 1),
        variation=plan.variation, blank_fraction=plan.blank_fraction,
        variation_temperature=plan.variation_temperature,
        variation_max_new_tokens=plan.variation_max_new_tokens)


def _embedding_centres(pipeline, plan: RunPlan, embedded, dimension: int):
    """The centres of --clustering when no logit aggregation computed them: one placeholder
    per label (uniform), the public centres, or DP k-means (charged to the embeddings)."""
    mode = plan.clustering.mode
    if mode == PUBLIC_CENTERS:
        return pipeline | "PublicCentres" >> _public_centres(plan)
    if mode == DP_KMEANS:
        return embedded | "DpKMeans" >> DpKMeans(plan.clustering, plan.secret, dimension)
    return pipeline | "OneCentrePerLabel" >> beam.Create([None])


def _public_centres(plan: RunPlan) -> PublicCentres:
    corpus = None
    if not plan.public_input:
        corpus = GeneratePublicCorpus(
            lm=plan.lm, template=plan.template, labels=plan.labels,
            size=plan.public_corpus_size, max_new_tokens=plan.generation.max_new_tokens,
            temperature=1.0, secret=plan.secret, stop_text=plan.stop_text,
            batches_per_call=plan.batches_per_call)
    return PublicCentres(public_input=plan.public_input, text_column=plan.schema.text_column,
                         encoder=plan.encoder, encoder_sequence_length=plan.encoder_sequence_length,
                         centres=plan.public_centers, corpus=corpus)


# Counts that close a phase, announced as soon as they are known.
PHASE_ENDS = {"records_accepted": "reading: %d records accepted",
              "records_rejected": "reading: %d rows rejected",
              "records_embedded": "embedding: %d records embedded",
              "synthetic_records": "generation: %d synthetic records"}


def _count(pcoll, name: str):
    def named(count):
        if name in PHASE_ENDS:
            progress.announce(PHASE_ENDS[name], count)
        return name, count

    return (pcoll
            | f"Count {name}" >> beam.combiners.Count.Globally()
            | f"Name {name}" >> beam.Map(named))


def _count_rejections_by_reason(rejected):
    """Reasons name a problem, never the row, so they can be counted and shown."""
    return (rejected
            | "RejectionReasons" >> beam.Map(lambda r: r.reason)
            | "CountReasons" >> beam.combiners.Count.PerElement()
            | "AllReasons" >> beam.combiners.ToList()
            | "NameReasons" >> beam.Map(lambda pairs: ("records_rejected_by_reason",
                                                       dict(sorted(pairs)))))


def budget_plan_summary(choice) -> dict:
    """How the plan spent the target: each calibrated stage's share, the values it chose and
    those the user set, so the report shows why each noise scale is what it is."""
    return {"target_epsilon": choice.target,
            "target": "--target_epsilon" if choice.target_stated else "the default",
            "shares": dict(choice.shares), "last_stage_takes_the_rest": choice.last_stage,
            "calibrated": dict(choice.chosen), "as_set": dict(choice.given),
            **({"unmet": choice.unmet} if choice.unmet else {})}


def report_parameters(plan: RunPlan) -> dict:
    parameters = {"method": plan.method, "delta": plan.delta, "lm": plan.lm,
                  "encoder": plan.encoder, "prompt_template": plan.template,
                  "labels": list(plan.labels) if plan.labels else None,
                  "run_secret": ("fixed by --run_secret" if plan.secret_is_fixed
                                 else "fresh from the OS")}
    if plan.budget is not None:
        parameters["budget_plan"] = budget_plan_summary(plan.budget)
    if plan.max_records is not None:
        parameters.update(max_records=plan.max_records,
                          max_records_noise=plan.max_records_noise)
    g, c = plan.generation, plan.clustering
    if plan.method == PRIVATE_EVOLUTION:
        e = plan.evolution
        parameters.update(pe_rounds=e.rounds, pe_population=e.population,
                          pe_vote_noise=e.vote_noise, pe_vote_threshold=e.vote_threshold,
                          pe_candidates=e.candidates, pe_variation=plan.variation,
                          pe_variation_template=plan.variation_template,
                          pe_variation_temperature=plan.variation_temperature,
                          pe_variation_max_new_tokens=plan.variation_max_new_tokens,
                          **({"pe_blank_fraction": plan.blank_fraction}
                             if plan.variation == "fill_in" else {}),
                          temperature=g.temperature, top_k=g.top_k,
                          max_new_tokens=g.max_new_tokens)
    if plan.embeddings:
        parameters.update(output_embeddings=plan.embeddings_format,
                          embeddings_count_noise=plan.embeddings.count_noise,
                          embeddings_sum_noise=plan.embeddings.sum_noise,
                          embeddings_samples=plan.embeddings.samples,
                          embeddings_centres=c.mode)
    if c.mode == DP_KMEANS and (plan.method == LOGIT_AGGREGATION or plan.embeddings):
        parameters.update(kmeans_clusters=c.kmeans_clusters, kmeans_rounds=c.kmeans_rounds,
                          kmeans_sum_noise=c.kmeans_sum_noise,
                          kmeans_count_noise=c.kmeans_count_noise)
    if plan.method != LOGIT_AGGREGATION:
        return parameters
    parameters.update({
        "clustering": c.mode, "aggregator": g.aggregator, "batch_size": g.expected_batch_size,
        "temperature": g.temperature, "clip": g.clip, "max_new_tokens": g.max_new_tokens,
        "top_k": g.top_k, "public_tokens": g.public_tokens,
        "histogram_noise": c.histogram_noise})
    if g.ptr:
        parameters.update(ptr_bound=g.ptr.bound, ptr_svt_epsilon=g.ptr.svt_epsilon,
                          ptr_threshold=g.ptr.threshold, ptr_fallback=g.ptr.fallback)
    if g.public_tokens:
        parameters.update(gate_threshold=g.gate_threshold, gate_noise=g.gate_noise,
                          max_private_tokens=g.private_token_cap)
    if c.mode == PUBLIC_CENTERS:
        parameters.update(public_centers=plan.public_centers, kept_centers=c.kept_centers,
                          public_corpus=plan.public_input or
                          f"{plan.public_corpus_size} texts from the public prompt")
    return parameters
