"""The generation engine against the machine's limit and against Hugging Face, on the same rows.

    .venv/bin/python benchmarks/engine.py [--lm smollm2-135m] [--quick]

Rows: 16 DP batches of 8 Yelp seeds (dev.csv rows 0-127, cut to 500
characters) plus the public prompt each, 8 batches per model call, 32 new
tokens, sampling at top-k 50. Prints, measured in this one run:
- our private loop (`generate_jointly` over PrivateTokenChooser requests, as
  the pipeline's generation stage runs it);
- our plain generation of the same 144 rows, each row sampling its own
  continuation;
- Hugging Face transformers `generate()` on torch CPU over the same token
  rows, run in a separate venv under the cache directory that this script
  makes on first use (torch and transformers stay out of the project's
  requirements);
with wall time split into prefill, decode and the rest, achieved model
FLOP/s and its share of the machine's fp32 matmul peak (the better of a
large numpy and a large TensorFlow matmul, measured here too), and peak RSS.

Model FLOPs count useful work only: 2 x parameters per real prompt token
(padding excluded), the vocabulary head at the last prompt position and at
every decoded token, and attention over the real context (within the window
for sliding-window layers). In the private loop a member row's decoded token
needs the head on the public row's top-k columns only, and is counted so.

After the table, a profile of the private loop: prefill and decode against
the model's own matmuls alone at the same shapes (the most any engine could
reach here), the head over member rows, and attention over the cache alone.

`--quick` runs two small batches, 4 new tokens and a small matmul, without
the HF venv: a smoke run for tests and tiny models.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beam_pipeline.demo import DEFAULT_INPUT, YELP_TEMPLATE  # noqa: E402

MAX_CHARS = 500
LABEL = "Business Category: Restaurants"
TOP_K = 50
HF_REQUIREMENTS = ("torch==2.13.0", "transformers==5.23.0")
COLUMNS = ("engine", "wall s", "prefill s", "decode s", "rest s", "row-tokens",
           "synthetic tokens", "synthetic tok/s", "model TFLOP", "GFLOP/s", "MFU %",
           "HF s / this s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", default="smollm2-135m")
    parser.add_argument("--data", default=str(DEFAULT_INPUT))
    parser.add_argument("--batches", type=int, default=16, help="DP batches generated")
    parser.add_argument("--batch_size", type=int, default=8, help="seeds per DP batch")
    parser.add_argument("--batches_per_call", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--matmul_size", type=int, default=4096)
    parser.add_argument("--no_hf", action="store_true", help="skip the Hugging Face row")
    parser.add_argument("--no_plain", action="store_true", help="skip our plain generation")
    parser.add_argument("--intra_op_threads", type=int, default=0,
                        help="TensorFlow's intra-op pool size (0: its default)")
    parser.add_argument("--inter_op_threads", type=int, default=0,
                        help="TensorFlow's inter-op pool size (0: its default)")
    parser.add_argument("--quick", action="store_true",
                        help="2 batches of 4 seeds, 4 new tokens, small matmul, no HF")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.batch_size, args.batches_per_call = 2, 4, 2
        args.new_tokens, args.matmul_size, args.no_hf = 4, 512, True

    _set_tensorflow_threads(args.intra_op_threads, args.inter_op_threads)
    peak = matmul_peak(args.matmul_size)
    print(f"machine fp32 matmul peak: numpy {peak['numpy'] / 1e9:.1f} GFLOP/s, "
          f"TensorFlow {peak['tensorflow'] / 1e9:.1f} GFLOP/s "
          f"({args.matmul_size}x{args.matmul_size}, best of 3; {os.cpu_count()} cores "
          "seen, shared with whatever else runs); MFU below is against the higher")

    from offline_models.loading import load_causal_lm

    lm = load_causal_lm(args.lm)
    seeds = [text[:MAX_CHARS] for text in _texts(args.data)[:args.batches * args.batch_size]]
    if len(seeds) < args.batches * args.batch_size:
        raise SystemExit(f"{args.data} has fewer than {args.batches * args.batch_size} rows")
    batches = [_batch_prompts(seeds[b * args.batch_size:(b + 1) * args.batch_size])
               for b in range(args.batches)]
    calls = [batches[start:start + args.batches_per_call]
             for start in range(0, len(batches), args.batches_per_call)]
    rows_per_call = [sum(len(b) for b in call) for call in calls]
    print(f"LM {args.lm} ({'cached' if lm.cached else 'recomputed'} decoding), TensorFlow "
          f"threads intra-op {_threads(args.intra_op_threads)}, inter-op "
          f"{_threads(args.inter_op_threads)}, oneDNN "
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}; "
          f"{args.batches} DP batches of {args.batch_size} seeds + the public prompt, "
          f"{args.batches_per_call} batches ({rows_per_call[0]} rows) per call, "
          f"{args.new_tokens} new tokens, top-k {TOP_K}")

    counter = FlopCounter(lm)
    timed = TimedLM(lm, counter)
    _warm_up(lm, calls, args.new_tokens)
    rows = [_private(timed, calls, args)]
    if not args.no_plain:
        rows.append(_plain(timed, calls, args))
    hf = None
    if not args.no_hf:
        token_calls = [[lm.encode(p) for batch in call for p in batch] for call in calls]
        hf = hf_generate(args.lm, token_calls, args.new_tokens)
        hf_flops = sum(counter.call_flops([len(r) for r in call], args.new_tokens - 1)
                       for call in token_calls)
        rows.append({"engine": f"HF generate() torch {hf['torch']}, OMP {hf['omp_wait_policy']}",
                     "wall": hf["wall"],
                     "prefill": hf["prefill"], "decode": hf["wall"] - hf["prefill"], "rest": 0.0,
                     "row_tokens": hf["row_tokens"], "synthetic": hf["row_tokens"],
                     "flops": hf_flops})
    # The machine's peak is the best either library shows: on AVX-512 cores
    # oneDNN's matmul can beat numpy's BLAS by 2x, and the model runs on oneDNN.
    print_table(rows, max(peak.values()), hf["wall"] if hf else None)
    print_profile(lm, counter, rows[0], rows_per_call[0], args.batches_per_call,
                  max(peak.values()))
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\npeak RSS: this process {own_peak:.2f} GB" + (
        f"; HF process {hf['peak_rss_gb']:.2f} GB ({hf['threads']} torch threads, "
        f"transformers {hf['transformers']})" if hf else ""))
    print("HF 'decode s' is from its first logits to the end; its 'rest' is inside both.")
    return 0


# ------------------------------------------------------------------ the rows


def _texts(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def _batch_prompts(members) -> list[str]:
    from transforms.generate import render_prompt

    return ([render_prompt(YELP_TEMPLATE, m, LABEL) for m in members]
            + [render_prompt(YELP_TEMPLATE, "", LABEL)])


def _private(lm, calls, args) -> dict:
    from mechanisms.generate import GenerationConfig, PrivateTokenChooser
    from offline_models.joint_decoding import GenerationRequest

    config = GenerationConfig(aggregator="median", clip=6.0, temperature=1.0,
                              expected_batch_size=args.batch_size,
                              max_new_tokens=args.new_tokens, top_k=TOP_K)
    request_calls = [[GenerationRequest(
        key=(c, b), prompts=prompts,
        chooser=PrivateTokenChooser(config, secret="ab12", batch_id=f"b{c}-{b}"),
        max_new_tokens=args.new_tokens) for b, prompts in enumerate(call)]
        for c, call in enumerate(calls)]
    return _run("our private loop", lm, request_calls)


def _plain(lm, calls, args) -> dict:
    from benchmarks.compare_methods import sample_own_prompt
    from offline_models.joint_decoding import GenerationRequest

    request_calls = [[GenerationRequest(
        key=f"{c}-{i}", prompts=[prompt], chooser=sample_own_prompt(f"{c}-{i}", secret="plain"),
        max_new_tokens=args.new_tokens)
        for i, prompt in enumerate(p for batch in call for p in batch)]
        for c, call in enumerate(calls)]
    return _run("our plain generation", lm, request_calls)


def _run(name, lm, request_calls) -> dict:
    from offline_models.joint_decoding import generate_jointly

    lm.reset()
    started = time.perf_counter()
    results = [r for requests in request_calls for r in generate_jointly(lm, requests)]
    wall = time.perf_counter() - started
    return {"engine": name, "wall": wall, "prefill": lm.prefill_seconds,
            "decode": lm.decode_seconds, "rest": wall - lm.prefill_seconds - lm.decode_seconds,
            "row_tokens": lm.row_tokens, "synthetic": sum(len(r.token_ids) for r in results),
            "flops": lm.flops, "prefill_tokens": lm.prefill_tokens,
            "prefill_rows": lm.prefill_rows, "decode_steps": lm.decode_steps,
            "prefill_flops": lm.prefill_flops, "decode_flops": lm.decode_flops,
            "cache_lengths": list(lm.cache_lengths)}


def _warm_up(lm, calls, new_tokens):
    """Compiles the decoding step for each call's shape before anything is timed.

    The shape is set by the row count and the longest prompt, so one long
    prompt among one-token ones costs a fraction of a real prefill.
    """
    for call in calls:
        prompts = [lm.encode(p) for batch in call for p in batch]
        longest = max(prompts, key=len)
        # The private loop's steps compute the head for the public rows only (the
        # last of each batch), the plain generation's for every row: two shapes.
        public_rows = list(itertools.accumulate(len(batch) for batch in call))
        for full_rows in (None, [row - 1 for row in public_rows]):
            state = lm.start([longest] + [longest[-1:]] * (len(prompts) - 1),
                             max_new_tokens=max(1, new_tokens - 1), full_rows=full_rows)
            lm.advance(state, [0] * len(prompts))


# ------------------------------------------------------------ time and FLOPs


class FlopCounter:
    """Model FLOPs of a call from the architecture (see the module docstring)."""

    def __init__(self, lm):
        backbone = lm.backbone
        self.hidden = int(backbone.hidden_dim)
        self.head = 2 * self.hidden * lm.vocabulary_size
        layers = backbone.transformer_layers
        self.per_token = 2 * sum(int(w.numpy().size) for layer in layers for w in layer.weights)
        head_dim = getattr(backbone, "head_dim", None) or self.hidden // backbone.num_query_heads
        query_width = int(backbone.num_query_heads) * int(head_dim)
        self.windows = []
        for layer in layers:
            attention = getattr(layer, "attention", None)
            sliding = attention is not None and attention.use_sliding_window_attention
            self.windows.append(attention.sliding_window_size if sliding else None)
        # QK^T and AV: 2 FLOPs per multiply-add, 2 products per visible key.
        self.per_key = 4 * query_width

    def attention(self, context: int) -> int:
        return sum(self.per_key * (context if w is None else min(context, w))
                   for w in self.windows)

    def call_flops(self, prompt_lengths, decode_steps: int) -> int:
        total = 0
        for length in prompt_lengths:
            total += self.per_token * length + self.head
            total += sum(self.attention(position + 1) for position in range(length))
            for step in range(decode_steps):
                total += self.per_token + self.head + self.attention(length + step + 1)
        return total


class MatmulBound:
    """The model's own matmuls alone, at the engine's shapes: the most any engine can reach.

    One compiled call multiplies an (m, in) input by every kernel of every block and
    by the vocabulary head, each weight read once as in a real step, and nothing else:
    no attention over the cache, norms, rotary embeddings, activations or copies. Its
    FLOP/s at m = rows of a decoding step, or at m = token rows of a prefill chunk, is
    the ceiling of model-FLOP utilisation at that shape on this machine.
    """

    def __init__(self, lm):
        from offline_models.loading import use_tensorflow_backend

        use_tensorflow_backend()
        import tensorflow as tf

        self._tf = tf
        self.hidden = int(lm.backbone.hidden_dim)
        self.kernels = []
        for layer in lm.backbone.transformer_layers:
            for weight in layer.weights:
                shape = tuple(int(d) for d in weight.shape)
                if len(shape) < 2:
                    continue
                # EinsumDense kernels: (hidden, heads, dim) in, (heads, dim, hidden) out.
                rows = shape[0] if shape[0] == self.hidden else int(np.prod(shape[:-1]))
                self.kernels.append(tf.reshape(tf.convert_to_tensor(weight), (rows, -1)))
        self.head = tf.convert_to_tensor(lm.backbone.token_embedding.embeddings)
        self.body_flops_per_row = sum(2 * int(k.shape[0]) * int(k.shape[1])
                                      for k in self.kernels)
        self.head_flops_per_row = 2 * int(self.head.shape[0]) * int(self.head.shape[1])
        self._compiled = tf.function(self._matmuls, jit_compile=True)

    def _matmuls(self, inputs, head_rows):
        tf = self._tf
        # Summing every product keeps each one live; the sum itself is a negligible pass.
        total = tf.add_n([tf.reduce_sum(tf.linalg.matmul(inputs[int(k.shape[0])], k))
                          for k in self.kernels])
        head = tf.linalg.matmul(inputs[self.hidden][:head_rows], self.head, transpose_b=True)
        return total + tf.reduce_sum(head)

    def seconds(self, rows: int, head_rows: int, repeats: int = 5) -> float:
        """Best-of-`repeats` wall time of one call at `rows` input rows."""
        tf = self._tf
        rng = np.random.default_rng(0)
        inputs = {width: tf.constant(rng.standard_normal((rows, width), dtype=np.float32))
                  for width in {int(k.shape[0]) for k in self.kernels} | {self.hidden}}
        return best_seconds(lambda: self._compiled(inputs, head_rows).numpy(), repeats)

    def flops(self, rows: int, head_rows: int) -> int:
        return rows * self.body_flops_per_row + head_rows * self.head_flops_per_row


def attention_seconds(lm, rows: int, cache_length: int, repeats: int = 5) -> float:
    """One decoding step's attention over a full cache, alone: every layer's queries
    against its keys and values, as the decoding step computes it, and nothing else."""
    import tensorflow as tf

    shape = lm._layer_cache_shape(rows, cache_length)
    heads, head_dim = shape[3], shape[4]
    groups = int(lm.backbone.num_query_heads) // heads
    rng = np.random.default_rng(0)
    caches = [tf.constant(rng.standard_normal(shape, dtype=np.float32))
              for _ in lm.backbone.transformer_layers]
    query = tf.constant(rng.standard_normal((rows, heads, groups, head_dim), dtype=np.float32))

    @tf.function(jit_compile=True)
    def attend(query):
        total = 0.0
        for cache in caches:
            scores = tf.einsum("bkgd,btkd->bkgt", query, cache[:, 0])
            weights = tf.nn.softmax(scores, axis=-1)
            total += tf.reduce_sum(tf.einsum("bkgt,btkd->bkgd", weights, cache[:, 1]))
        return total

    return best_seconds(lambda: attend(query).numpy(), repeats)


def print_profile(lm, counter, private_row, rows_per_call, requests_per_call, peak_flops):
    """Where the private loop's time goes, against the matmuls alone at the same shapes."""
    from offline_models import causal_lm

    bound = MatmulBound(lm)
    decode_rows = causal_lm._round_up(rows_per_call, causal_lm.ROW_BUCKET)
    # The loop's steps run the whole head on the public rows only.
    step_alone = bound.seconds(decode_rows, requests_per_call)
    step_alone_every_head = bound.seconds(decode_rows, decode_rows)
    tokens_per_row = max(1, round(private_row["prefill_tokens"] / max(1, private_row["prefill_rows"])))
    chunk_rows = causal_lm.PREFILL_ROWS * tokens_per_row
    chunk_alone = bound.seconds(chunk_rows, causal_lm.PREFILL_ROWS)
    steps = max(1, private_row["decode_steps"])
    prefill_alone = chunk_alone * private_row["prefill_tokens"] / chunk_rows
    decode_alone = step_alone * steps
    print(f"\nwhere the private loop's time goes ({lm.backbone.__class__.__name__}); 'matmuls "
          "alone' is the model's own kernels multiplied at the same shapes in one compiled "
          "call, nothing else, best of 5, measured now:")
    columns = ("phase", "shape", "model TFLOP", "measured s", "MFU %", "matmuls alone s",
               "matmuls alone: % of peak", "rest s")
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for name, shape, flops, measured, alone, rate in (
            ("prefill", f"chunks of {causal_lm.PREFILL_ROWS} rows x ~{tokens_per_row} tokens",
             private_row["prefill_flops"], private_row["prefill"], prefill_alone,
             bound.flops(chunk_rows, causal_lm.PREFILL_ROWS) / chunk_alone),
            ("decode", f"{steps} steps of {decode_rows} rows x 1 token",
             private_row["decode_flops"], private_row["decode"], decode_alone,
             bound.flops(decode_rows, requests_per_call) / step_alone)):
        print(" | ".join((name, shape, f"{flops / 1e12:.2f}", f"{measured:.2f}",
                          f"{100 * flops / measured / peak_flops:.0f}", f"{alone:.2f}",
                          f"{100 * rate / peak_flops:.0f}", f"{measured - alone:.2f}")),
              flush=True)
    cache_length = max(private_row["cache_lengths"] or [0])
    print(f"decode step: {1e3 * private_row['decode'] / steps:.1f} ms measured; matmuls alone "
          f"{1e3 * step_alone:.1f} ms with the head on the {requests_per_call} public rows "
          f"only, as the loop runs it; the head over the {decode_rows - requests_per_call} "
          f"member rows too would add {1e3 * (step_alone_every_head - step_alone):.1f} ms")
    if cache_length:
        kv_bytes = 4 * int(np.prod(lm._layer_cache_shape(decode_rows, cache_length))) * len(
            lm.backbone.transformer_layers)
        attention = attention_seconds(lm, decode_rows, cache_length)
        row_flops = counter.per_token + counter.head + counter.attention(cache_length)
        print(f"decode step: attention over the {cache_length}-slot cache alone "
              f"{1e3 * attention:.1f} ms, reading {kv_bytes / 1e6:.0f} MB of keys and values "
              f"({kv_bytes / attention / 1e9:.1f} GB/s), while model FLOPs count attention "
              f"as {100 * counter.attention(cache_length) / row_flops:.0f}% of a decoded "
              "token's work")


