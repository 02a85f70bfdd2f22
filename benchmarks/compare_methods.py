"""Quality against epsilon, every method side by side, on the Yelp sample.

    .venv/bin/python benchmarks/compare_methods.py            # documented default
    .venv/bin/python benchmarks/compare_methods.py --help

The Yelp CSV is shuffled with a fixed seed and split: the first
--private_records rows are the private input of every run, the next
--real_records rows are the real held-out set that MAUVE and the downstream
classifiers are measured against. Every method runs the real job
(`beam_pipeline.run.run`) on the same private part with the same LM, prompt,
batch size, temperature, top-k and token budget; the mean-based rules are
calibrated to each formal epsilon of --epsilons, the median rows report their
ex-post epsilon beside their data-independent bound, and the non-private row
samples one continuation per seed prompt with the same LM (epsilon = infinity).

Every row is scored by MAUVE in two feature spaces: the run's --encoder (the one
Private Evolution votes with) and --feature_encoder (by default Gemma 3 270M's
mean-pooled last hidden state, which no method uses), each beside its
real-vs-real reference at the same sample size; and by category accuracy and
balanced accuracy of a classifier trained on the synthetic records.

--seeds runs every requested row once per seed; a seed fixes the data shuffle
(so the private part and the held-out part), the run secret and every sampling
draw. The table shows the mean and standard deviation over the seeds of a row.
A long grid runs in parts: each part names its --methods, --epsilons and
--seeds, and --keep_rows_from merges the rows of earlier parts.

Writes <output>/compare.json (every row with its privacy report summary and
evaluation), <output>/compare.png (MAUVE in both spaces and balanced accuracy
against epsilon, with the seeds' standard deviation as error bars) and prints
one table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beam_pipeline.demo import DEFAULT_INPUT, YELP_CATEGORIES, YELP_TEMPLATE  # noqa: E402

LABEL_COLUMN, STARS_COLUMN = "label1", "label2"
CATEGORY_LABELS = tuple(f"Business Category: {c}" for c in YELP_CATEGORIES)
STARS_LABELS = tuple(f"Review Stars: {n}.0" for n in range(1, 6))
# --labels category_stars: one label per (category, stars) pair, in the prompt and in the
# clustering, split again for the two classifiers.
COMBINED_COLUMN, COMBINED_SEPARATOR = "category_and_stars", " | "
BATCH_SIZE, TEMPERATURE, TOP_K, MEDIAN_CLIP = 8, 1.0, 50, 6.0
# Noise on the clustering counts per target epsilon: about a tenth of the budget.
HISTOGRAM_NOISE = {1.0: 8.0, 3.0: 4.0, 10.0: 2.0}
PTR_BOUND_RATIO = 2.0          # b = 2 c / s
PTR_SVT_SHARE = 0.25           # the stability test's epsilon, as a share of the target
# Private Evolution: T rounds over a population of M texts; the vote threshold is one
# noise standard deviation, so a member needs votes to beat noise alone most of the time.
# M is n / s, as many texts as a logit-aggregation row writes, and at least PE_MIN_POPULATION
# so that every one of the 10 categories keeps members.
PE_ROUNDS, PE_MIN_POPULATION = 3, 32
REAL_LENGTHS = ("generation", "full")
# DP synthetic embeddings: one noise sigma for every release; dp_kmeans with K centres per
# label and R Lloyd rounds (uniform: one Gaussian per label, no k-means).
EMBEDDING_CLUSTERS, EMBEDDING_ROUNDS = 2, 2
# Private Evolution's levers (Aug-PE), one at a time and together: each variant is the base
# row's settings plus these job options. More rounds split the same budget over more votes.
PE_VARIANTS = {
    "private_evolution": {},
    "private_evolution+candidates4": {"--pe_candidates": "4"},
    "private_evolution+rounds6": {"--pe_rounds": "6"},
    "private_evolution+rephrase": {"--pe_variation": "rephrase"},
    "private_evolution+fill_in": {"--pe_variation": "fill_in"},
    "private_evolution+cool": {"--pe_variation_temperature": "0.7"},
    "private_evolution+rephrase_yelp": {
        "--pe_variation": "rephrase", "--pe_variation_template":
            "Yelp review ({label}):\n{text}\n\nThe same Yelp review in other words ({label}):\n"},
    "private_evolution+fill_in_yelp": {
        "--pe_variation": "fill_in", "--pe_variation_template":
            "Yelp review with blanks ({label}):\n{text}\n\n"
            "The same Yelp review with every blank filled in ({label}):\n"},
}
# Every lever at once: more candidates, more rounds, the cooler temperature and the best
# variation prompt other than the template (the Yelp rephrase).
PE_VARIANTS["private_evolution+all"] = {
    **PE_VARIANTS["private_evolution+candidates4"], **PE_VARIANTS["private_evolution+rounds6"],
    **PE_VARIANTS["private_evolution+cool"], **PE_VARIANTS["private_evolution+rephrase_yelp"]}
# The two levers that did not lower MAUVE alone at epsilon 1, stacked (8 times the CPU).
PE_VARIANTS["private_evolution+candidates4_rounds6"] = {
    **PE_VARIANTS["private_evolution+candidates4"], **PE_VARIANTS["private_evolution+rounds6"]}
METHODS = ("uniform+mean", "public_centers+mean", "public_centers+median",
           "dp_kmeans+median", "public_centers+median_ptr", *PE_VARIANTS,
           "uniform+embeddings", "dp_kmeans+embeddings", "public_prompt", "non_private")
CALIBRATED = ("+mean", "+median_ptr", *PE_VARIANTS, "+embeddings")
NOISE_CALIBRATED = (*PE_VARIANTS, "uniform+embeddings", "dp_kmeans+embeddings")
# The rows that compare the methods a user picks from; the embedding rows are on request.
DEFAULT_METHODS = ("uniform+mean", "public_centers+mean", "public_centers+median",
                   "public_centers+median_ptr", "private_evolution", "public_prompt",
                   "non_private")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.table_from:
        rows = _rows_of(Path(args.table_from))
        print(_table(rows))
        _plot(rows, Path(args.table_from).with_suffix(".png"))
        return 0
    if args.rescore_from:
        return _rescore(Path(args.rescore_from), Path(args.output), args.real_length)
    requested = args.methods.split(",")
    unknown = [method for method in requested if method not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
        epsilons = [float(epsilon) for epsilon in args.epsilons.split(",")]
    except ValueError as error:
        raise SystemExit(f"--seeds takes integers and --epsilons numbers: {error}") from None
    planned = [(method, target, seed) for seed in seeds for method in requested
               for target in (epsilons if method.endswith(CALIBRATED) else [None])]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    delta = args.delta or 1.0 / args.private_records ** 1.1
    feature_name = _feature_name(args)
    print(f"{len(planned)} runs: {args.private_records} private records and "
          f"{args.real_records} held-out a seed (seeds {args.seeds}); delta = {delta:.3g}; "
          f"lm {args.lm}, encoder {args.encoder}, second feature space {feature_name}")

    kept = []
    if args.keep_rows_from:
        keys = {(m, t, s) for m, t, s in planned}
        kept = [row for row in _rows_of(Path(args.keep_rows_from)) if _key(row) not in keys]
        print(f"kept {len(kept)} rows of {args.keep_rows_from}")

    encoders = _encoders(args.encoder, feature_name)
    rows = []
    for seed in seeds:
        private_path, real_rows = _split(args, output, seed)
        private_rows = _read_csv(private_path)
        references = _references(real_rows, args)
        for method, target, row_seed in planned:
            if row_seed != seed:
                continue
            row = _run_method(method, target, seed=seed, args=args, delta=delta, output=output,
                              private_path=private_path, private_rows=private_rows)
            row.update(_quality(row.pop("synthetic"), references, private_rows, *encoders,
                                seed=seed))
            rows.append(row)
            print(_format_row(row), flush=True)
            _write(output, args, delta, _in_method_order(kept + rows))
    rows = _in_method_order(kept + rows)

    print()
    print(_table(rows))
    _plot(rows, output / "compare.png")
    print(f"\nwrote {output / 'compare.json'} and {output / 'compare.png'}")
    return 0


def _rescore(path: Path, output: Path, real_length: str) -> int:
    saved = json.loads(path.read_text())
    args = argparse.Namespace(**{**vars(_parser().parse_args([])), **saved["settings"]})
    args.output, args.real_length = str(output), real_length
    output.mkdir(parents=True, exist_ok=True)
    rows = _rows_of(path)
    encoders = _encoders(args.encoder, _feature_name(args))
    rescored = []
    for seed in sorted({row["seed"] for row in rows}):
        private_path, real_rows = _split(args, output, seed)
        private_rows = _read_csv(private_path)
        references = _references(real_rows, args)
        for row in (r for r in rows if r["seed"] == seed):
            row = {**row, **_quality(_texts_of(row, args, private_rows), references,
                                     private_rows, *encoders, seed=seed)}
            rescored.append(row)
            print(_format_row(row), flush=True)
    rows = _in_method_order(rescored)
    _write(output, args, saved["settings"].get("delta"), rows)
    print()
    print(_table(rows))
    _plot(rows, output / "compare.png")
    return 0


def _feature_name(args) -> str | None:
    return None if args.feature_encoder in (None, "", "none") else args.feature_encoder


def _encoders(encoder_name: str, feature_name: str | None) -> tuple:
    """(the run's encoder, the second-space encoder or None, its name), each memoised."""
    from offline_models.loading import load_feature_encoder, load_sentence_encoder

    encoder = MemoisedEncoder(load_sentence_encoder(encoder_name, sequence_length=128))
    feature_encoder = (None if feature_name is None else
                       MemoisedEncoder(load_feature_encoder(feature_name, sequence_length=128)))
    return encoder, feature_encoder, feature_name


def _job_synthetic(method: str, out: Path):
    """What a job row released, read from its output folder: the synthetic embeddings of
    an embeddings row, else the synthetic records."""
    if method.endswith("+embeddings"):
        from transforms.release_embeddings import read_embeddings
        return read_embeddings(str(out / "synthetic_embeddings.npz"))
    from transforms.write import read_json_lines
    return read_json_lines(str(out), "synthetic")


def _texts_of(row, args, private_rows):
    """A row's synthetic records (or embeddings) from its kept output."""
    method = row["method"]
    out = Path(row["output"]) if row.get("output") else None
    if method not in ("non_private", "public_prompt"):
        return _job_synthetic(method, out)
    if out is not None and (out / "synthetic.jsonl").exists():
        return [json.loads(line) for line in
                (out / "synthetic.jsonl").read_text(encoding="utf-8").splitlines()]
    return (_non_private if method == "non_private" else _public_prompt)(
        args, private_rows, row["seed"])


class MemoisedEncoder:
    """An encoder that embeds each distinct text once: the held-out texts of a seed are
    scored against every row, and the second feature space is an LM forward pass."""

    def __init__(self, encoder):
        self._encoder = encoder
        self._vectors: dict[str, np.ndarray] = {}

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def embed(self, texts):
        texts = list(texts)
        missing = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if missing:
            for text, vector in zip(missing, np.asarray(self._encoder.embed(missing))):
                self._vectors[text] = vector
        if not texts:
            return np.asarray(self._encoder.embed([]))
        return np.stack([self._vectors[text] for text in texts])


def _key(row) -> tuple:
    return row["method"], row["epsilon_target"], row.get("seed", 0)


def _rows_of(path: Path) -> list[dict]:
    """The rows of an earlier compare.json, as `main` holds them."""
    saved = json.loads(path.read_text())
    rows = saved["rows"]
    for row in rows:
        row.setdefault("seed", saved.get("settings", {}).get("seed", 0))
        reference = (row.get("evaluation", {}).get("mauve", {}).get("real_vs_real") or {})
        row.setdefault("mauve_real_vs_real", reference.get("score"))
        if row["epsilon_formal"] == "inf":
            row["epsilon_formal"] = math.inf
    return rows


def _in_method_order(rows: list[dict]) -> list[dict]:
    def position(row):
        method = row["method"]
        return (METHODS.index(method) if method in METHODS else len(METHODS),
                row["epsilon_target"] or 0, row.get("seed", 0))
    return sorted(rows, key=position)


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_INPUT), help="the Yelp CSV")
    parser.add_argument("--private_records", type=int, default=1800,
                        help="private input of every run; n / s of them is the number of "
                             "texts a row writes (225 at the default)")
    parser.add_argument("--real_records", type=int, default=600,
                        help="held-out real reviews: MAUVE's reference (at least twice the "
                             "texts of a row, for the real-vs-real score) and the test set")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_chars", type=int, default=500,
                        help="longest seed text in a prompt (longer ones are truncated)")
    parser.add_argument("--epsilons", default="1,3,10")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--delta", type=float, default=None,
                        help="default 1 / n^1.1 for n private records")
    parser.add_argument("--lm", default="smollm2-135m")
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--labels", choices=("category", "category_stars"), default="category",
                        help="what the prompt and the clustering see: the business category "
                             "(10 values), or category and stars together (50 values), so "
                             "that the synthetic records carry stars too")
    parser.add_argument("--feature_encoder", default="gemma3-270m",
                        help="MAUVE's second feature space, one no method uses ('none': skip)")
    parser.add_argument("--real_length", choices=REAL_LENGTHS, default="generation",
                        help="the held-out reviews that text rows are scored against: cut to "
                             "their first --max_new_tokens tokens of --lm, as long as a "
                             "synthetic text can be ('generation'), or whole ('full': then "
                             "MAUVE mostly measures that real reviews are 4-5 times longer)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated; each seed reruns every row on its own shuffle, "
                             "run secret and sampling draws")
    parser.add_argument("--output", default=str(REPO / "results"))
    parser.add_argument("--embeddings_samples", type=int, default=None,
                        help="synthetic embeddings drawn by the embedding methods (default "
                             "n / s, as many as the text methods write; more cost no privacy)")
    parser.add_argument("--keep_rows_from", default=None,
                        help="an earlier compare.json: its rows of methods not in --methods "
                             "join this run's table (same split and settings assumed)")
    parser.add_argument("--rescore_from", default=None,
                        help="an earlier compare.json: score its rows again with the current "
                             "evaluation (same split, settings and texts; nothing is "
                             "generated again but the public-prompt and non-private texts "
                             "that older runs did not keep, which their keyed draws "
                             "reproduce) and write them to --output")
    parser.add_argument("--table_from", default=None,
                        help="print the table and redraw the plot of an earlier compare.json")
    return parser


