"""Writing an evaluation: `evaluation.json`, PNG plots, and one self-contained `evaluation.html`
(every plot embedded as a base64 data URI, so the page can be mailed or archived alone)."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import re

import numpy as np

from evaluation import metrics

SYNTHETIC_COLOUR, REAL_COLOUR, MAJORITY_COLOUR = "#d95f02", "#1b9e77", "#999999"
# Label plots show the most frequent labels only, so that bars stay readable.
MAX_PLOTTED_LABELS = 20
PRIVACY_REPORT = "privacy_report.json"
# Below this many records on a side, a figure swings by several points between samples of the
# same data (MAUVE's k-means buckets, a test set's accuracy): it is marked as rough.
FEW_RECORDS = 50
# MAUVE against the real-vs-real score of the same sample size: at least CLOSE of it reads as
# "close to the real data", at least PARTLY as "partly like it".
CLOSE, PARTLY = 0.8, 0.4
# A classifier trained on synthetic data within this accuracy of the real-data one is "as good".
AS_GOOD_MARGIN = 0.05
# Sample texts are shown whole up to this many characters.
SAMPLE_CHARS = 1200
PRIVATE_BANNER = ("This page quotes private data: it names private records, may quote a span "
                  "shared with one, and its real-data baseline trained on private records. It is "
                  "for the operator: it must not leave with the synthetic data (nor must "
                  "evaluation.json).")


def write_report(result: dict, output_dir: str, *, synthetic_texts=None, real_texts=None) -> dict:
    """Writes the json, the plots and the html of `evaluate`'s result into `output_dir`;
    returns {kind: path}. The length histograms need the texts themselves."""
    os.makedirs(output_dir, exist_ok=True)
    lengths = None
    if synthetic_texts is not None and real_texts is not None:
        lengths = length_values(synthetic_texts, real_texts)
    plots = write_plots(result, output_dir, lengths)
    result = dict(result, plots={name: os.path.basename(path) for name, path in plots.items()},
                  verdict=verdict(result), quotes_private_data=quotes_private_data(result))
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


@dataclasses.dataclass
class Figure:
    """One headline number; `sides` are the record counts it rests on, by what they are."""
    name: str
    value: str
    meaning: str
    sides: dict = dataclasses.field(default_factory=dict)

    @property
    def warning(self) -> str:
        few = {side: count for side, count in self.sides.items()
               if count is not None and count < FEW_RECORDS}
        if not few:
            return ""
        counts = ", ".join(f"{count} {side}" for side, count in few.items())
        return f"rough: only {counts}, under {FEW_RECORDS}"


def figures(result: dict) -> list[Figure]:
    """Every headline number of the evaluation, each with what it means and its sample sizes."""
    rows = []
    mauve = result["mauve"]
    embeddings = result.get("synthetic_kind") == "embeddings"
    if mauve.get("score") is not None:
        unit = "embeddings" if embeddings else "texts"
        rows.append(Figure("MAUVE", _number(mauve["score"]),
                           f"{mauve['sample_size']} {unit} a "
                           f"side, {mauve['num_buckets']} buckets; 1 = indistinguishable from the "
                           "real texts, near 0 = unlike them"
                           + ("; feature-level, against the real texts' encoder embeddings"
                              if embeddings else ""),
                           {f"{unit} a side": mauve["sample_size"]}))
    else:
        rows.append(Figure("MAUVE", "n/a", mauve.get("reason", "")))
    reference = mauve.get("real_vs_real")
    if reference:
        computed = reference["score"] is not None
        rows.append(Figure(
            "MAUVE, real vs real", _number(reference["score"]),
            f"two disjoint samples of {reference['sample_size']} real texts: what data "
            "from the real distribution itself scores at this size"
            if computed else reference.get("reason", ""),
            {"texts a side": reference["sample_size"]} if computed else {}))
    if "mauve_feature_encoder" in result:
        rows.extend(_second_space_figures(result["mauve_feature_encoder"], mauve))
    for column, entry in result.get("downstream", {}).items():
        for side in ("trained_on_synthetic", "trained_on_real"):
            part = entry[side]
            computed = part["accuracy"] is not None
            detail = (f"{part['train_size']} training records, {part['test_size']} test records"
                      if computed else part.get("reason", ""))
            missing = len(part["test_classes_missing_from_training"])
            if computed and missing:
                detail += (f"; {missing} test class{'es' if missing > 1 else ''} absent from "
                           "training")
            rows.append(Figure(f"Accuracy {column}, {side.replace('_', ' ')}",
                               _number(part["accuracy"]), detail,
                               {"training records": part["train_size"],
                                "test records": part["test_size"]}
                               if computed else {}))
        rows.append(Figure(f"Accuracy {column}, majority class",
                           _number(entry["majority_class_accuracy"]),
                           f"always answering {entry['majority_class']!r}",
                           {"test records": entry["test_size"]}))
        if "majority_class_balanced_accuracy" in entry:
            rows.extend(_balanced_accuracy_figures(column, entry))
    for side in ("synthetic", "real") if "lengths" in result else ():   # no text, no lengths
        lengths = result["lengths"][side]
        rows.append(Figure(f"Mean length, {side}",
                           f"{_number(lengths['chars']['mean'], 1)} chars, "
                           f"{_number(lengths['words']['mean'], 1)} words",
                           f"median {_number(lengths['words']['median'], 1)} words over "
                           f"{lengths['words']['count']} texts",
                           {"texts": lengths["words"]["count"]}))
    for column, entry in result.get("labels", {}).items():
        if entry["total_variation"] is None:
            empty = [side for side in ("synthetic", "real") if not entry[side]["labelled"]]
            rows.append(Figure(f"Label distance {column}", "n/a",
                               f"no {' and no '.join(empty)} record carries a {column!r} label"))
        else:
            rows.append(Figure(f"Label distance {column}", _number(entry["total_variation"]),
                               "total variation between the label shares: 0 same, 1 disjoint",
                               {"labelled synthetic records": entry["synthetic"]["labelled"],
                                "labelled real records": entry["real"]["labelled"]}))
    copying = result["memorisation"]
    if copying.get("computed", True):
        longest = copying["longest_shared_ngram"]
        checked = {"synthetic texts": copying["synthetic_texts"]}
        rows.append(Figure("Longest shared n-gram", str(longest["length"]),
                           "words in the longest span a synthetic text repeats verbatim from a "
                           "private record", checked))
        rows.append(Figure(f"Texts sharing {copying['copy_ngram']} consecutive words",
                           _number(copying["copied_fraction"]),
                           f"{copying['copied_texts']} of {copying['synthetic_texts']} synthetic "
                           f"texts repeat {copying['copy_ngram']} consecutive words of a private "
                           "record", checked))
    else:
        rows.append(Figure("Memorisation", "n/a", copying["reason"]))
    privacy = result.get("privacy")
    for run in (privacy or {}).get("runs", []):
        rows.append(Figure("Formal epsilon of the run", f"{run['formal_epsilon']:.4g}",
                           f"at delta {run['delta']:g}, per {run['privacy_unit'] or 'record'}; "
                           f"from {run['report']}"))
    if privacy is not None and not privacy.get("runs"):
        rows.append(Figure("Formal epsilon of the run", "n/a",
                           f"no readable {PRIVACY_REPORT} beside the synthetic file"))
    return rows


def _second_space_figures(second: dict, first: dict) -> list[Figure]:
    """MAUVE in the --feature_encoder's space, beside the main one: a method that optimises
    in the run's encoder space (Private Evolution votes with it) can look better there than
    in a space it never saw."""
    name = second["encoder"]
    if second.get("score") is None:
        return [Figure(f"MAUVE, {name} features", "n/a", second.get("reason", ""))]
    rows = [Figure(f"MAUVE, {name} features", _number(second["score"]),
                   f"{second['sample_size']} texts a side, {second['num_buckets']} buckets, "
                   f"in a second feature space ({second['features']}); the MAUVE above is "
                   f"{_number(first.get('score'))} in the run's encoder space",
                   {"texts a side": second["sample_size"]})]
    reference = second.get("real_vs_real")
    if reference:
        computed = reference["score"] is not None
        rows.append(Figure(
            f"MAUVE, real vs real, {name} features", _number(reference["score"]),
            f"two disjoint samples of {reference['sample_size']} real texts in the {name} space"
            if computed else reference.get("reason", ""),
            {"texts a side": reference["sample_size"]} if computed else {}))
    return rows


def _balanced_accuracy_figures(column: str, entry: dict) -> list[Figure]:
    """Balanced accuracy of both classifiers and of the constant answer: on a skewed test set
    plain accuracy can equal the majority share for every classifier, and this still moves."""
    rows = []
    for side in ("trained_on_synthetic", "trained_on_real"):
        part = entry[side]
        value = part.get("balanced_accuracy")
        rows.append(Figure(f"Balanced accuracy {column}, {side.replace('_', ' ')}",
                           _number(value),
                           "mean over the test classes of the share of each class found"
                           if value is not None else part.get("reason", ""),
                           {"training records": part["train_size"],
                            "test records": part["test_size"]} if value is not None else {}))
    rows.append(Figure(f"Balanced accuracy {column}, majority class",
                       _number(entry["majority_class_balanced_accuracy"]),
                       "any constant answer: 1 / the number of test classes",
                       {"test records": entry["test_size"]}))
    return rows


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(figure, value and its few-records warning, what it means) for every headline number."""
    return [(f.name, f.value + (f" [{f.warning}]" if f.warning else ""), f.meaning)
            for f in figures(result)]