class TimedLM:
    """The model as `generate_jointly` sees it, with prefill and decode clocks."""

    def __init__(self, lm, counter):
        self._lm, self._counter = lm, counter
        self.reset()

    def reset(self):
        self.prefill_seconds = self.decode_seconds = 0.0
        self.row_tokens = self.flops = 0
        self.prefill_tokens = self.prefill_rows = self.decode_steps = 0
        self.prefill_flops = self.decode_flops = 0
        self.cache_lengths = []

    def start(self, prompts, max_new_tokens, full_rows=None):
        started = time.perf_counter()
        state = self._lm.start(prompts, max_new_tokens, full_rows=full_rows)
        self.prefill_seconds += time.perf_counter() - started
        flops = self._counter.call_flops([len(p) for p in prompts], 0)
        self.flops += flops
        self.prefill_flops += flops
        if state.caches is not None:
            self.cache_lengths.append(state.cache_length)
        self.row_tokens += len(prompts)
        self.prefill_tokens += sum(len(p) for p in prompts)
        self.prefill_rows += len(prompts)
        return state

    def advance(self, state, next_tokens):
        context = [len(s) for s in state.sequences]
        started = time.perf_counter()
        logits = self._lm.advance(state, next_tokens)
        self.decode_seconds += time.perf_counter() - started
        counter = self._counter
        flops = sum(counter.per_token + counter.head + counter.attention(c + 1) for c in context)
        if state.full_rows is not None:
            # Rows outside full_rows need only the TOP_K columns their chooser reads.
            flops -= (len(context) - len(state.full_rows)) * (
                counter.head - 2 * counter.hidden * TOP_K)
        self.flops += flops
        self.decode_flops += flops
        self.row_tokens += len(context)
        self.decode_steps += 1
        return logits

    def __getattr__(self, name):
        return getattr(self._lm, name)


