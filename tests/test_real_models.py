"""Checks on the real converted models. `make test` prepares them first."""

import subprocess
import sys

import numpy as np
import pytest

from tests.test_causal_lm import MIXED_PROMPTS, _cached_vs_recomputed

pytestmark = pytest.mark.slow


def test_smollm2_ranks_paris_first(real_lm):
    logits = real_lm.next_token_logits([real_lm.encode("The capital of France is")])[0]
    assert real_lm.decode([int(np.argmax(logits))]) == " Paris"


def test_smollm2_cached_decoding_matches_recomputation(real_lm):
    assert real_lm.cached
    assert _cached_vs_recomputed(real_lm, MIXED_PROMPTS, steps=5) <= 1e-3


def test_minilm_puts_paraphrases_closer_than_unrelated_text(real_encoder):
    a, b, c = real_encoder.embed([
        "The waiter was friendly and the soup was delicious.",
        "Our server was kind, and the soup tasted great.",
        "The quarterly tax forms are due at the end of March.",
    ])
    np.testing.assert_allclose(np.linalg.norm([a, b, c], axis=1), 1.0, atol=1e-5)
    assert a @ b > a @ c + 0.3


def _dpsynth(*args):
    return subprocess.run([sys.executable, "-m", "beam_pipeline.cli", *args],
                          capture_output=True, text=True, timeout=600)


def test_second_prepare_is_a_no_op():
    result = _dpsynth("models", "prepare")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines and all("nothing to do" in line for line in lines), result.stdout


def test_smoke_demo_prints_embeddings_and_a_continuation_within_4gb():
    result = _dpsynth("smoke", "--max_new_tokens", "8")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "3 sentences -> 384 dimensions" in out
    assert "KV-cached decoding" in out and "->" in out
    peak = float(out.rsplit("peak RSS", 1)[1].split("GB")[0])
    assert peak <= 4.0


@pytest.mark.gemma
def test_gemma3_serves_logits_and_generation_through_the_runtime():
    from offline_models.joint_decoding import GenerationRequest, GreedyChooser
    from offline_models.loading import load_causal_lm

    lm = load_causal_lm("gemma3-270m")
    assert lm.vocabulary_size == 262144 and lm.cached
    prompt = lm.encode("The capital of France is the city of")
    logits = lm.next_token_logits([prompt, lm.encode("Hello")])
    assert logits.shape == (2, 262144)
    assert lm.decode([int(np.argmax(logits[0]))]) == " Paris"
    [result] = lm.generate([GenerationRequest("g", [prompt], GreedyChooser(), 3)])
    assert result.token_ids[0] == int(np.argmax(logits[0]))


def test_real_models_end_to_end(tmp_path):
    """SmolLM2 + MiniLM through the whole job: 40 Yelp records, 8 tokens."""
    import json

    from beam_pipeline.demo import DEFAULT_INPUT
    from beam_pipeline.run import run

    out = tmp_path / "out"
    summary = run(["--input", str(DEFAULT_INPUT), "--output", str(out), "--max_records", "40",
                   "--clustering", "public_centers", "--aggregator", "median",
                   "--public_corpus_size", "8", "--public_centers", "2", "--kept_centers", "2",
                   "--histogram_noise", "1", "--batch_size", "8", "--max_new_tokens", "8",
                   "--clip", "4", "--run_secret", "5eed" * 8], say=lambda _: None)
    assert summary["records_accepted"] == 5000 and summary["records_rejected"] == 0
    # About 40 kept: each record with probability 40 / (5000 + noise).
    kept = summary["records_embedded"]
    assert 20 <= kept <= 60 and summary["records_over_max_records"] == 5000 - kept
    assert summary["synthetic_records"] == summary["planned_batches"] >= 2
    lines = [json.loads(line) for path in out.glob("synthetic-*.jsonl")
             for line in path.read_text().splitlines()]
    assert len(lines) == summary["synthetic_records"]
    assert sum(len(line["text"].split()) for line in lines) >= len(lines)  # real words came out
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["ex_post"]["generation"]["total_epsilon"]["max"] <= report["formal_epsilon"]


@pytest.mark.gemma
def test_gemma3_cached_decoding_matches_recomputation_past_its_sliding_window():
    from offline_models.loading import load_causal_lm

    lm = load_causal_lm("gemma3-270m")
    window = lm.backbone.sliding_window_size
    long_prompt = " ".join(f"Review {i}: the soup was hot and the staff were kind."
                           for i in range(60))
    assert len(lm.encode(long_prompt)) > window > max(len(lm.encode(p)) for p in MIXED_PROMPTS)
    assert _cached_vs_recomputed(lm, MIXED_PROMPTS + [long_prompt], steps=5) <= 1e-3