# ---------------------------------------------------------------------------- verdict

def _resemblance(mauve: dict) -> tuple[str, str]:
    """(headline phrase, sentence) on how close the synthetic texts are to the real ones."""
    score = mauve.get("score")
    if score is None:
        return ("has too few texts to tell how close it is to the real data",
                f"MAUVE was not computed: {mauve.get('reason', 'too few texts')}.")
    reference = (mauve.get("real_vs_real") or {}).get("score")
    relative = score / reference if reference else score
    if relative >= CLOSE:
        phrase = "is close to the real data"
    elif relative >= PARTLY:
        phrase = "is partly like the real data"
    else:
        phrase = "is unlike the real data"
    against = (f", where two samples of real data score {reference:.2f}" if reference
               else " (1 = indistinguishable)")
    return phrase, f"The synthetic data {phrase}: MAUVE {score:.2f}{against}."


def _usefulness(column: str, entry: dict) -> tuple[str, str]:
    """(headline phrase, sentence) on a classifier of `column` trained on the synthetic data."""
    synthetic = entry["trained_on_synthetic"]["accuracy"]
    real = entry["trained_on_real"]["accuracy"]
    majority = entry["majority_class_accuracy"]
    if synthetic is None:
        return (f"cannot train a {column!r} classifier",
                f"No {column!r} classifier could be trained on the synthetic data: "
                f"{entry['trained_on_synthetic'].get('reason', 'no usable labels')}.")
    constant = (f"always answering {entry['majority_class']!r}, which gets {majority:.2f}"
                if majority is not None else "a constant answer")
    if majority is not None and synthetic <= majority:
        return (f"is no more useful than a constant answer for predicting {column!r}",
                f"A {column!r} classifier trained on it ({synthetic:.2f}) does no better than "
                f"{constant}.")
    if real is not None and synthetic >= real - AS_GOOD_MARGIN:
        return (f"is as useful as real data for predicting {column!r}",
                f"A {column!r} classifier trained on it ({synthetic:.2f}) does about as well as "
                f"one trained on real records ({real:.2f}), and beats {constant}.")
    against_real = (f", but does worse than one trained on real records ({real:.2f})"
                    if real is not None else "")
    return (f"beats a constant answer but not real data at predicting {column!r}"
            if real is not None else f"beats a constant answer at predicting {column!r}",
            f"A {column!r} classifier trained on it ({synthetic:.2f}) beats {constant}"
            f"{against_real}.")


