"""Next-token logit throughput of the causal-LM runtime: cached, recomputed, keras-hub generate().

Prints, for batches of 8 and 32 rows with 64-token prompts and 32 generated
tokens (greedy, per row):
- logit rows per second of KV-cached decoding and of full recomputation;
- the same for keras-hub's own `generate()` on the same batch, and ratios
  measured in this one run;
- peak RSS.
Each engine runs once to warm up (compile) before it is timed.

    python benchmarks/lm_step.py [--lm smollm2-135m] [--batches 8 32]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

PROMPT_TOKENS = 64
NEW_TOKENS = 32
SOURCE_TEXT = (
    "We came here on a rainy Tuesday night and the place was packed. The staff found us a "
    "table by the window within ten minutes, and the server walked us through the specials. "
    "The soup was hot and peppery, the bread came out warm, and the grilled fish was cooked "
    "just right, flaky inside with a crisp skin. Dessert was a small lemon tart that we shared. "
    "Prices are fair for the portions, parking is easy, and we will be back with friends soon."
)


def _prompts(lm, rows):
    ids = lm.encode(SOURCE_TEXT * 3)
    # Distinct prompts per row: a sliding window over the text.
    return [ids[row:row + PROMPT_TOKENS] for row in range(rows)]


def _cached(lm, prompts):
    state = lm.start(prompts, NEW_TOKENS)
    for _ in range(NEW_TOKENS - 1):
        lm.advance(state, state.logits.argmax(axis=1))
    return state


def _recomputed(lm, prompts):
    sequences = [list(p) for p in prompts]
    for _ in range(NEW_TOKENS):
        logits = lm.next_token_logits(sequences)
        for seq, token in zip(sequences, logits.argmax(axis=1)):
            seq.append(int(token))
    return sequences


def _keras_hub_generate(keras_model, prompts):
    rows = len(prompts)
    width = PROMPT_TOKENS + NEW_TOKENS
    token_ids = np.zeros((rows, width), dtype="int32")
    padding_mask = np.zeros((rows, width), dtype="bool")
    for row, prompt in enumerate(prompts):
        token_ids[row, :len(prompt)] = prompt
        padding_mask[row, :len(prompt)] = True
    return keras_model.generate({"token_ids": token_ids, "padding_mask": padding_mask},
                                stop_token_ids=None)


def _timed(function, *args, repeats=1):
    function(*args)  # warm-up: compilation and first-call allocation
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - started)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default="smollm2-135m")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args()

    from offline_models.causal_lm import CausalLanguageModel
    from offline_models.loading import load_keras_causal_lm

    keras_model = load_keras_causal_lm(args.lm)
    lm = CausalLanguageModel(keras_model, cached=True)
    recompute_lm = CausalLanguageModel(keras_model, cached=False)
    # keras-hub's generate() expects token ids when it has no preprocessor.
    preprocessor = keras_model.preprocessor
    keras_model.compile(sampler="greedy")

    print(f"LM {args.lm}; {PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens per row, "
          "greedy; seconds are the best of 2 timed runs (1 for recomputation) after a warm-up\n")
    header = ("rows", "cached s", "cached rows/s", "recomputed s", "recomputed rows/s",
              "generate() s", "generate() rows/s", "cached/recomputed", "cached/generate()")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for rows in args.batches:
        prompts = _prompts(lm, rows)
        produced = rows * NEW_TOKENS
        cached_s = _timed(_cached, lm, prompts, repeats=2)
        # Recomputation is slow enough that one timed run after the warm-up is stable.
        recomputed_s = _timed(_recomputed, recompute_lm, prompts, repeats=1)
        keras_model.preprocessor = None
        try:
            generate_s = _timed(_keras_hub_generate, keras_model, prompts, repeats=2)
        finally:
            keras_model.preprocessor = preprocessor
        print(" | ".join([
            str(rows), f"{cached_s:.2f}", f"{produced / cached_s:.1f}",
            f"{recomputed_s:.2f}", f"{produced / recomputed_s:.1f}",
            f"{generate_s:.2f}", f"{produced / generate_s:.1f}",
            f"{recomputed_s / cached_s:.2f}x", f"{generate_s / cached_s:.2f}x"]), flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\npeak RSS {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
