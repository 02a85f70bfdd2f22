"""Writing an evaluation: `evaluation.json`, PNG plots, and one self-contained `evaluation.html`
(every plot embedded as a base64 data URI, so the page can be mailed or archived alone)."""

from __future__ import annotations

import base64
import html
import json
import os
import re

import numpy as np

from evaluation import metrics

SYNTHETIC_COLOUR, REAL_COLOUR, MAJORITY_COLOUR = "#d95f02", "#1b9e77", "#999999"
# Label plots show the most frequent labels only, so that bars stay readable.
MAX_PLOTTED_LABELS = 20


def write_report(result: dict, output_dir: str, *, synthetic_texts=None, real_texts=None) -> dict:
    """Writes the json, the plots and the html of `evaluate`'s result into `output_dir`;
    returns {kind: path}. The length histograms need the texts themselves."""
    os.makedirs(output_dir, exist_ok=True)
    lengths = None
    if synthetic_texts is not None and real_texts is not None:
        lengths = length_values(synthetic_texts, real_texts)
    plots = write_plots(result, output_dir, lengths)
    result = dict(result, plots={name: os.path.basename(path) for name, path in plots.items()})
    json_path = os.path.join(output_dir, "evaluation.json")
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, ensure_ascii=False, default=_json_default)
        handle.write("\n")
    html_path = os.path.join(output_dir, "evaluation.html")
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(render_html(result, plots))
    return {"json": json_path, "html": html_path, **plots}


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ---------------------------------------------------------------------------- plots