# ----------------------------------------------------------------- data split


def _read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _split(args, output: Path, seed: int):
    rows = _read_csv(args.data)
    random.Random(seed).shuffle(rows)
    needed = args.private_records + args.real_records
    if len(rows) < needed:
        raise SystemExit(f"{args.data} has {len(rows)} rows; the split needs {needed}")
    private, real = rows[:args.private_records], rows[args.private_records:needed]
    for row in private:
        row[COMBINED_COLUMN] = _combined(row)
    private_path = output / f"seed{seed}" / "compare_private.csv"
    private_path.parent.mkdir(parents=True, exist_ok=True)
    with open(private_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(private[0]))
        writer.writeheader()
        writer.writerows(private)
    return private_path, real


# -------------------------------------------------------------------- methods


def _combined(row) -> str:
    return f"{row[LABEL_COLUMN]}{COMBINED_SEPARATOR}{row[STARS_COLUMN]}"


def _label_column(args) -> str:
    return COMBINED_COLUMN if args.labels == "category_stars" else LABEL_COLUMN


def _label_values(args) -> tuple:
    if args.labels == "category_stars":
        return tuple(f"{c}{COMBINED_SEPARATOR}{s}" for c in CATEGORY_LABELS for s in STARS_LABELS)
    return CATEGORY_LABELS


