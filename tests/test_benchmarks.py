"""The benchmark scripts run end to end (tiny models, tiny sizes): they cannot rot
between the runs whose figures docs/results.md reports."""

import json
import math

import pytest
from pathlib import Path

from benchmarks import aggregator_bench, compare_methods, engine, throughput
from tests.pipeline_fixtures import write_reviews_csv


def _yelp_like(path, n=96):
    """The benchmark reads Yelp's columns: text, label1 (category), label2 (stars)."""
    import csv

    source = write_reviews_csv(path.with_suffix(".source.csv"), n=n)
    with open(source, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label1", "label2"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"text": row["text"],
                             "label1": f"Business Category: {row['category']}",
                             "label2": f"Review Stars: {row['stars']}.0"})
    return path


def test_compare_methods_writes_a_row_per_method_and_epsilon(tmp_path, capsys):
    data = _yelp_like(tmp_path / "yelp.csv")
    out = tmp_path / "results"
    code = compare_methods.main([
        "--data", str(data), "--private_records", "48", "--real_records", "40",
        "--lm", "tiny-llama3", "--encoder", "tiny-bert", "--max_new_tokens", "3",
        "--epsilons", "3,10", "--methods",
        "uniform+mean,public_centers+median_ptr,public_prompt,non_private",
        "--feature_encoder", "tiny-llama3", "--output", str(out)])
    assert code == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(r["method"], r["epsilon_target"]) for r in rows] == [
        ("uniform+mean", 3.0), ("uniform+mean", 10.0),
        ("public_centers+median_ptr", 3.0), ("public_centers+median_ptr", 10.0),
        ("public_prompt", None), ("non_private", None)]
    for row in rows[:4]:
        # Calibrated to the target: formal epsilon at most the target, and close to it.
        assert 0.9 * row["epsilon_target"] <= row["epsilon_formal"] <= row["epsilon_target"] + 1e-6
        assert row["synthetic_count"] >= 1
    for row in rows:
        # Both feature spaces and the balanced accuracy are scored for every text row.
        assert row["feature_encoder"] == "tiny-llama3"
        assert row["evaluation"]["mauve_feature_encoder"]["sample_size"] == row[
            "evaluation"]["mauve"]["sample_size"]
        assert 0.0 <= row["category_balanced_accuracy"] <= 1.0
        assert row["seed"] == 0
    assert rows[-1]["epsilon_formal"] == "inf" and rows[-1]["synthetic_count"] == 48 // 8
    assert rows[-2]["epsilon_formal"] == 0.0 and rows[-2]["synthetic_count"] == 48 // 8
    assert (out / "compare.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "eps formal" in table and "public_centers+median_ptr @10" in table
    # The table can be printed again from the JSON alone.
    assert compare_methods.main(["--table_from", str(out / "compare.json")]) == 0
    again = capsys.readouterr().out
    assert again.splitlines()[0].startswith("method") and len(again.splitlines()) == 2 + 6

    # A later run of Private Evolution joins the earlier rows, in method order.
    more = tmp_path / "more"
    assert compare_methods.main([
        "--data", str(data), "--private_records", "48", "--real_records", "40",
        "--lm", "tiny-llama3", "--encoder", "tiny-bert", "--max_new_tokens", "3",
        "--epsilons", "3", "--methods",
        "private_evolution,uniform+embeddings,dp_kmeans+embeddings",
        "--feature_encoder", "none",
        "--keep_rows_from", str(out / "compare.json"), "--output", str(more)]) == 0
    merged = json.loads((more / "compare.json").read_text())["rows"]
    assert [(r["method"], r["epsilon_target"]) for r in merged] == [
        (r["method"], r["epsilon_target"]) for r in rows[:4]] + [
        ("private_evolution", 3.0), ("uniform+embeddings", 3.0),
        ("dp_kmeans+embeddings", 3.0), ("public_prompt", None), ("non_private", None)]
    for row in merged[4:7]:
        assert 0.9 * 3 <= row["epsilon_formal"] <= 3 + 1e-6
        assert row["noise_multiplier"] > 0
    assert merged[4]["synthetic_count"] == compare_methods.PE_MIN_POPULATION
    for row in merged[5:7]:
        # As many embeddings as n / s, scored like the texts: MAUVE and a category classifier.
        assert row["synthetic_count"] == 48 // 8
        assert row["evaluation"]["synthetic_kind"] == "embeddings"
        assert row["evaluation"]["mauve"]["sample_size"] == 48 // 8  # too few for a score
        assert row["category_accuracy"] is not None


def _compare_on_tiny_models(tmp_path, *arguments):
    """(output folder, rows) of compare_methods on 48 Yelp-like records and tiny models."""
    data = _yelp_like(tmp_path / "yelp.csv")
    out = tmp_path / "results"
    assert compare_methods.main([
        "--data", str(data), "--private_records", "48", "--real_records", "40",
        "--lm", "tiny-llama3", "--encoder", "tiny-bert", "--max_new_tokens", "3",
        "--feature_encoder", "none", "--output", str(out), *arguments]) == 0
    return out, json.loads((out / "compare.json").read_text())["rows"]


def test_compare_methods_reruns_rows_per_seed_and_reports_their_spread(tmp_path, capsys):
    out, rows = _compare_on_tiny_models(tmp_path, "--methods", "public_prompt,non_private",
                                        "--seeds", "0,1")
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("public_prompt", 0), ("public_prompt", 1), ("non_private", 0), ("non_private", 1)]
    # A seed is a new shuffle: the two non-private rows continue different private seeds.
    private = [(out / f"seed{seed}" / "compare_private.csv").read_text() for seed in (0, 1)]
    assert private[0] != private[1]
    texts = [[s["text"] for s in r["evaluation"]["samples"]] for r in rows[2:]]
    assert texts[0] != texts[1]
    # Every row's texts are kept, so that it can be scored again.
    kept = [(p / "synthetic.jsonl").read_text().splitlines() for p in
            (Path(r["output"]) for r in rows)]
    assert [len(lines) for lines in kept] == [r["synthetic_count"] for r in rows]
    capsys.readouterr()
    assert compare_methods.main(["--table_from", str(out / "compare.json")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 + 2   # one line per method, the seeds pooled
    header = [cell.strip() for cell in table[0].split("|")]
    non_private = [cell.strip() for cell in table[3].split("|")]
    cell = dict(zip(header, non_private))
    assert cell["seeds"] == "2"
    mean, sd = _spread_of([r["category_accuracy"] for r in rows[2:]])
    assert cell["cat acc"] == f"{mean:.3g}±{sd:.2f}"


def _spread_of(values):
    import statistics
    return statistics.fmean(values), statistics.stdev(values)


def test_throughput_prints_the_ratios(tmp_path, capsys):
    data = _yelp_like(tmp_path / "yelp.csv", n=40)
    assert throughput.main(["--lm", "tiny-llama3", "--encoder", "tiny-bert", "--data", str(data),
                            "--batches", "2", "--sizes", "50", "100"]) == 0
    printed = capsys.readouterr().out
    assert "ratio private/plain" in printed and "aggregation + sampling share" in printed
    stage_rows = [line.split() for line in printed.splitlines()
                  if line.startswith("tiny-bert")]
    assert [int(r[1]) for r in stage_rows] == [50, 100]
    assert all(float(r[2]) > 0 and not math.isnan(float(r[3])) for r in stage_rows)


def test_aggregator_bench_scores_every_rule_epsilon_k_and_s_on_the_tiny_lm(tmp_path, capsys):
    data = _yelp_like(tmp_path / "yelp.csv", n=96)
    out = tmp_path / "bench"
    assert aggregator_bench.main(["--lm", "tiny-llama3", "--data", str(data), "--quick",
                                  "--simulations", "20", "--output", str(out)]) == 0
    saved = json.loads((out / "aggregator_bench.json").read_text())
    rows = saved["rows"]
    scored = {(r["rule"], r["epsilon"], r["top_k"], r["s"]) for r in rows}
    assert scored == {(rule, epsilon, k, s)
                      for rule in aggregator_bench.RULES for epsilon in (1.0, 3.0, 10.0)
                      for k in (5, 20, 50) for s in (4, 8, 16)} | {
        (bracket, None, k, s) for bracket in aggregator_bench.BRACKETS
        for k in (5, 20, 50) for s in (4, 8, 16)}
    for row in rows:
        if row["kl"] is not None:
            assert row["kl"] >= -1e-9 and 0.0 <= row["tv"] <= 1.0 + 1e-9
        if row["rule"] == "median_ptr" and row["kl"] is not None:
            assert 0.0 <= row["pass_rate"] <= 1.0
        if row["rule"] == "gate" and row["kl"] is not None:
            assert 0.0 <= row["private_share"] <= 1.0
    # Cutting the reference to the kept tokens loses -log(kept mass): less as k grows.
    cut = {r["top_k"]: r["kl"] for r in rows if r["rule"] == "top-k only" and r["s"] == 8}
    assert cut[5] >= cut[20] >= cut[50] >= 0.0
    # No rule restricted to the kept tokens can beat the reference cut to them in KL.
    for row in rows:
        if row["kl"] is not None and row["rule"] != "top-k only":
            best = next(r["kl"] for r in rows if r["rule"] == "top-k only"
                        and r["top_k"] == row["top_k"] and r["s"] == row["s"])
            assert row["kl"] >= best - 1e-9
    assert len(saved["crossover"]) == 9 and saved["settings"]["seeds"] == 32
    assert (out / "aggregator_bench.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "crossover" in printed and "median_ptr @3" in printed

    # The recording can be scored again without the LM, with the same figures.
    again = tmp_path / "again"
    assert aggregator_bench.main(["--from_recording", str(out / "recording.npz"), "--quick",
                                  "--simulations", "20", "--output", str(again)]) == 0
    assert json.loads((again / "aggregator_bench.json").read_text())["rows"] == rows

    # The budget pins median_ptr's bound b, so b = 8c/s leaves a clip four times smaller.
    wider = tmp_path / "wider"
    assert aggregator_bench.main(["--from_recording", str(out / "recording.npz"), "--quick",
                                  "--simulations", "20", "--ptr_bound_ratio", "8",
                                  "--output", str(wider)]) == 0

    def ptr_rows(rows):
        return {(r["epsilon"], r["top_k"], r["s"]): r for r in rows if r["rule"] == "median_ptr"}

    default, wide = ptr_rows(rows), ptr_rows(
        json.loads((wider / "aggregator_bench.json").read_text())["rows"])
    for key, row in default.items():
        assert wide[key]["bound"] == pytest.approx(row["bound"], rel=1e-3)
        assert wide[key]["clip"] == pytest.approx(row["clip"] / 4, rel=1e-3)


def test_the_calibrated_clips_meet_the_epsilon_of_their_rule():
    from mechanisms import accounting

    for rule in aggregator_bench.RULES:
        settings = aggregator_bench.calibrated_settings(
            rule, epsilon=3.0, s=16, temperature=1.0, delta=1e-5, max_private_tokens=32)
        assert settings["clip"] > 0
    median = accounting.calibrate_median_clip(target_epsilon=3.0, delta=1e-5, temperature=1.0,
                                              max_private_tokens=32)
    entry = accounting.token_entry("generation", rule="median", clip=median, temperature=1.0,
                                   max_private_tokens=32)
    assert 2.9 <= accounting.events_epsilon([entry.event], 1e-5) <= 3.0 + 1e-6
    # The formal median pays 2c where the mean pays c/s: a clip 2s times smaller.
    mean = accounting.calibrate_mean_clip(target_epsilon=3.0, delta=1e-5,
                                          expected_batch_size=16, temperature=1.0,
                                          max_private_tokens=32)
    assert mean / median == pytest.approx(2 * 16, rel=1e-3)
    noise = aggregator_bench.gate_noise_for(0.75, s=16, delta=1e-5, max_private_tokens=32)
    gate = accounting.gate_entry("gate", noise_scale=noise, expected_batch_size=16,
                                 max_private_tokens=32)
    assert accounting.events_epsilon([gate.event], 1e-5) == pytest.approx(0.75, rel=1e-3)


def test_engine_quick_prints_the_table_with_every_column(tmp_path, capsys):
    data = _yelp_like(tmp_path / "yelp.csv", n=16)
    assert engine.main(["--lm", "tiny-llama3", "--data", str(data), "--quick"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    header = lines.index(" | ".join(engine.COLUMNS))
    rows = [line.split(" | ") for line in lines[header + 2:header + 4]]
    assert [r[0] for r in rows] == ["our private loop", "our plain generation"]
    column = {name: i for i, name in enumerate(engine.COLUMNS)}
    for row in rows:
        assert len(row) == len(engine.COLUMNS)
        wall, prefill, decode, rest = (float(row[column[c]]) for c in
                                       ("wall s", "prefill s", "decode s", "rest s"))
        assert wall > 0 and min(prefill, decode) >= 0
        assert abs(prefill + decode + rest - wall) <= 0.021  # each rounded to 0.01 s
        assert float(row[column["GFLOP/s"]]) > 0 and float(row[column["MFU %"]]) >= 0
        assert row[column["HF s / this s"]] == "-"  # --quick skips the HF venv
    # One call of 2 batches x (4 seeds + the public prompt): the prompts, then 3 tokens fed back.
    assert int(rows[1][column["row-tokens"]]) == 10 * 4
    assert int(rows[1][column["synthetic tokens"]]) <= 10 * 4
    assert "matmul peak: numpy" in printed and "peak RSS: this process" in printed
    # The profile splits the private loop's prefill and decode time against the matmuls alone.
    profile = lines.index(" | ".join(("phase", "shape", "model TFLOP", "measured s", "MFU %",
                                      "matmuls alone s", "matmuls alone: % of peak", "rest s")))
    phases = [line.split(" | ") for line in lines[profile + 2:profile + 4]]
    assert [p[0] for p in phases] == ["prefill", "decode"]
    private = rows[0]
    assert float(phases[0][3]) == pytest.approx(float(private[column["prefill s"]]), abs=0.011)
    assert float(phases[1][3]) == pytest.approx(float(private[column["decode s"]]), abs=0.011)
    for phase in phases:
        measured, alone, rest = float(phase[3]), float(phase[5]), float(phase[7])
        assert alone >= 0 and rest == pytest.approx(measured - alone, abs=0.011)
    assert "3 steps of 16 rows x 1 token" in phases[1][1]
    assert "attention over the" in printed and "member rows" in printed


def test_matmul_bound_multiplies_every_kernel_of_the_model_once(tiny_lm):
    """The profile's ceiling runs the model's own matmuls: as many FLOPs a row as the model
    counts (its norms' scale vectors aside), and the head only on the rows asked."""
    bound = engine.MatmulBound(tiny_lm)
    counter = engine.FlopCounter(tiny_lm)
    norms = sum(int(w.numpy().size) for layer in tiny_lm.backbone.transformer_layers
                for w in layer.weights if len(w.shape) < 2)
    assert bound.body_flops_per_row == counter.per_token - 2 * norms
    assert bound.head_flops_per_row == counter.head
    assert bound.flops(16, 2) == 16 * bound.body_flops_per_row + 2 * counter.head
    assert bound.seconds(16, 2, repeats=1) > 0


def test_engine_flop_count_matches_the_arithmetic(tiny_lm):
    counter = engine.FlopCounter(tiny_lm)
    backbone = tiny_lm.backbone
    # The token embedding, and the output head too when it is not tied to it.
    embeddings = backbone.token_embedding.count_params()
    assert counter.per_token == 2 * (backbone.count_params() - embeddings
                                     - backbone.layer_norm.count_params())
    # A 3-token prompt then 2 decoded tokens: 5 token passes, 3 heads, keys 1+2+3+4+5.
    assert counter.call_flops([3], 2) == (5 * counter.per_token + 3 * counter.head
                                          + counter.per_key * backbone.num_layers * 15)


def test_compare_methods_can_prompt_with_category_and_stars(tmp_path):
    out, rows = _compare_on_tiny_models(
        tmp_path, "--epsilons", "10", "--methods", "uniform+mean,public_prompt,non_private",
        "--labels", "category_stars")
    # 48 records over 50 labels leave uniform + mean too few texts for a classifier.
    for row in rows[1:]:
        # The synthetic records carry stars, so a stars classifier trains on them.
        assert row["stars_accuracy"] is not None, row["method"]
        assert 0.0 <= row["stars_balanced_accuracy"] <= 1.0
        assert row["category_accuracy"] is not None
    # The job saw one label per (category, stars) pair.
    synthetic = (out / "compare" / "seed0" / "uniform_mean_eps10").glob("synthetic-*.jsonl")
    labels = {json.loads(line)["label"] for path in synthetic
              for line in path.read_text().splitlines()}
    assert labels and all(compare_methods.COMBINED_SEPARATOR in label for label in labels)
    assert compare_methods.with_split_labels(
        [{"text": "t", "label": "Business Category: Bars | Review Stars: 2.0"}]) == [
        {"text": "t", "label": "Business Category: Bars | Review Stars: 2.0",
         "label1": "Business Category: Bars", "label2": "Review Stars: 2.0"}]


def test_compare_methods_scores_earlier_rows_again_from_their_kept_texts(tmp_path):
    out, rows = _compare_on_tiny_models(tmp_path, "--epsilons", "10", "--methods",
                                        "uniform+mean,public_prompt,non_private")
    again = tmp_path / "again"
    assert compare_methods.main(["--rescore_from", str(out / "compare.json"),
                                 "--output", str(again)]) == 0
    rescored = json.loads((again / "compare.json").read_text())["rows"]
    assert [(r["method"], r["seed"]) for r in rescored] == [(r["method"], r["seed"])
                                                           for r in rows]
    for before, after in zip(rows, rescored):
        # Same texts, same split, same evaluation: the same figures; nothing was regenerated
        # but what the run kept.
        assert after["synthetic_count"] == before["synthetic_count"]
        assert after["mauve"] == before["mauve"]
        assert after["category_accuracy"] == before["category_accuracy"]
        assert after["evaluation"]["samples"] == before["evaluation"]["samples"]
    # Texts an older run did not keep are drawn again from the same keyed draws.
    (Path(rows[-1]["output"]) / "synthetic.jsonl").unlink()
    assert compare_methods.main(["--rescore_from", str(out / "compare.json"),
                                 "--output", str(tmp_path / "third")]) == 0
    third = json.loads((tmp_path / "third" / "compare.json").read_text())["rows"]
    assert third[-1]["evaluation"]["samples"] == rows[-1]["evaluation"]["samples"]


def test_private_evolution_levers_run_as_rows_of_their_own(tmp_path):
    """Each Aug-PE lever is a row of the comparison: its job options reach the job, and
    more rounds split the same target epsilon over more votes (more noise a vote)."""
    out, rows = _compare_on_tiny_models(
        tmp_path, "--methods", "private_evolution,private_evolution+rounds6,"
        "private_evolution+fill_in", "--epsilons", "3")
    assert [r["method"] for r in rows] == ["private_evolution", "private_evolution+rounds6",
                                           "private_evolution+fill_in"]
    noise = {r["method"]: r["noise_multiplier"] for r in rows}
    assert noise["private_evolution+rounds6"] > noise["private_evolution"]
    assert noise["private_evolution+fill_in"] == noise["private_evolution"]
    for row in rows:
        assert row["epsilon_formal"] == pytest.approx(3.0, rel=0.02)
        report = json.loads((Path(row["output"]) / "privacy_report.json").read_text())
        evolution = report["parameters"]
        assert evolution["pe_rounds"] == (6 if row["method"].endswith("rounds6") else 3)
        assert evolution["pe_variation"] == ("fill_in" if row["method"].endswith("fill_in")
                                             else "template")


def test_text_rows_are_scored_against_held_out_reviews_cut_to_the_generation_budget(tmp_path):
    """Real reviews are several times longer than a synthetic text can be; scored whole,
    MAUVE mostly measures length. By default they are cut to --max_new_tokens tokens of
    the LM; --real_length full (here through --rescore_from) keeps them whole."""
    from offline_models.loading import load_causal_lm

    out, rows = _compare_on_tiny_models(tmp_path, "--methods", "non_private")
    cut = rows[0]["evaluation"]["lengths"]["real"]["chars"]
    lm = load_causal_lm("tiny-llama3")
    samples = rows[0]["evaluation"]
    assert cut["max"] <= 3 * max(len(lm.decode([t])) for t in range(lm.vocabulary_size))
    whole_out = tmp_path / "whole"
    assert compare_methods.main(["--rescore_from", str(out / "compare.json"), "--output",
                                 str(whole_out), "--real_length", "full"]) == 0
    whole = json.loads((whole_out / "compare.json").read_text())["rows"][0]
    assert whole["evaluation"]["lengths"]["real"]["chars"]["mean"] > 3 * cut["mean"]
    # The synthetic side is the same texts either way.
    assert (whole["evaluation"]["lengths"]["synthetic"]
            == samples["lengths"]["synthetic"])