def _set_tensorflow_threads(intra_op: int, inter_op: int):
    """Pool sizes take effect only before TensorFlow runs its first op."""
    from offline_models.loading import use_tensorflow_backend

    use_tensorflow_backend()
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def _threads(count: int) -> str:
    return str(count) if count else "default"


def matmul_peak(size: int) -> dict:
    """Best-of-3 fp32 matmul FLOP/s of numpy and of TensorFlow on this machine, now."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2 * size ** 3

    from offline_models.loading import use_tensorflow_backend

    use_tensorflow_backend()
    import tensorflow as tf

    ta, tb = tf.constant(a), tf.constant(b)
    return {"numpy": flops / best_seconds(lambda: a @ b, 3),
            "tensorflow": flops / best_seconds(lambda: tf.linalg.matmul(ta, tb).numpy(), 3)}


def best_seconds(function, repeats: int) -> float:
    """The shortest of `repeats` timed calls, after one untimed call that compiles and
    allocates."""
    function()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def print_table(rows, peak_flops, hf_wall):
    print()
    print(" | ".join(COLUMNS))
    print(" | ".join("---" for _ in COLUMNS))
    for row in rows:
        achieved = row["flops"] / row["wall"]
        print(" | ".join([
            row["engine"], f"{row['wall']:.2f}", f"{row['prefill']:.2f}", f"{row['decode']:.2f}",
            f"{row['rest']:.2f}", str(row["row_tokens"]), str(row["synthetic"]),
            f"{row['synthetic'] / row['wall']:.1f}", f"{row['flops'] / 1e12:.2f}",
            f"{achieved / 1e9:.1f}", f"{100 * achieved / peak_flops:.0f}",
            f"{hf_wall / row['wall']:.2f}" if hf_wall else "-"]), flush=True)


# ------------------------------------------------------------ Hugging Face


def hf_venv() -> Path:
    """A venv with torch and transformers under the cache directory, made once."""
    from offline_models import registry

    venv = registry.cache_dir() / "hf-generate-venv"
    marker = venv / "dpsynth-requirements.txt"
    wanted = "\n".join(HF_REQUIREMENTS)
    if marker.is_file() and marker.read_text() == wanted:
        return venv
    print(f"making {venv} with {', '.join(HF_REQUIREMENTS)} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    *HF_REQUIREMENTS], check=True)
    marker.write_text(wanted)
    return venv


def hf_generate(lm_reference: str, token_calls, new_tokens: int) -> dict:
    from offline_models import registry

    folder = registry.resolve_lm(lm_reference)
    python = hf_venv() / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="dpsynth-hf-") as work:
        job = Path(work) / "job.json"
        job.write_text(json.dumps({"model": str(folder), "calls": token_calls,
                                   "new_tokens": new_tokens, "top_k": TOP_K}))
        # torch's OpenMP threads spin while they wait; on cores shared with other
        # work a spinning thread holds a core that its partner needs, and an
        # 8-row job took 20-30x longer than with passive waiting. TensorFlow's
        # pool does not spin, so passive waiting is the like-for-like setting.
        environment = {**os.environ,
                       "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        result = subprocess.run([str(python), str(REPO / "benchmarks" / "hf_generate.py"),
                                 str(job)], capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        raise RuntimeError(f"HF generate() failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    raise SystemExit(main())