def with_split_labels(synthetic: list[dict]) -> list[dict]:
    """Synthetic records with a combined label also carry its two parts, under the real
    records' columns, so that both classifiers train on them."""
    split = []
    for record in synthetic:
        label = record.get("label")
        if isinstance(label, str) and COMBINED_SEPARATOR in label:
            category, stars = label.split(COMBINED_SEPARATOR, 1)
            record = {**record, LABEL_COLUMN: category, STARS_COLUMN: stars}
        split.append(record)
    return split


def _common_arguments(args, private_path, out, delta, seed):
    return ["--input", str(private_path), "--output", str(out), "--text_column", "text",
            "--label_column", _label_column(args), "--label_values",
            ",".join(_label_values(args)),
            "--prompt_template", YELP_TEMPLATE, "--batch_size", str(BATCH_SIZE),
            "--temperature", str(TEMPERATURE), "--top_k", str(TOP_K),
            "--max_new_tokens", str(args.max_new_tokens), "--max_chars", str(args.max_chars),
            "--public_corpus_size", "40", "--public_centers", "8", "--kept_centers", "4",
            "--delta", repr(delta), "--run_secret", f"{seed:08x}{'c0ffee' * 4}",
            "--lm", args.lm, "--encoder", args.encoder,
            "--generation_batches_per_call", "8"]


