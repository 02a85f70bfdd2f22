"""Times Hugging Face transformers `generate()` on torch CPU over given token rows.

Runs inside the separate venv that `benchmarks/engine.py` makes (torch and
transformers are never in the project's requirements), so it imports nothing
from the project. Reads a JSON job, prints one JSON result line:

    {"model": folder, "calls": [[[token ids], ...], ...], "new_tokens": 32, "top_k": 50}
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def main(job_path: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    job = json.loads(open(job_path, encoding="utf-8").read())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    model.eval()

    class FirstLogits(LogitsProcessor):
        """Notes when the first logits arrive: the end of the prefill."""

        def __init__(self):
            self.at = None

        def __call__(self, input_ids, scores):
            if self.at is None:
                self.at = time.perf_counter()
            return scores

    def generate(rows, new_tokens):
        width = max(len(r) for r in rows)
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row)
            attention_mask[i, width - len(row):] = 1
        first = FirstLogits()
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                top_k=job["top_k"], temperature=1.0, top_p=1.0,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
                logits_processor=LogitsProcessorList([first]))
        ended = time.perf_counter()
        return ended - started, first.at - started, int(output.shape[1] - width) * len(rows)

    generate(job["calls"][0][:8], 2)  # warm-up: first-call allocation and kernel choice
    wall = prefill = 0.0
    tokens = 0
    for rows in job["calls"]:
        call_wall, call_prefill, call_tokens = generate(rows, job["new_tokens"])
        wall += call_wall
        prefill += call_prefill
        tokens += call_tokens
    print(json.dumps({
        "wall": wall, "prefill": prefill, "row_tokens": tokens,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default").lower(),
        "peak_rss_gb": _peak_rss_gb(),
    }))
    return 0


def _peak_rss_gb() -> float:
    """This process's own peak: getrusage's ru_maxrss keeps the parent's peak across
    fork and exec, so it would report the benchmark's memory, not ours."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 ** 2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
