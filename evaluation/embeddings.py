"""Evaluating DP synthetic embeddings (a `dpsynth run --output_embeddings` file).

The synthetic side is vectors with labels, no text, so the figures are the ones that make
sense in embedding space:
- downstream accuracy: a classifier trained on the synthetic embeddings and tested on the
  real records' encoder embeddings, next to the real-data baseline and the majority class,
  with the same split rules as `evaluate` (evaluation/evaluate.py's module docstring);
- MAUVE computed directly between the synthetic embeddings and the real records' encoder
  embeddings. This is a feature-level figure: `evaluate` on synthetic TEXT embeds the texts
  first, so the two figures agree in scale only when the run and the evaluation used the
  same encoder;
- the label distribution against the real one.
Lengths and the memorisation check need texts and are not computed.

The embeddings' labels hold the `synthetic_label_column` (default: the first label column).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from evaluation import evaluate as evaluate_lib
from evaluation import metrics

NO_TEXT = "synthetic embeddings carry no text"


def evaluate_embeddings(vectors: np.ndarray, labels: Sequence[str | None],
                        real_records: Iterable, *, label_columns: Sequence[str] = (),
                        encoder, seed: int = 0, private_records: Iterable | None = None,
                        synthetic_label_column: str | None = None,
                        mauve_buckets: int | None = None,
                        say: Callable[[str], None] | None = None) -> dict:
    """The evaluation of synthetic embeddings as a JSON-ready dict, shaped as `evaluate`'s
    (without lengths; memorisation marked as not computed).

    `vectors` (N, D) must have the encoder's dimension D; `labels` one label (or None) per row.
    """
    say = say or (lambda line: None)
    label_columns, synthetic_label_column = evaluate_lib.label_columns_of(
        label_columns, synthetic_label_column)
    vectors = np.asarray(vectors, dtype=np.float32)
    labels = [evaluate_lib._label_value(label) for label in labels]
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise ValueError(f"need one label per embedding, got {vectors.shape} and "
                         f"{len(labels)} labels")
    if not len(vectors):
        raise ValueError("no synthetic embeddings")
    real = evaluate_lib._normalise(real_records, label_columns, None)
    private = (None if private_records is None
               else evaluate_lib._normalise(private_records, label_columns, None))
    if not real:
        raise ValueError("no real records")
    synthetic = [{"labels": {column: label if column == synthetic_label_column else None
                             for column in label_columns}} for label in labels]

    pool_rows, test_rows, split = evaluate_lib.downstream_split(
        len(real), None if private is None else len(private), len(synthetic), seed)
    pool = [(real if private is None else private)[i] for i in pool_rows]
    test = [real[i] for i in test_rows]

    real_vectors = evaluate_lib._embed(encoder, [r["text"] for r in real], "real", say)
    if real_vectors.shape[1] != vectors.shape[1]:
        raise ValueError(f"the synthetic embeddings have {vectors.shape[1]} dimensions and the "
                         f"encoder gives {real_vectors.shape[1]}: evaluate with the encoder "
                         "the run used")
    if private is not None:
        pool_vectors = evaluate_lib._embed(encoder, [r["text"] for r in pool],
                                           "private (baseline sample)", say)
    else:
        pool_vectors = real_vectors[pool_rows]
    test_vectors = real_vectors[test_rows]

    say(f"MAUVE on {min(len(vectors), len(real))} embeddings a side")
    mauve = metrics.mauve_score(vectors, real_vectors, seed=seed, num_buckets=mauve_buckets)
    mauve["features"] = (f"feature-level: the synthetic embeddings against the real records' "
                         f"encoder embeddings, {real_vectors.shape[1]} dimensions")
    mauve["real_vs_real"] = evaluate_lib._real_reference(
        real_vectors, mauve["sample_size"], seed=seed, num_buckets=mauve_buckets)

    downstream, label_figures = evaluate_lib.per_label_column_figures(
        label_columns, synthetic, vectors, real, pool, pool_vectors, test, test_vectors,
        seed=seed, baseline_source="private" if private is not None else "real", say=say)

    return {
        "synthetic_kind": "embeddings",
        "sizes": {"synthetic": len(vectors), "real": len(real),
                  "private": None if private is None else len(private),
                  "test": len(test), "baseline_pool": len(pool)},
        "settings": {"seed": seed, "label_columns": label_columns,
                     "synthetic_label_column": synthetic_label_column},
        "split": split,
        "mauve": mauve,
        "downstream": downstream,
        "labels": label_figures,
        "memorisation": {"computed": False, "reason": NO_TEXT},
    }