def _method_arguments(method, target, args, delta):
    """(pipeline arguments of the method, the clip or noise it uses) at a target epsilon."""
    from mechanisms import accounting

    if method in PE_VARIANTS:
        lever = {"--pe_rounds": str(PE_ROUNDS), **PE_VARIANTS[method]}
        sigma = accounting.calibrate_gaussian_noise(target_epsilon=target, delta=delta,
                                                    releases=int(lever["--pe_rounds"]))
        population = max(PE_MIN_POPULATION, _texts_of_a_run(args.private_records))
        lever.update({"--pe_population": str(population), "--pe_vote_noise": repr(sigma),
                      "--pe_vote_threshold": repr(sigma), "--target_epsilon": repr(target)})
        return ["--method", "private_evolution",
                *(item for pair in lever.items() for item in pair)], sigma
    clustering, aggregator = method.split("+")
    if aggregator == "embeddings":
        kmeans = clustering == "dp_kmeans"
        releases = 3 + (2 * EMBEDDING_ROUNDS if kmeans else 0)
        sigma = accounting.calibrate_gaussian_noise(target_epsilon=target, delta=delta,
                                                    releases=releases)
        # By default as many embeddings as the text methods write texts (n / s): MAUVE and
        # the classifiers then see equal sample sizes.
        samples = args.embeddings_samples or _texts_of_a_run(args.private_records)
        arguments = ["--method", "none", "--output_embeddings", "--clustering", clustering,
                     "--embeddings_samples", str(samples),
                     "--embeddings_count_noise", repr(sigma), "--embeddings_sum_noise",
                     repr(sigma), "--target_epsilon", repr(target)]
        if kmeans:
            arguments += ["--kmeans_clusters", str(EMBEDDING_CLUSTERS), "--kmeans_rounds",
                          str(EMBEDDING_ROUNDS), "--kmeans_sum_noise", repr(sigma),
                          "--kmeans_count_noise", repr(sigma)]
        return arguments, sigma
    arguments = ["--clustering", clustering, "--aggregator", aggregator]
    if aggregator == "median":
        return arguments + ["--clip", str(MEDIAN_CLIP), "--histogram_noise", "2"], MEDIAN_CLIP
    noise = HISTOGRAM_NOISE.get(target, 4.0)
    arguments += ["--histogram_noise", str(noise), "--target_epsilon", repr(target)]
    common = dict(target_epsilon=target, delta=delta, expected_batch_size=BATCH_SIZE,
                  temperature=TEMPERATURE, max_private_tokens=args.max_new_tokens,
                  gaussian_noise_multipliers=[noise])
    if aggregator == "mean":
        clip = accounting.calibrate_mean_clip(**common)
        return arguments + ["--clip", repr(clip)], clip
    svt_epsilon = PTR_SVT_SHARE * target
    clip = accounting.calibrate_median_ptr_clip(**common, bound_ratio=PTR_BOUND_RATIO,
                                                svt_epsilon=svt_epsilon)
    bound = PTR_BOUND_RATIO * clip / BATCH_SIZE
    return arguments + ["--clip", repr(clip), "--ptr_bound", repr(bound),
                        "--ptr_svt_epsilon", repr(svt_epsilon)], clip


