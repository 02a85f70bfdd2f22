"""Before/after of TensorFlow's thread pools and oneDNN on the private loop, in one run.

    .venv/bin/python benchmarks/tf_threads.py [--lm smollm2-135m] [--batches 8]

Both take effect only when TensorFlow starts, so each setting runs
`benchmarks/engine.py` (private loop only, no HF) in its own process. The
settings take turns for `--rounds` rounds, so that the drift of a shared
machine shows as the spread within each setting.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SETTINGS = (
    ("default", [], {}),
    ("intra-op 2, inter-op 1", ["--intra_op_threads", "2", "--inter_op_threads", "1"], {}),
    ("oneDNN off", [], {"TF_ENABLE_ONEDNN_OPTS": "0"}),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", default="smollm2-135m")
    parser.add_argument("--batches", type=int, default=8, help="DP batches: 8 make one call")
    parser.add_argument("--data", default=None)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    common = [sys.executable, str(REPO / "benchmarks" / "engine.py"), "--lm", args.lm,
              "--batches", str(args.batches), "--no_hf", "--no_plain", "--matmul_size", "2048"]
    if args.data:
        common += ["--data", args.data]
    print("setting | wall s | prefill s | decode s | rest s | GFLOP/s | MFU % | TF matmul GFLOP/s")
    print(" | ".join(["---"] * 8))
    for round_number, (name, flags, environment) in (
            (r, setting) for r in range(1, args.rounds + 1) for setting in SETTINGS):
        name = f"{name} (round {round_number})"
        result = subprocess.run(common + flags, capture_output=True, text=True,
                                env={**os.environ, **environment})
        if result.returncode != 0:
            print(f"{name} | failed: {result.stderr.strip().splitlines()[-1:]}")
            continue
        lines = result.stdout.splitlines()
        row = next(line for line in lines if line.startswith("our private loop")).split(" | ")
        tf_peak = lines[0].split("TensorFlow ")[1].split(" GFLOP/s")[0]
        print(" | ".join([name, *row[1:5], row[9], row[10], tf_peak]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