def write_plots(result: dict, output_dir: str, lengths: dict | None = None) -> dict:
    """{title: png path}: length histograms (when `lengths` has the per-text values), one
    label plot per column, accuracy bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    if lengths:
        path = os.path.join(output_dir, "lengths.png")
        _length_plot(plt, lengths, path)
        plots["Text lengths"] = path
    for column, distribution in result.get("labels", {}).items():
        path = os.path.join(output_dir, f"labels_{_file_safe(column)}.png")
        _label_plot(plt, column, distribution, path)
        plots[f"Labels: {column}"] = path
    if result.get("downstream"):
        path = os.path.join(output_dir, "accuracy.png")
        _accuracy_plot(plt, result["downstream"], path)
        plots["Downstream accuracy"] = path
    return plots


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "label"


def _length_plot(plt, values: dict, path: str) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, unit in zip(axes, ("chars", "words")):
        synthetic, real = values["synthetic"][unit], values["real"][unit]
        edges = np.histogram_bin_edges(np.concatenate([synthetic, real]).astype(float), bins=30)
        axis.hist(real, bins=edges, density=True, alpha=0.55, color=REAL_COLOUR,
                  label=f"real (n={len(real)})")
        axis.hist(synthetic, bins=edges, density=True, alpha=0.55, color=SYNTHETIC_COLOUR,
                  label=f"synthetic (n={len(synthetic)})")
        axis.set_xlabel("characters" if unit == "chars" else "words (whitespace-separated)")
        axis.set_ylabel("share of texts (density)")
        axis.legend(fontsize=8)
    figure.suptitle("Text length, synthetic vs real")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _label_plot(plt, column: str, distribution: dict, path: str) -> None:
    real, synthetic = distribution["real"]["shares"], distribution["synthetic"]["shares"]
    labels = list(dict.fromkeys([*real, *synthetic]))
    shown = labels[:MAX_PLOTTED_LABELS]
    height = max(2.5, 0.35 * len(shown) + 1.2)
    figure, axis = plt.subplots(figsize=(8, height))
    rows = np.arange(len(shown))
    axis.barh(rows - 0.2, [real.get(c, 0.0) for c in shown], 0.4, color=REAL_COLOUR,
              label=f"real (n={distribution['real']['labelled']})")
    axis.barh(rows + 0.2, [synthetic.get(c, 0.0) for c in shown], 0.4, color=SYNTHETIC_COLOUR,
              label=f"synthetic (n={distribution['synthetic']['labelled']})")
    axis.set_yticks(rows, [c if len(c) <= 40 else c[:37] + "..." for c in shown], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("share of labelled records")
    title = f"Label distribution: {column}"
    if len(labels) > len(shown):
        title += f" ({len(shown)} most frequent of {len(labels)})"
    axis.set_title(title)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _accuracy_plot(plt, downstream: dict, path: str) -> None:
    columns = list(downstream)
    figure, axis = plt.subplots(figsize=(max(5, 2.4 * len(columns) + 1.5), 3.8))
    positions = np.arange(len(columns))
    series = [("trained on synthetic", SYNTHETIC_COLOUR,
               [downstream[c]["trained_on_synthetic"]["accuracy"] for c in columns]),
              ("trained on real", REAL_COLOUR,
               [downstream[c]["trained_on_real"]["accuracy"] for c in columns]),
              ("majority class", MAJORITY_COLOUR,
               [downstream[c]["majority_class_accuracy"] for c in columns])]
    width = 0.26
    for offset, (name, colour, values) in zip((-width, 0.0, width), series):
        for position, value in zip(positions, values):
            x = position + offset
            if value is None:
                axis.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
                continue
            axis.bar(x, value, width, color=colour)
            axis.text(x, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
        axis.bar(np.nan, 0, width, color=colour, label=name)   # legend entry
    axis.set_xticks(positions, columns)
    axis.set_ylim(0, 1.12)
    axis.set_ylabel("accuracy on held-out real records")
    axis.set_title("Downstream classifier accuracy")
    axis.legend(fontsize=8, loc="upper right", ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------- html

def _number(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(figure, value, what it means) for every headline number of the evaluation."""
    rows = []
    mauve = result["mauve"]
    embeddings = result.get("synthetic_kind") == "embeddings"
    if mauve.get("score") is not None:
        rows.append(("MAUVE", _number(mauve["score"]),
                     f"{mauve['sample_size']} {'embeddings' if embeddings else 'texts'} a "
                     f"side, {mauve['num_buckets']} buckets; 1 = indistinguishable from the "
                     "real texts, near 0 = unlike them"
                     + ("; feature-level, against the real texts' encoder embeddings"
                        if embeddings else "")))
    else:
        rows.append(("MAUVE", "n/a", mauve.get("reason", "")))
    reference = mauve.get("real_vs_real")
    if reference:
        rows.append(("MAUVE, real vs real", _number(reference["score"]),
                     f"two disjoint samples of {reference['sample_size']} real texts: what data "
                     "from the real distribution itself scores at this size"
                     if reference["score"] is not None else reference.get("reason", "")))
    for column, entry in result.get("downstream", {}).items():
        for side in ("trained_on_synthetic", "trained_on_real"):
            part = entry[side]
            detail = (f"{part['train_size']} training records, {part['test_size']} test records"
                      if part["accuracy"] is not None else part.get("reason", ""))
            missing = len(part["test_classes_missing_from_training"])
            if part["accuracy"] is not None and missing:
                detail += f"; {missing} test class{'es' if missing > 1 else ''} absent from training"
            rows.append((f"Accuracy {column}, {side.replace('_', ' ')}",
                         _number(part["accuracy"]), detail))
        rows.append((f"Accuracy {column}, majority class",
                     _number(entry["majority_class_accuracy"]),
                     f"always answering {entry['majority_class']!r}"))
    for side in ("synthetic", "real") if "lengths" in result else ():   # no text, no lengths
        lengths = result["lengths"][side]
        rows.append((f"Mean length, {side}",
                     f"{_number(lengths['chars']['mean'], 1)} chars, "
                     f"{_number(lengths['words']['mean'], 1)} words",
                     f"median {_number(lengths['words']['median'], 1)} words over "
                     f"{lengths['words']['count']} texts"))
    for column, entry in result.get("labels", {}).items():
        if entry["total_variation"] is None:
            empty = [side for side in ("synthetic", "real") if not entry[side]["labelled"]]
            meaning = f"no {' and no '.join(empty)} record carries a {column!r} label"
        else:
            meaning = "total variation between the label shares: 0 same, 1 disjoint"
        rows.append((f"Label distance {column}", _number(entry["total_variation"]), meaning))
    copying = result["memorisation"]
    if copying.get("computed", True):
        longest = copying["longest_shared_ngram"]
        rows.append(("Longest shared n-gram", str(longest["length"]),
                     "words in the longest span a synthetic text repeats verbatim from a "
                     "private record"))
        rows.append((f"Texts sharing {copying['copy_ngram']} consecutive words",
                     _number(copying["copied_fraction"]),
                     f"{copying['copied_texts']} of {copying['synthetic_texts']} synthetic texts "
                     f"repeat {copying['copy_ngram']} consecutive words of a private record"))
    else:
        rows.append(("Memorisation", "n/a", copying["reason"]))
    return rows


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: str) -> str:
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")