def _run_method(method, target, *, seed, args, delta, output, private_path,
                private_rows) -> dict:
    name = method if target is None else f"{method}@{target:g}"
    out = output / "compare" / f"seed{seed}" / name.replace("+", "_").replace("@", "_eps")
    started = time.time()
    if method in ("non_private", "public_prompt"):
        synthetic = (_non_private if method == "non_private" else _public_prompt)(
            args, private_rows, seed)
        wall = time.time() - started
        # Kept like a job's output, so that the row can be scored again later.
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "synthetic.jsonl", "w", encoding="utf-8") as handle:
            for record in synthetic:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return {"method": method, "epsilon_target": None, "seed": seed,
                "epsilon_formal": math.inf if method == "non_private" else 0.0,
                "epsilon_ex_post_max": None, "synthetic": synthetic,
                "synthetic_count": len(synthetic), "wall_seconds": wall, "clip": None,
                "output": str(out)}
    from beam_pipeline.run import run

    method_arguments, clip = _method_arguments(method, target, args, delta)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    run(_common_arguments(args, private_path, out, delta, seed) + method_arguments,
        say=lambda line: print(f"  {line}", flush=True))
    wall = time.time() - started
    report = json.loads((out / "privacy_report.json").read_text())
    synthetic = _job_synthetic(method, out)
    ex_post = report["ex_post"].get("generation")
    tokens = report["tokens"].get("generation", {})
    return {"method": method, "epsilon_target": target, "seed": seed,
            "epsilon_formal": report["formal_epsilon"],
            "epsilon_ex_post_max": ex_post["total_epsilon"]["max"] if ex_post else None,
            "epsilon_ex_post_median": ex_post["total_epsilon"]["p50"] if ex_post else None,
            "median_tokens": tokens.get("median_tokens"), "tokens": tokens.get("tokens"),
            "synthetic": synthetic,
            "synthetic_count": len(synthetic[0] if isinstance(synthetic, tuple) else synthetic),
            "wall_seconds": wall,
            ("noise_multiplier" if method in NOISE_CALIBRATED else "clip"): clip,
            "output": str(out)}