def _copying(copying: dict) -> tuple[str | None, str]:
    if not copying.get("computed", True):
        if "private" in copying.get("reason", ""):
            return ("was not checked for copying",
                    "Not checked for copying of private records: pass --private to check.")
        return None, f"Not checked for copying: {copying.get('reason', '')}."
    n = copying["copy_ngram"]
    if not copying["copied_texts"]:
        return (f"repeats no {n} consecutive words of a private record",
                f"No synthetic text repeats {n} consecutive words of a private record (the "
                f"longest shared run is {copying['longest_shared_ngram']['length']} words).")
    return (f"has {copying['copied_texts']} texts that repeat {n} words of a private record",
            f"{copying['copied_texts']} of {copying['synthetic_texts']} synthetic texts repeat "
            f"{n} or more consecutive words of a private record: read them before sharing.")


def verdict(result: dict) -> dict:
    """{"headline": one plain sentence, "findings": the sentences behind it, "rough": whether
    a figure rests on fewer than FEW_RECORDS records a side}."""
    phrases, findings = [], []
    phrase, sentence = _resemblance(result["mauve"])
    phrases.append(phrase)
    findings.append(sentence)
    for column, entry in result.get("downstream", {}).items():
        phrase, sentence = _usefulness(column, entry)
        phrases.append(phrase)
        findings.append(sentence)
    phrase, sentence = _copying(result["memorisation"])
    if phrase:
        phrases.append(phrase)
    findings.append(sentence)
    length_warning = _length_mismatch(result.get("lengths"), result.get("settings", {}))
    if length_warning:
        findings.append(length_warning)
    rough = any(f.warning for f in figures(result))
    if rough:
        findings.append(f"Some figures rest on fewer than {FEW_RECORDS} records a side (marked "
                        "in the table): they can move by several points on another sample.")
    headline = "The synthetic data " + _and(phrases) + "."
    if rough:
        headline = "Rough verdict, from few records: " + headline[0].lower() + headline[1:]
    return {"headline": headline, "findings": findings, "rough": rough}


