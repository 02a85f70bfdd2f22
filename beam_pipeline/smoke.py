"""A real-model smoke run: embeddings of three sentences and a short continuation."""

from __future__ import annotations

import resource
import time

SENTENCES = (
    "The pasta was fresh and the waiter was friendly.",
    "Great noodles, and the staff were kind to us.",
    "My phone battery dies before lunch every day.",
)
PROMPT = "Yelp review (Restaurants):\nThe"


def run_smoke(*, lm: str, encoder: str, max_new_tokens: int) -> dict:
    from offline_models.joint_decoding import GenerationRequest, GreedyChooser
    from offline_models.loading import load_causal_lm, load_sentence_encoder

    started = time.time()
    sentence_encoder = load_sentence_encoder(encoder, sequence_length=64)
    vectors = sentence_encoder.embed(list(SENTENCES))
    print(f"Encoder {encoder}: {vectors.shape[0]} sentences -> {vectors.shape[1]} dimensions, unit norm")
    for i, sentence in enumerate(SENTENCES):
        similarities = " ".join(f"{float(vectors[i] @ vectors[j]):+.3f}" for j in range(len(SENTENCES)))
        print(f"  [{i}] cos {similarities}  {sentence}")

    language_model = load_causal_lm(lm)
    prompt_ids = language_model.encode(PROMPT)
    [result] = language_model.generate(
        [GenerationRequest("smoke", [prompt_ids], GreedyChooser(), max_new_tokens)])
    continuation = language_model.decode(result.token_ids)
    print(f"LM {lm} ({'KV-cached' if language_model.cached else 'recomputed'} decoding), "
          f"greedy, {len(result.token_ids)} new tokens:")
    print(f"  {PROMPT!r} -> {continuation!r}")
    peak_gb = _peak_rss_gb()
    print(f"Done in {time.time() - started:.1f} s, peak RSS {peak_gb:.2f} GB")
    return {"similarities": vectors @ vectors.T, "continuation": continuation, "peak_rss_gb": peak_gb}


def _peak_rss_gb() -> float:
    """This process's own peak RSS. Linux's ru_maxrss also keeps the high-water mark of
    the memory image a process had before exec, so a command started from a large
    process (a test runner holding models) would report the parent's size; VmHWM
    belongs to the current image only."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2