def sample_own_prompt(key: str, *, secret: str):
    """Non-private sampling: the next token from the request's one prompt, with the same
    top-k and temperature as the private runs."""
    from transforms.prompt_sampling import PublicSamplingChooser

    return PublicSamplingChooser(temperature=TEMPERATURE, secret=secret, sample_id=key,
                                 top_k=TOP_K)


def _texts_of_a_run(private_records: int) -> int:
    """n / s: about as many texts as a logit-aggregation run writes (one per batch)."""
    return max(1, private_records // BATCH_SIZE)


def _non_private(args, private_rows, seed) -> list[dict]:
    """One sampled continuation per seed prompt, for as many seeds as a private run has
    batches (n / s): the same LM, template, temperature and top-k, no aggregation."""
    rng = random.Random(seed)
    seeds = rng.sample(private_rows, _texts_of_a_run(len(private_rows)))
    return _sample(args, [(row["text"][:args.max_chars], row[_label_column(args)])
                          for row in seeds], secret=f"non-private-{seed}")


def _public_prompt(args, private_rows, seed) -> list[dict]:
    """As many texts from the public prompt (the template with empty text) alone, the
    categories in turn: what every private method gets for free (epsilon 0)."""
    count = _texts_of_a_run(len(private_rows))
    labels = _label_values(args)
    return _sample(args, [("", labels[i % len(labels)]) for i in range(count)],
                   secret=f"public-prompt-{seed}")


def _sample(args, texts_and_labels, *, secret) -> list[dict]:
    from offline_models.joint_decoding import GenerationRequest, generate_jointly
    from offline_models.loading import load_causal_lm
    from transforms.generate import render_prompt

    lm = load_causal_lm(args.lm)
    requests = [GenerationRequest(
        key=index, prompts=[render_prompt(YELP_TEMPLATE, text, label)],
        chooser=sample_own_prompt(str(index), secret=secret),
        max_new_tokens=args.max_new_tokens,
        stop_text="\n\n") for index, (text, label) in enumerate(texts_and_labels)]
    synthetic = []
    for start in range(0, len(requests), 8):
        for result in generate_jointly(lm, requests[start:start + 8]):
            text = result.text.split("\n\n")[0]
            synthetic.append({"text": text, "label": texts_and_labels[result.key][1]})
    return synthetic


# -------------------------------------------------------------------- quality


def _references(real_rows, args) -> dict:
    """The held-out reviews as text rows are scored against them ("text": cut per
    --real_length) and as embedding rows are ("embeddings": whole, like the private records
    whose embeddings those rows average)."""
    if args.real_length == "full":
        return {"text": real_rows, "embeddings": real_rows}
    from offline_models.loading import load_causal_lm

    lm = load_causal_lm(args.lm)
    start = len(lm.encode(""))
    cut = []
    for row, tokens in zip(real_rows, lm.encode_batch([r["text"] for r in real_rows])):
        # Token for token what the LM could have written: a synthetic text stops at the
        # same budget, mid-word too.
        cut.append({**row, "text": lm.decode(tokens[start:start + args.max_new_tokens])})
    return {"text": cut, "embeddings": real_rows}


def _quality(synthetic, references, private_rows, encoder, feature_encoder, feature_name, *,
             seed) -> dict:
    from evaluation.embeddings import evaluate_embeddings
    from evaluation.evaluate import evaluate

    common = dict(label_columns=[LABEL_COLUMN, STARS_COLUMN], synthetic_label_column=LABEL_COLUMN,
                  encoder=encoder, seed=seed, private_records=private_rows)
    if isinstance(synthetic, tuple):  # (vectors, labels): synthetic embeddings
        vectors, labels = synthetic
        if not len(vectors):
            return {"mauve": None, "category_accuracy": None, "stars_accuracy": None,
                    "evaluation": {"reason": "no synthetic embedding"}}
        # Feature-level: there is no text to embed in a second space.
        result = evaluate_embeddings(vectors, labels, references["embeddings"], **common)
    else:
        usable = with_split_labels([r for r in synthetic if r["text"].strip()])
        if not usable:
            return {"mauve": None, "category_accuracy": None, "stars_accuracy": None,
                    "evaluation": {"reason": "no non-empty synthetic text"}}
        result = evaluate(usable, references["text"], **common, feature_encoder=feature_encoder,
                          feature_encoder_name=feature_name)
    downstream = result["downstream"]
    second = result.get("mauve_feature_encoder") or {}
    category = downstream[LABEL_COLUMN]
    return {
        "mauve": result["mauve"].get("score"),
        "mauve_real_vs_real": (result["mauve"].get("real_vs_real") or {}).get("score"),
        "mauve_2": second.get("score"),
        "mauve_2_real_vs_real": (second.get("real_vs_real") or {}).get("score"),
        "feature_encoder": second.get("encoder"),
        "category_accuracy": category["trained_on_synthetic"].get("accuracy"),
        "category_balanced_accuracy": category["trained_on_synthetic"].get("balanced_accuracy"),
        "category_accuracy_real": category["trained_on_real"].get("accuracy"),
        "category_balanced_accuracy_real": category["trained_on_real"].get("balanced_accuracy"),
        "category_majority_share": category.get("majority_class_accuracy"),
        "stars_accuracy": downstream[STARS_COLUMN]["trained_on_synthetic"].get("accuracy"),
        "stars_balanced_accuracy": downstream[STARS_COLUMN]["trained_on_synthetic"].get(
            "balanced_accuracy"),
        "stars_accuracy_real": downstream[STARS_COLUMN]["trained_on_real"].get("accuracy"),
        "copied_8gram_fraction": result["memorisation"].get("copied_fraction"),
        "mauve_sample_size": result["mauve"].get("sample_size"),
        "evaluation": result,
    }


# --------------------------------------------------------------------- output


# (header, width, the row's field; None: computed in _cells)
COLUMNS = (("method", 30, None), ("eps formal", 10, "epsilon_formal"),
           ("eps ex-post", 11, "epsilon_ex_post_max"), ("seeds", 5, None),
           ("MAUVE", 11, "mauve"), ("real/real", 11, "mauve_real_vs_real"),
           ("MAUVE 2", 11, "mauve_2"), ("real/real 2", 11, "mauve_2_real_vs_real"),
           ("cat acc", 11, "category_accuracy"),
           ("cat bal acc", 11, "category_balanced_accuracy"),
           ("stars bal acc", 13, "stars_balanced_accuracy"),
           ("synth", 5, "synthetic_count"), ("wall s", 6, "wall_seconds"))


def _number(value, digits=3):
    if value is None:
        return "-"
    if value == "inf" or (isinstance(value, float) and math.isinf(value)):
        return "inf"
    return f"{value:.{digits}g}"


def _spread(values) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of the values that are numbers; sd None for one."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not math.isinf(v)]
    if not numbers:
        return None, None
    return (statistics.fmean(numbers),
            statistics.stdev(numbers) if len(numbers) > 1 else None)


def _groups(rows) -> list[list[dict]]:
    """The rows of one method and target epsilon together (one row per seed), in row order."""
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["method"], row["epsilon_target"]), []).append(row)
    return list(grouped.values())