def render_html(result: dict, plots: dict) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             "<title>dpsynth evaluation</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}",
             "table{border-collapse:collapse;margin:1em 0}",
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}",
             "th{background:#f3f3f3} img{max-width:100%} code{background:#f3f3f3}",
             "</style></head><body><h1>Synthetic data evaluation</h1>"]
    inputs = result.get("inputs", {})
    if inputs:
        parts.append("<h2>Inputs</h2>")
        parts.append(_table(("input", "path", "records", "rejected rows"),
                            [(name, part["path"], part["records"], part["rejected"])
                             for name, part in inputs.items() if part]))
    parts.append(f"<p>Split: {html.escape(result['split'])}. "
                 f"Seed {result['settings']['seed']}.</p>")
    parts.append("<h2>All figures</h2>")
    parts.append(_table(("figure", "value", "meaning"), summary_rows(result)))
    parts.append("<h2>Plots</h2>")
    parts.append("<table><thead><tr><th>plot</th><th>image</th></tr></thead><tbody>")
    for title, path in plots.items():
        parts.append(f"<tr><td>{html.escape(title)}</td><td><img alt='{html.escape(title)}' "
                     f"src='{_data_uri(path)}'></td></tr>")
    parts.append("</tbody></table>")
    length_rows = []
    if "lengths" in result:
        parts.append("<h2>Lengths</h2>")
    for side in ("synthetic", "real") if "lengths" in result else ():
        for unit in ("chars", "words"):
            s = result["lengths"][side][unit]
            length_rows.append((side, unit, s["count"], _number(s["mean"], 1),
                                _number(s["median"], 1), _number(s["p10"], 1),
                                _number(s["p90"], 1), _number(s["min"]), _number(s["max"])))
    if length_rows:
        parts.append(_table(("texts", "unit", "count", "mean", "median", "p10", "p90", "min",
                             "max"), length_rows))
    for column, entry in result.get("labels", {}).items():
        parts.append(f"<h2>Labels: {html.escape(column)}</h2>")
        real, synthetic = entry["real"], entry["synthetic"]
        names = list(dict.fromkeys([*real["counts"], *synthetic["counts"]]))
        parts.append(_table(
            ("label", "real count", "real share", "synthetic count", "synthetic share"),
            [(n, real["counts"].get(n, 0), _number(real["shares"].get(n, 0.0)),
              synthetic["counts"].get(n, 0), _number(synthetic["shares"].get(n, 0.0)))
             for n in names]))
        parts.append(f"<p>Unlabelled: {real['unlabelled']} real, {synthetic['unlabelled']} "
                     "synthetic.</p>")
    copying = result["memorisation"]
    if copying.get("computed", True) and copying["longest_shared_ngram"]["length"]:
        longest = copying["longest_shared_ngram"]
        parts.append("<h2>Longest shared span</h2>")
        parts.append(f"<p>{longest['length']} words, synthetic record "
                     f"{html.escape(str(longest.get('synthetic_source')))}, private record "
                     f"{html.escape(str(longest.get('private_source')))}: "
                     f"<code>{html.escape(longest['ngram'])}</code></p>")
        parts.append(f"<p>Tokenisation: {html.escape(copying['tokenisation'])}.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def length_values(synthetic_texts, real_texts) -> dict:
    """Per-text lengths for the histograms (the json keeps only their summaries)."""
    synthetic_chars, synthetic_words = metrics.text_lengths(synthetic_texts)
    real_chars, real_words = metrics.text_lengths(real_texts)
    return {"synthetic": {"chars": synthetic_chars, "words": synthetic_words},
            "real": {"chars": real_chars, "words": real_words}}
