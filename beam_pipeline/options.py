"""Typed pipeline options: every data and method parameter of a run."""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from offline_models import registry
from mechanisms import median_ptr, token_rules, variation

# Completion prompts that name no domain, so that tickets, notes or reviews all fit; a
# --prompt_template naming the domain ("Support ticket ({label}):") does better on it.
DEFAULT_TEMPLATE = "Text ({label}):\n{text}\n\nAnother text ({label}):\n"
DEFAULT_UNLABELLED_TEMPLATE = "Text:\n{text}\n\nAnother text:\n"
CLUSTERINGS = ("uniform", "public_centers", "dp_kmeans")
LOGIT_AGGREGATION, PRIVATE_EVOLUTION, NO_TEXT = "logit_aggregation", "private_evolution", "none"
METHODS = (LOGIT_AGGREGATION, PRIVATE_EVOLUTION, NO_TEXT)


CALIBRATED = "; default: calibrated to --target_epsilon (see --budget_split)"


class DpSynthOptions(PipelineOptions):
    """Options of `dpsynth run`; the names follow docs/privacy.md and METHOD.md."""

    @classmethod
    def _add_argparse_args(cls, parser):
        data = parser.add_argument_group("data")
        data.add_argument("--input", help="input file or glob, local or gs:// (JSONL, CSV, "
                                          "Parquet or plain text, by extension); {date} "
                                          "is replaced by --run_date")
        data.add_argument("--input_format", default=None,
                          help="jsonl, csv, parquet or text; default: from the file extension")
        data.add_argument("--encoding", default="utf-8",
                          help="text encoding of CSV, JSONL and text input, e.g. cp1252 for "
                               "a Windows spreadsheet export (Parquet is always UTF-8)")
        data.add_argument("--output", help="output directory, local or gs://; {date} is "
                                           "replaced by --run_date. Files appear there only "
                                           "when the job succeeds")
        data.add_argument("--overwrite", action="store_true",
                          help="replace the outputs of an earlier run in --output (they are "
                               "deleted when the job starts); without it such a folder is "
                               "refused")
        data.add_argument("--run_date", default=None,
                          help="the date put in place of {date} in --input and --output: "
                               "YYYY-MM-DD, today or yesterday (in UTC); default: today")
        data.add_argument("--text_column", default="text", help="column holding the text")
        data.add_argument("--label_column", default=None,
                          help="optional label column: clustering and batching run per label, "
                               "and the prompt and the output carry the label; needs "
                               "--label_values")
        data.add_argument("--label_values", default=None,
                          help="the PUBLIC set of label values, comma-separated or @file with "
                               "one per line, required with --label_column; records with "
                               "other labels are rejected")
        data.add_argument("--id_column", default=None,
                          help="record id column (default: file name and row number)")
        data.add_argument("--privacy_unit_column", default=None,
                          help="column naming the person (or other unit) a record belongs to; "
                               "each unit then contributes one record")
        data.add_argument("--max_records", type=int, default=None,
                          help="use about N records: each privacy unit is kept with "
                               "probability N / (a noisy count of the units), by a keyed hash "
                               "of its own content, so no record's presence pushes out "
                               "another's")
        data.add_argument("--max_records_noise", type=float, default=None,
                          help="sigma of the Gaussian noise on the count of units that sets "
                               "the --max_records keep rate (one release in the ledger)"
                               + CALIBRATED)
        data.add_argument("--max_chars", type=int, default=2000,
                          help="longest text used; see --over_length")
        data.add_argument("--over_length", choices=("truncate", "reject"), default="truncate",
                          help="what to do with texts over --max_chars")

        method = parser.add_argument_group("method")
        method.add_argument("--method", choices=METHODS, default=LOGIT_AGGREGATION,
                            help="logit_aggregation (cluster, batch, and generate one text per "
                                 "batch from privately aggregated next-token logits), "
                                 "private_evolution (evolve LM-written texts by noisy "
                                 "nearest-neighbour votes of the private records; see --pe_*) "
                                 "or none (no text: only the synthetic embeddings of "
                                 "--output_embeddings)")
        method.add_argument("--clustering", choices=CLUSTERINGS, default="public_centers",
                            help="uniform (one cluster, 2024 method), public_centers (k-means "
                                 "on a public corpus, 2025 method) or dp_kmeans")
        method.add_argument("--aggregator", choices=token_rules.RULES, default="mean",
                            help="clipped mean (formal guarantee), coordinate-wise median "
                                 "(ex-post guarantee, reported beside its formal worst case, "
                                 "which is vacuous at a readable --clip) or "
                                 "median_ptr (the median behind a private stability test: formal "
                                 "guarantee at the proposed bound --ptr_bound)")
        method.add_argument("--batch_size", type=int, default=8,
                            help="s, the expected number of records per batch")
        method.add_argument("--temperature", type=float, default=1.0,
                            help="tau: tokens are sampled from softmax(aggregate / tau)")
        method.add_argument("--clip", type=float, default=None,
                            help="c: logits are re-centred so the top is c and clipped at -c; "
                                 "default: calibrated to --target_epsilon for mean and "
                                 "median_ptr, 10 for the median")
        method.add_argument("--max_new_tokens", type=int, default=64,
                            help="tokens generated per synthetic record at most")
        method.add_argument("--top_k", type=int, default=50,
                            help="keep only the k tokens the public prompt ranks highest "
                                 "(free: public data only); 0 keeps the whole vocabulary. "
                                 "At a small epsilon the private aggregate is nearly flat, "
                                 "and the mask is what keeps the text readable")
        method.add_argument("--public_tokens", action="store_true",
                            help="sparse-vector gate: emit free tokens from the public prompt "
                                 "while it agrees with the batch")
        method.add_argument("--gate_threshold", type=float, default=0.5,
                            help="gate threshold on the L1 distance between distributions")
        method.add_argument("--gate_noise", type=float, default=0.2,
                            help="gate Laplace scale sigma (threshold noise; the distance gets 2 sigma)")
        method.add_argument("--max_private_tokens", type=int, default=None,
                            help="r_max: private tokens per batch at most with the gate "
                                 "(default: --max_new_tokens)")
        method.add_argument("--public_temperature", type=float, default=1.0,
                            help="temperature of free public tokens")
        method.add_argument("--ptr_bound", type=float, default=None,
                            help="median_ptr: b, the proposed bound on the median's local "
                                 "sensitivity; tokens cost b^2/(2 tau^2) (default: 2 c/s)")
        method.add_argument("--ptr_svt_epsilon", type=float, default=1.0,
                            help="median_ptr: epsilon of the one sparse-vector stability test "
                                 "per sequence; larger passes more often (the threshold is set "
                                 "from half of --delta)")
        method.add_argument("--ptr_fallback", choices=median_ptr.FALLBACKS, default="mean",
                            help="median_ptr: after a failed test, continue with the clipped "
                                 "mean (charged the larger of the two costs) or stop the text")
        method.add_argument("--prompt_template", default=None,
                            help="completion prompt with {text} and, with labels, {label}; "
                                 "the public prompt is the same with empty text")
        method.add_argument("--stop_text", default="\n\n",
                            help="a synthetic text ends where the model writes this")

        evolution = parser.add_argument_group("private evolution (--method private_evolution)")
        evolution.add_argument("--pe_rounds", type=int, default=3,
                               help="T, vote-and-vary rounds; each is one Gaussian release")
        evolution.add_argument("--pe_population", type=int, default=64,
                               help="M, synthetic texts in the population (all labels "
                                    "together); the output has M texts")
        evolution.add_argument("--pe_vote_noise", type=float, default=None,
                               help="sigma of the Gaussian noise on every member's vote count"
                                    + CALIBRATED)
        evolution.add_argument("--pe_vote_threshold", type=float, default=0.0,
                               help="H: members are redrawn in proportion to their noisy "
                                    "votes above H")
        evolution.add_argument("--pe_variation_template", default=None,
                               help="prompt for a variation of a member, with {text} (the "
                                    "member; with --pe_variation fill_in, the member with "
                                    "blanks) and, with labels, {label}; default: the "
                                    "--pe_variation kind's own prompt, which for 'template' "
                                    "is --prompt_template")
        evolution.add_argument("--pe_candidates", type=int, default=None,
                               help="L, variations written of every member drawn (default "
                                    "1): M * L texts vote each round and the redraw picks M; "
                                    "the last round writes one each, so the output keeps M "
                                    "texts. Costs L times the LM's writing; no privacy cost")
        evolution.add_argument("--pe_variation", choices=variation.VARIATIONS, default=None,
                               help="how a variation is asked for: 'template' (default: "
                                    "--pe_variation_template, else --prompt_template), "
                                    "'rephrase' (the same text in other words) or 'fill_in' "
                                    "(a share of its words blanked out, then filled in)")
        evolution.add_argument("--pe_blank_fraction", type=float, default=None,
                               help="with --pe_variation fill_in: the share of a member's "
                                    f"words blanked out (default "
                                    f"{variation.DEFAULT_BLANK_FRACTION})")
        evolution.add_argument("--pe_variation_temperature", type=float, default=None,
                               help="sampling temperature of variations (default "
                                    "--temperature)")
        evolution.add_argument("--pe_variation_max_new_tokens", type=int, default=None,
                               help="longest variation in tokens (default --max_new_tokens)")

        embeddings = parser.add_argument_group("synthetic embeddings (--output_embeddings)")
        embeddings.add_argument("--output_embeddings", action="store_true",
                                help="also release DP synthetic embeddings: per cluster of "
                                     "--clustering (per label) a noisy count, mean and "
                                     "diagonal second moment, sampled as a Gaussian mixture; "
                                     "written as synthetic_embeddings.npz or .parquet")
        embeddings.add_argument("--embeddings_format", choices=("npz", "parquet"),
                                default="npz", help="file format of the synthetic embeddings")
        embeddings.add_argument("--embeddings_count_noise", type=float, default=None,
                                help="sigma of the Gaussian noise on each cluster's count"
                                     + CALIBRATED)
        embeddings.add_argument("--embeddings_sum_noise", type=float, default=None,
                                help="sigma of the Gaussian noise on each cluster's sum of "
                                     "embeddings and on its sum of squared coordinates"
                                     + CALIBRATED)
        embeddings.add_argument("--embeddings_samples", type=int, default=None,
                                help="synthetic embeddings to draw (default: the noisy number "
                                     "of records)")

        clustering = parser.add_argument_group("clustering")
        clustering.add_argument("--public_input", default=None,
                                help="public corpus for public_centers (text column as --text_column); "
                                     "default: texts the LM writes from the public prompt")
        clustering.add_argument("--public_corpus_size", type=int, default=48,
                                help="texts generated for the public corpus")
        clustering.add_argument("--public_centers", type=int, default=16,
                                help="k0, centres fitted on the public corpus (per label)")
        clustering.add_argument("--kept_centers", type=int, default=8,
                                help="k', centres kept by noisy histogram (per label)")
        clustering.add_argument("--histogram_noise", type=float, default=None,
                                help="sigma of the Gaussian noise on every cluster count"
                                     + CALIBRATED)
        clustering.add_argument("--kmeans_clusters", type=int, default=8,
                                help="clusters of dp_kmeans (per label)")
        clustering.add_argument("--kmeans_rounds", type=int, default=3,
                                help="noisy Lloyd rounds of dp_kmeans")
        clustering.add_argument("--kmeans_sum_noise", type=float, default=None,
                                help="sigma of the Gaussian noise on dp_kmeans sums" + CALIBRATED)
        clustering.add_argument("--kmeans_count_noise", type=float, default=None,
                                help="sigma of the Gaussian noise on dp_kmeans counts"
                                     + CALIBRATED)

        privacy = parser.add_argument_group("privacy")
        privacy.add_argument("--delta", type=float, default=1e-6, help="delta of (epsilon, delta)")
        privacy.add_argument("--target_epsilon", type=float, default=None,
                             help="the formal epsilon the run must meet: the clip and the "
                                  "noise you do not set are calibrated to it, and a run whose "
                                  "settings cost more is refused before reading data; without "
                                  "it they are calibrated to epsilon 10")
        privacy.add_argument("--budget_split", default=None,
                             help="shares of the target for the stages before the last one, "
                                  "e.g. clustering=0.1,kmeans=0.2,embeddings=0.2,record_cap=0.02 "
                                  "(the defaults); the last stage (generation, Private "
                                  "Evolution's votes, or the embeddings alone) gets what is left")
        privacy.add_argument("--budget_ledger", default=None,
                             help="JSON file (local or gs://) recording the formal cost of every "
                                  "run per --privacy_unit_domain; a run that would pass "
                                  "--lifetime_epsilon is refused before it starts")
        privacy.add_argument("--lifetime_epsilon", type=float, default=None,
                             help="lifetime epsilon of the privacy-unit domain, all recorded "
                                  "runs composed (needs --budget_ledger)")
        privacy.add_argument("--privacy_unit_domain", default=None,
                             help="name of the set of people (or units) the input covers, e.g. "
                                  "customers-eu; runs over the same domain share its lifetime "
                                  "budget (needs --budget_ledger)")
        privacy.add_argument("--run_secret", default=None,
                             help="key of all noise, sampling and hashing (at least 32 hex "
                                  "digits); default: fresh from the OS. Set it only for "
                                  "reproducible tests: whoever knows it can reproduce the noise")

        runner = parser.add_argument_group("runner")
        runner.add_argument("--dask_address", default=None,
                            help="with --runner dask: the Dask scheduler, tcp://HOST:PORT; "
                                 "default: a one-thread Dask cluster inside this process")

        models = parser.add_argument_group("models")
        models.add_argument("--lm", default=registry.DEFAULT_LM,
                            help=f"LM: {', '.join(registry.KNOWN_LMS)} or a keras-hub preset directory")
        models.add_argument("--encoder", default=registry.DEFAULT_ENCODER,
                            help="sentence encoder: minilm-l6 or a keras-hub preset directory")
        models.add_argument("--encoder_sequence_length", type=int, default=128,
                            help="tokens the encoder reads per text")
        models.add_argument("--generation_batches_per_call", type=int, default=8,
                            help="DP batches advanced together by one model call per step")


def option_actions():
    """(group title, argparse action) for every dpsynth option, in --help order: what the
    Dataflow template's metadata and flag handling are generated from."""
    parser = argparse.ArgumentParser(add_help=False)
    DpSynthOptions._add_argparse_args(parser)
    for group in parser._action_groups:
        for action in group._group_actions:
            yield group.title, action