# Real texts this many times longer (median words) than the synthetic ones are compared
# mostly on length: MAUVE's features and the classifiers both see it.
LENGTH_MISMATCH_RATIO = 2.0


def _length_mismatch(lengths: dict | None, settings: dict) -> str | None:
    try:
        real = lengths["real"]["words"]["median"]
        synthetic = lengths["synthetic"]["words"]["median"]
    except (KeyError, TypeError):
        return None
    if not real or not synthetic or real < LENGTH_MISMATCH_RATIO * synthetic:
        return None
    cut = settings.get("real_max_words")
    advice = (f"they are already cut to {cut} words" if cut else
              f"--real_max_words {int(round(synthetic))} compares like with like")
    return (f"The real texts are {real / synthetic:.1f} times longer than the synthetic ones "
            f"(median {real:g} against {synthetic:g} words), so the figures above partly "
            f"measure length: {advice}.")


def _and(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def quotes_private_data(result: dict) -> bool:
    return result.get("sizes", {}).get("private") is not None


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: str) -> str:
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")


def _figure_table(rows: list[Figure]) -> str:
    body = []
    for row in rows:
        warning = (f" <span class='few'>{html.escape(row.warning)}</span>" if row.warning
                   else "")
        body.append(f"<tr><td>{html.escape(row.name)}</td><td class='value'>"
                    f"{html.escape(row.value)}{warning}</td><td>{html.escape(row.meaning)}</td>"
                    "</tr>")
    return ("<table class='figures'><thead><tr><th>figure</th><th>value</th><th>meaning</th>"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _privacy_section(privacy: dict) -> str:
    runs = privacy.get("runs", [])
    if runs:
        lines = "".join(
            f"<p>The run that wrote this synthetic data has a formal guarantee of "
            f"<strong class='epsilon'>epsilon {run['formal_epsilon']:.4g}</strong> at delta "
            f"{run['delta']:g}, per {html.escape(run['privacy_unit'] or 'record')} "
            f"(from <code>{html.escape(run['report'])}</code>).</p>" for run in runs)
    elif not privacy.get("unreadable"):
        lines = ("<p>No <code>privacy_report.json</code> beside the synthetic file: this page "
                 "cannot tell which privacy guarantee the data carries.</p>")
    else:
        lines = ""
    lines += "".join(f"<p>{html.escape(problem)}</p>" for problem in privacy.get("unreadable", []))
    return f"<section class='privacy'><h2>Privacy of the run</h2>{lines}</section>"


def _samples_section(samples: list[dict]) -> str:
    items = []
    for sample in samples:
        text = sample["text"]
        if len(text) > SAMPLE_CHARS:
            text = text[:SAMPLE_CHARS] + " [...]"
        label = sample.get("label")
        caption = html.escape(sample.get("source", "") + (f", label {label}" if label else ""))
        items.append(f"<li><div class='caption'>{caption}</div>"
                     f"<div class='text'>{html.escape(text)}</div></li>")
    return (f"<h2>{len(samples)} synthetic texts, drawn at random</h2>"
            f"<ol class='samples'>{''.join(items)}</ol>")


def render_html(result: dict, plots: dict) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             "<title>dpsynth evaluation</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}",
             "table{border-collapse:collapse;margin:1em 0}",
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}",
             "th{background:#f3f3f3} img{max-width:100%} code{background:#f3f3f3}",
             ".private{background:#b00020;color:#fff;padding:12px 16px;font-weight:bold;"
             "border-radius:4px}",
             ".verdict{background:#eef4fb;border-left:6px solid #2b6cb0;padding:8px 16px}",
             ".verdict .headline{font-size:1.25em;font-weight:bold;margin:.4em 0}",
             ".privacy{border-left:6px solid #555;padding:2px 16px;background:#f7f7f7;"
             "margin-top:1em}",
             ".few{display:inline-block;background:#fff3cd;color:#7a5200;border:1px solid #e0b84a;"
             "border-radius:3px;padding:0 4px;margin-left:4px;font-size:.85em}",
             ".figures td.value{white-space:nowrap}",
             ".samples li{margin:.6em 0}",
             ".samples .caption{color:#666;font-size:.85em}",
             ".samples .text{white-space:pre-wrap;border:1px solid #ddd;padding:6px 8px;"
             "background:#fcfcfc}",
             "</style></head><body>"]
    if quotes_private_data(result):
        parts.append(f"<div class='private' role='alert'>{html.escape(PRIVATE_BANNER)}</div>")
    parts.append("<h1>Synthetic data evaluation</h1>")
    summary = verdict(result)
    parts.append("<section class='verdict'><p class='headline'>"
                 f"{html.escape(summary['headline'])}</p><ul>"
                 + "".join(f"<li>{html.escape(line)}</li>" for line in summary["findings"])
                 + "</ul></section>")
    if "privacy" in result:
        parts.append(_privacy_section(result["privacy"]))
    if result.get("samples"):
        parts.append(_samples_section(result["samples"]))
    inputs = result.get("inputs", {})
    if inputs:
        parts.append("<h2>Inputs</h2>")
        parts.append(_table(("input", "path", "records", "rejected rows"),
                            [(name, part["path"], part["records"], part["rejected"])
                             for name, part in inputs.items() if part]))
    parts.append(f"<p>Split: {html.escape(result['split'])}. "
                 f"Seed {result['settings']['seed']}.</p>")
    parts.append("<h2>All figures</h2>")
    parts.append(_figure_table(figures(result)))
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