def _cells(group):
    first = group[0]
    method = first["method"] + (f" @{first['epsilon_target']:g}"
                                if first["epsilon_target"] else "")
    cells = []
    for header, _, field in COLUMNS:
        if header == "method":
            cells.append(method)
        elif header == "seeds":
            cells.append(str(len(group)))
        elif field == "epsilon_formal" and any(
                isinstance(r[field], str) or math.isinf(r[field]) for r in group):
            cells.append(_number(first[field]))
        elif field in ("synthetic_count", "wall_seconds"):
            mean, _ = _spread([r.get(field) for r in group])
            cells.append("-" if mean is None else f"{mean:.0f}")
        else:
            mean, sd = _spread([r.get(field) for r in group])
            constant = sd is not None and sd < 1e-9 and field == "epsilon_formal"
            cells.append(_number(mean) + ("" if sd is None or constant else f"±{sd:.2f}"))
    return cells


def _format_row(row_or_group) -> str:
    group = row_or_group if isinstance(row_or_group, list) else [row_or_group]
    return " | ".join(cell.ljust(width) for cell, (_, width, _) in zip(_cells(group), COLUMNS))


def _table(rows) -> str:
    header = " | ".join(name.ljust(width) for name, width, _ in COLUMNS)
    rule = "-+-".join("-" * width for _, width, _ in COLUMNS)
    return "\n".join([header, rule] + [_format_row(group) for group in _groups(rows)])


