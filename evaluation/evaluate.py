"""`evaluate`: every quality figure of a synthetic dataset against real (and private) records.

Callable in-process with an already-loaded encoder; the `dpsynth evaluate` command reads the
files and writes the report around it.

Records are texts, or dicts with a "text" field and label fields:
- a real or private dict holds each label column under its own name;
- a synthetic dict may do the same, or carry one "label" field (what `dpsynth run` writes:
  {"text", "label", "cluster"}), which holds the column named by `synthetic_label_column`
  (default: the first label column).

`evaluate_files` also takes a synthetic embeddings file instead of records; evaluation/embeddings.py
evaluates it with the same split rules.

Downstream split: the classifier is tested on real records that no classifier was trained on.
- With private records, the test set is all of `real_records` (a held-out set) and the
  real-data baseline is trained on a sample of the private records as large as the
  synthetic training set.
- Without them, `real_records` is shuffled with the seed and split in two disjoint parts:
  the first min(#synthetic, #real // 2) records are the baseline's training pool, the rest
  is the test set.
For each label column, only records that carry that label are used; the baseline takes as
many pool records as the synthetic side has labelled records (all of the pool when the
synthetic records carry no such label).
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Iterable, Sequence

import numpy as np

from evaluation import memorisation as memorisation_lib
from evaluation import metrics
from evaluation.report import PRIVACY_REPORT

# Texts per encoder call made here: the encoder splits them further (64 per model call);
# each chunk ends with a progress line.
_EMBED_CHUNK = 512
# Synthetic texts quoted in the report, drawn with the seed: enough to see what the data reads
# like, few enough to read.
SAMPLE_TEXTS = 5


def evaluate(synthetic_records: Iterable, real_records: Iterable, *,
             label_columns: Sequence[str] = (), encoder, seed: int = 0,
             private_records: Iterable | None = None,
             synthetic_label_column: str | None = None,
             copy_ngram: int = memorisation_lib.COPY_NGRAM,
             mauve_buckets: int | None = None,
             feature_encoder=None, feature_encoder_name: str | None = None,
             say: Callable[[str], None] | None = None) -> dict:
    """The evaluation as a JSON-ready dict (see the module docstring for the inputs).

    `encoder` is anything with `embed(texts) -> (n, d) float array` (a SentenceEncoder).
    `feature_encoder`, of the same kind, adds MAUVE in a second feature space
    ("mauve_feature_encoder"), named `feature_encoder_name`.
    """
    say = say or (lambda line: None)
    label_columns, synthetic_label_column = label_columns_of(label_columns,
                                                             synthetic_label_column)
    synthetic = _normalise(synthetic_records, label_columns, synthetic_label_column)
    real = _normalise(real_records, label_columns, None)
    private = None if private_records is None else _normalise(private_records, label_columns, None)
    if not synthetic:
        raise ValueError("no synthetic records")
    if not real:
        raise ValueError("no real records")

    pool_rows, test_rows, split = downstream_split(
        len(real), None if private is None else len(private), len(synthetic), seed)
    pool = [(real if private is None else private)[i] for i in pool_rows]
    test = [real[i] for i in test_rows]

    synthetic_vectors = _embed(encoder, [r["text"] for r in synthetic], "synthetic", say)
    real_vectors = _embed(encoder, [r["text"] for r in real], "real", say)
    if private is not None:
        pool_vectors = _embed(encoder, [r["text"] for r in pool], "private (baseline sample)", say)
    else:
        pool_vectors = real_vectors[pool_rows]
    test_vectors = real_vectors[test_rows]

    say(f"MAUVE on {min(len(synthetic), len(real))} texts a side")
    mauve = metrics.mauve_score(synthetic_vectors, real_vectors, seed=seed,
                                num_buckets=mauve_buckets)
    mauve["features"] = f"sentence encoder, {real_vectors.shape[1]} dimensions, unit norm"
    mauve["real_vs_real"] = _real_reference(real_vectors, mauve["sample_size"], seed=seed,
                                            num_buckets=mauve_buckets)

    second_space = None
    if feature_encoder is not None:
        second_space = second_space_mauve(
            feature_encoder, feature_encoder_name, [r["text"] for r in synthetic],
            [r["text"] for r in real], seed=seed, num_buckets=mauve_buckets, say=say)

    downstream, labels = per_label_column_figures(
        label_columns, synthetic, synthetic_vectors, real, pool, pool_vectors, test,
        test_vectors, seed=seed, baseline_source="private" if private is not None else "real",
        say=say)

    if private is not None:
        say(f"memorisation check against {len(private)} private records")
        copying = memorisation_lib.memorisation([r["text"] for r in synthetic],
                                                [r["text"] for r in private], n=copy_ngram)
        copying["copied_sources"] = [synthetic[i]["source"] for i in copying["copied_indices"]]
        longest = copying["longest_shared_ngram"]
        if "synthetic_index" in longest:
            longest["synthetic_source"] = synthetic[longest["synthetic_index"]]["source"]
            longest["private_source"] = private[longest["private_index"]]["source"]
    else:
        copying = {"computed": False, "reason": "no private records given"}

    return {
        "sizes": {"synthetic": len(synthetic), "real": len(real),
                  "private": None if private is None else len(private),
                  "test": len(test), "baseline_pool": len(pool)},
        "settings": {"seed": seed, "label_columns": label_columns,
                     "synthetic_label_column": synthetic_label_column, "copy_ngram": copy_ngram},
        "split": split,
        "mauve": mauve,
        **({"mauve_feature_encoder": second_space} if second_space is not None else {}),
        "downstream": downstream,
        "lengths": {"synthetic": metrics.length_stats([r["text"] for r in synthetic]),
                    "real": metrics.length_stats([r["text"] for r in real])},
        "labels": labels,
        "memorisation": copying,
        "samples": sample_texts(synthetic, synthetic_label_column, seed),
    }


def second_space_mauve(feature_encoder, name, synthetic_texts, real_texts, *, seed,
                       num_buckets=None, say=None) -> dict:
    """MAUVE and its real-vs-real reference in the feature encoder's space, on the same
    subsamples as the main space (same seed, same sizes), so the two spaces differ only in
    the features."""
    say = say or (lambda line: None)
    synthetic_vectors = _embed(feature_encoder, synthetic_texts, f"synthetic ({name})", say)
    real_vectors = _embed(feature_encoder, real_texts, f"real ({name})", say)
    say(f"MAUVE in the {name} feature space")
    mauve = metrics.mauve_score(synthetic_vectors, real_vectors, seed=seed,
                                num_buckets=num_buckets)
    mauve["encoder"] = name
    mauve["features"] = f"{name}, {real_vectors.shape[1]} dimensions, unit norm"
    mauve["real_vs_real"] = _real_reference(real_vectors, mauve["sample_size"], seed=seed,
                                            num_buckets=num_buckets)
    return mauve


def sample_texts(synthetic: list[dict], label_column: str | None, seed: int) -> list[dict]:
    """SAMPLE_TEXTS synthetic records drawn at random with the seed, in file order, so that the
    report shows typical texts rather than the best or the longest."""
    count = min(SAMPLE_TEXTS, len(synthetic))
    rows = sorted(np.random.default_rng([seed, 2]).choice(len(synthetic), count, replace=False))
    return [{"text": synthetic[i]["text"], "source": synthetic[i]["source"],
             "label": synthetic[i]["labels"].get(label_column) if label_column else None}
            for i in rows]


def run_privacy(synthetic_files: Sequence[str]) -> dict:
    """The formal guarantee of the run(s) that wrote the synthetic files, from the
    privacy_report.json each run leaves beside them: {"runs": [{"report", "formal_epsilon",
    "delta", "privacy_unit"}], "unreadable": [one line per report that could not be read]}."""
    runs, unreadable = [], []
    for folder in dict.fromkeys(os.path.dirname(path) for path in synthetic_files):
        path = os.path.join(folder, PRIVACY_REPORT)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                report = json.load(handle)
            runs.append({"report": path, "formal_epsilon": float(report["formal_epsilon"]),
                         "delta": float(report["delta"]),
                         "privacy_unit": report.get("privacy_unit")})
        except (OSError, ValueError, KeyError, TypeError) as error:
            unreadable.append(f"{path} could not be read ({type(error).__name__}: {error}); "
                              "the run's guarantee is not shown")
    return {"runs": runs, "unreadable": unreadable}


def downstream_split(real_count: int, private_count: int | None, synthetic_count: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(baseline pool rows, test rows of the real records, the split in words).

    The pool rows index the private records when there are some (`private_count` not None),
    else the real records, disjoint from the test rows (module docstring).
    """
    rng = np.random.default_rng(seed)
    if private_count is not None:
        order = rng.permutation(private_count)
        pool_rows = order[:min(synthetic_count, private_count)]
        return (pool_rows, np.arange(real_count),
                f"test: all {real_count} real records; real-data baseline: trained on a "
                f"sample of {len(pool_rows)} of the {private_count} private records")
    order = rng.permutation(real_count)
    pool_size = min(synthetic_count, real_count // 2)
    pool_rows, test_rows = order[:pool_size], order[pool_size:]
    return (pool_rows, test_rows,
            f"the {real_count} real records shuffled (seed {seed}) and split: {pool_size} "
            f"train the real-data baseline, the other {len(test_rows)} are the test set")


def _real_reference(real_vectors, sample_size, *, seed, num_buckets):
    """MAUVE between two disjoint random samples of the real records, as many texts a side as
    the synthetic comparison had when the real records suffice (else half of them): the
    score that data from the real distribution itself gets at this sample size."""
    size = min(sample_size, len(real_vectors) // 2)
    if size < metrics.MIN_MAUVE_SAMPLE:
        return {"score": None, "sample_size": size,
                "reason": f"needs at least {2 * metrics.MIN_MAUVE_SAMPLE} real records"}
    order = np.random.default_rng([seed, 1]).permutation(len(real_vectors))
    reference = metrics.mauve_score(real_vectors[order[:size]], real_vectors[order[size:2 * size]],
                                    seed=seed, num_buckets=num_buckets)
    return {key: reference[key] for key in ("score", "sample_size", "num_buckets")}


def label_columns_of(label_columns, synthetic_label_column):
    """(the label columns as a list, the one the synthetic side carries: by default the
    first); raises ValueError when that one is not among them."""
    label_columns = list(label_columns)
    if synthetic_label_column is None and label_columns:
        synthetic_label_column = label_columns[0]
    if synthetic_label_column is not None and synthetic_label_column not in label_columns:
        raise ValueError(f"synthetic_label_column {synthetic_label_column!r} is not one of the "
                         f"label columns {label_columns}")
    return label_columns, synthetic_label_column


def per_label_column_figures(label_columns, synthetic, synthetic_vectors, real, pool,
                             pool_vectors, test, test_vectors, *, seed, baseline_source, say):
    """(downstream accuracies, label distributions), each keyed by label column."""
    downstream, labels = {}, {}
    for column in label_columns:
        say(f"downstream classifier for {column!r}")
        downstream[column] = _downstream(column, synthetic, synthetic_vectors, pool, pool_vectors,
                                         test, test_vectors, seed=seed,
                                         baseline_source=baseline_source)
        synthetic_distribution = metrics.label_distribution(
            [r["labels"][column] for r in synthetic])
        real_distribution = metrics.label_distribution([r["labels"][column] for r in real])
        labels[column] = {
            "synthetic": synthetic_distribution, "real": real_distribution,
            "total_variation": metrics.total_variation(synthetic_distribution["shares"],
                                                       real_distribution["shares"])}
    return downstream, labels


def _downstream(column, synthetic, synthetic_vectors, pool, pool_vectors, test, test_vectors, *,
                seed, baseline_source):
    def labelled(records, vectors, limit=None):
        rows = [i for i, r in enumerate(records) if r["labels"][column] is not None]
        if limit is not None:
            rows = rows[:limit]
        labels = [records[i]["labels"][column] for i in rows]
        return vectors[np.asarray(rows, dtype=np.int64)], labels

    train_x, train_y = labelled(synthetic, synthetic_vectors)
    test_x, test_y = labelled(test, test_vectors)
    on_synthetic = metrics.downstream_accuracy(train_x, train_y, test_x, test_y, seed=seed)
    if not train_y:
        on_synthetic["reason"] = f"the synthetic records carry no {column!r} label"
    base_x, base_y = labelled(pool, pool_vectors, limit=len(train_y) or None)
    on_real = metrics.downstream_accuracy(base_x, base_y, test_x, test_y, seed=seed)
    on_real["trained_on"] = baseline_source
    majority, share = metrics.majority_class(test_y)
    return {"trained_on_synthetic": on_synthetic, "trained_on_real": on_real,
            "majority_class": majority, "majority_class_accuracy": share,
            "majority_class_balanced_accuracy": metrics.majority_balanced_accuracy(test_y),
            "test_size": len(test_y)}


def _embed(encoder, texts: list[str], name: str, say) -> np.ndarray:
    chunks = []
    for start in range(0, len(texts), _EMBED_CHUNK):
        chunks.append(np.asarray(encoder.embed(texts[start:start + _EMBED_CHUNK]),
                                 dtype=np.float32))
        say(f"embedding {name} texts: {min(start + _EMBED_CHUNK, len(texts))}/{len(texts)}")
    if not chunks:
        return np.zeros((0, getattr(encoder, "dimension", 1)), dtype=np.float32)
    return np.concatenate(chunks)


def _label_value(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _normalise(records: Iterable, label_columns: list[str], label_field_column: str | None
               ) -> list[dict]:
    """[{"text", "labels": {column: str | None}, "source"}] from texts or dicts."""
    normalised = []
    for number, record in enumerate(records):
        if isinstance(record, str):
            text, fields = record, {}
        elif isinstance(record, dict):
            text, fields = record.get("text"), record
        else:
            raise TypeError(f"a record must be a str or a dict, got {type(record).__name__}")
        if not isinstance(text, str):
            raise ValueError(f"record {number} has no text")
        labels = {}
        for column in label_columns:
            if column in fields:
                labels[column] = _label_value(fields[column])
            elif column == label_field_column and "label" in fields:
                labels[column] = _label_value(fields["label"])
            else:
                labels[column] = None
        normalised.append({"text": text, "labels": labels,
                           "source": fields.get("source", f"#{number}")})
    return normalised


def evaluate_files(*, synthetic: str | None = None, real: str, output: str,
                   private: str | None = None, synthetic_embeddings: str | None = None,
                   label_columns: Sequence[str] = (), synthetic_label_column: str | None = None,
                   text_column: str = "text", synthetic_text_column: str = "text",
                   encoder: str, encoder_sequence_length: int = 128, seed: int = 0,
                   feature_encoder: str | None = None, real_max_words: int | None = None,
                   say: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Reads the files, evaluates, writes the report into `output`: (result, {kind: path}).

    The synthetic side is either records (`synthetic`) or a synthetic embeddings file
    (`synthetic_embeddings`, .npz or .parquet, see evaluation/embeddings.py): exactly one.
    A user mistake in the inputs (missing or empty file, unknown column, wrong format) raises
    `data.InputError` before any model is loaded. `real_max_words` cuts every real text to
    its first words (the private records, read for copying, stay whole).
    """
    from evaluation import data, report

    say = say or (lambda line: None)
    if (synthetic is None) == (synthetic_embeddings is None):
        raise data.InputError("give exactly one of --synthetic and --synthetic_embeddings")
    label_columns = list(dict.fromkeys(label_columns))
    if seed < 0:
        raise data.InputError(f"--seed must be >= 0, got {seed}")
    if text_column in label_columns:
        raise data.InputError(f"{text_column!r} is the text column; it cannot be a label column")
    if synthetic_label_column is not None and synthetic_label_column not in label_columns:
        raise data.InputError(f"--synthetic_label_column {synthetic_label_column!r} must be one "
                              "of the --label_column names")
    if feature_encoder is not None:
        from offline_models.loading import TINY_ENCODER, TINY_LM, feature_encoder_names

        if feature_encoder not in feature_encoder_names() + [TINY_LM, TINY_ENCODER]:
            raise data.InputError(f"unknown --feature_encoder {feature_encoder!r}: use one of "
                                  f"{', '.join(feature_encoder_names())}")
        if feature_encoder == encoder:
            raise data.InputError(f"--feature_encoder {feature_encoder} is the --encoder: the "
                                  "second feature space must be another model")
    if synthetic_embeddings is not None:
        synthetic_file, synthetic_vectors = _read_embeddings_file(synthetic_embeddings)
    else:
        synthetic_file = data.read_records(
            synthetic, what="synthetic", text_column=synthetic_text_column,
            label_columns=label_columns, label_field="label", require_labels=False)
    if real_max_words is not None and real_max_words < 1:
        raise data.InputError(f"--real_max_words must be >= 1, got {real_max_words}")
    real_file = data.read_records(real, what="real", text_column=text_column,
                                  label_columns=label_columns)
    if real_max_words is not None:
        for record in real_file.records:
            record["text"] = first_words(record["text"], real_max_words)
    private_file = None
    if private is not None:
        private_file = data.read_records(private, what="private", text_column=text_column,
                                         label_columns=label_columns, require_labels=False)
    for part in (synthetic_file, real_file, private_file):
        if part is not None and part.rejected:
            say(f"{part.path}: unusable rows, counted in the report: "
                + "; ".join(f"{n} {reason}" for reason, n in part.rejected.items()))

    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise data.InputError(f"cannot create the report directory {output}: "
                              f"{error.strerror or error}") from None

    from offline_models.loading import load_sentence_encoder

    say(f"loading the encoder {encoder}")
    sentence_encoder = load_sentence_encoder(encoder, sequence_length=encoder_sequence_length)
    second_encoder = None
    if feature_encoder is not None:
        from offline_models.loading import load_feature_encoder
        from offline_models.registry import ModelNotPreparedError

        say(f"loading the feature encoder {feature_encoder}")
        try:
            second_encoder = load_feature_encoder(feature_encoder,
                                                  sequence_length=encoder_sequence_length)
        except ModelNotPreparedError as error:
            raise data.InputError(str(error)) from None
    private_records = None if private_file is None else private_file.records
    if synthetic_embeddings is not None:
        from evaluation.embeddings import evaluate_embeddings

        dimension = getattr(sentence_encoder, "dimension", synthetic_vectors.shape[1])
        if synthetic_vectors.shape[1] != dimension:
            raise data.InputError(
                f"the synthetic embeddings in {synthetic_embeddings} have "
                f"{synthetic_vectors.shape[1]} dimensions and the encoder {encoder} gives "
                f"{dimension}: pass the --encoder the run used")
        result = evaluate_embeddings(synthetic_vectors, synthetic_file.records,
                                     real_file.records,
                                     label_columns=label_columns, encoder=sentence_encoder,
                                     seed=seed, private_records=private_records,
                                     synthetic_label_column=synthetic_label_column, say=say)
        synthetic_texts = None
        if feature_encoder is not None:
            result["mauve_feature_encoder"] = {"encoder": feature_encoder, "score": None,
                                               "reason": "synthetic embeddings carry no text"}
    else:
        result = evaluate(synthetic_file.records, real_file.records, label_columns=label_columns,
                          encoder=sentence_encoder, seed=seed, private_records=private_records,
                          synthetic_label_column=synthetic_label_column,
                          feature_encoder=second_encoder, feature_encoder_name=feature_encoder,
                          say=say)
        result["settings"].update(synthetic_text_column=synthetic_text_column)
        synthetic_texts = [r["text"] for r in synthetic_file.records]
    result["settings"].update(encoder=encoder, encoder_sequence_length=encoder_sequence_length,
                              text_column=text_column, feature_encoder=feature_encoder,
                              real_max_words=real_max_words)
    result["privacy"] = run_privacy(synthetic_file.files)
    result = {"inputs": {"synthetic": synthetic_file.summary(), "real": real_file.summary(),
                         "private": None if private_file is None else private_file.summary()},
              **result}
    try:
        paths = report.write_report(result, output, synthetic_texts=synthetic_texts,
                                    real_texts=[r["text"] for r in real_file.records])
    except OSError as error:
        raise data.InputError(f"cannot write the report into {output}: "
                              f"{error.strerror or error}") from None
    return result, paths


def first_words(text: str, count: int) -> str:
    """`text` up to the end of its `count`-th whitespace-separated word."""
    words = list(re.finditer(r"\S+", text))
    return text if len(words) <= count else text[:words[count - 1].end()]


def _read_embeddings_file(path: str):
    """(a `data.LoadedFile` whose records are the embeddings' labels, the (N, D) vectors); a
    missing, unreadable or malformed file is a one-line `data.InputError`."""
    from evaluation import data
    from transforms import release_embeddings as synthetic_embeddings

    if os.path.isdir(path):
        raise data.InputError(f"the synthetic embeddings path {path} is a directory: name the "
                              "file")
    try:
        vectors, labels = synthetic_embeddings.read_embeddings(path)
    except synthetic_embeddings.EmbeddingsFileError as error:
        raise data.InputError(str(error)) from None
    if not len(vectors):
        raise data.InputError(f"the synthetic embeddings file {path} holds no embeddings")
    return data.LoadedFile(path=path, files=[path], records=labels, rejected={},
                           columns=["embedding", "label"]), vectors