def _write(output: Path, args, delta, rows) -> None:
    def clean(value):
        if isinstance(value, float) and math.isinf(value):
            return "inf"
        return value

    payload = {"settings": {**vars(args), "delta": delta, "batch_size": BATCH_SIZE,
                            "temperature": TEMPERATURE, "top_k": TOP_K,
                            "median_clip": MEDIAN_CLIP, "histogram_noise": HISTOGRAM_NOISE,
                            "ptr_bound_ratio": PTR_BOUND_RATIO,
                            "ptr_svt_share": PTR_SVT_SHARE},
               "rows": [{k: clean(v) for k, v in row.items()} for row in rows]}
    (output / "compare.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _plotted_epsilon(row) -> float:
    """Where a row sits on the plot's epsilon axis: calibrated rows at their target (their
    formal epsilon is within a percent of it, and rows of one target share one tick), the
    others at their formal epsilon."""
    formal = row["epsilon_formal"]
    return float(row["epsilon_target"] or (math.inf if formal == "inf" else formal))


def _plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    second = next((r.get("feature_encoder") for r in rows if r.get("feature_encoder")), None)
    panels = [("mauve", "MAUVE, run's encoder (higher is better)"),
              ("mauve_2", f"MAUVE, {second or 'second space'} (no method uses it)"),
              ("category_balanced_accuracy", "category balanced accuracy, trained on synthetic")]
    figure, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    groups = _groups(rows)
    # Ticks at the epsilons that ran, not the log axis's own: with every row at one
    # epsilon its own ticks repeat one label.
    ticks = sorted({_plotted_epsilon(r) for r in rows
                    if r["method"] not in ("non_private", "public_prompt")
                    and isinstance(r["epsilon_formal"], (int, float))})
    for (metric, title), axis in zip(panels, axes):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = []
            for group in groups:
                if group[0]["method"] != method:
                    continue
                mean, sd = _spread([r.get(metric) for r in group])
                if mean is not None:
                    points.append((_plotted_epsilon(group[0]), mean, sd or 0.0,
                                   _spread([r.get("epsilon_ex_post_max") for r in group])[0]))
            if not points:
                continue
            if method in ("non_private", "public_prompt"):
                value, sd = points[0][1], points[0][2]
                style = "--" if method == "non_private" else ":"
                axis.axhline(value, linestyle=style, color="grey",
                             label=method.replace("_", "-") + (
                                 " (epsilon 0)" if method == "public_prompt" else ""))
                if sd:
                    axis.axhspan(value - sd, value + sd, color="grey", alpha=0.12)
                continue
            points.sort()
            marker = "s" if method.endswith("+median") else "o"
            embeddings = method.endswith("+embeddings")
            container = axis.errorbar(
                [p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                marker=marker, capsize=3, linestyle=":" if embeddings else "-",
                label=method + (" (formal bound)" if method.endswith("+median")
                                else " (embeddings, feature-level)" if embeddings else ""))
            ex_post = [(p[3], p[1]) for p in points if p[3]]
            if ex_post:
                axis.plot([p[0] for p in ex_post], [p[1] for p in ex_post], marker="s",
                          linestyle="none", markerfacecolor="none",
                          color=container.lines[0].get_color(),
                          label=f"{method} (ex-post max, not formal)")
        axis.set_xscale("log")
        if ticks:
            axis.set_xticks(ticks, [f"{value:.3g}" for value in ticks])
            axis.minorticks_off()
        axis.set_xlabel("epsilon (formal, at the target; hollow squares: ex-post, not formal)")
        axis.set_title(title, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    bottom = 0.0
    if handles:  # below the plots, where it hides no point
        figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
        bottom = 0.05 + 0.035 * math.ceil(len(handles) / 4)
    figure.tight_layout(rect=(0, bottom, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
