"""Small inputs for pipeline tests, written by the tests themselves."""

import csv
import json

import numpy as np

WORDS = ("the food was great and the service friendly we will come back soon prices fair "
         "staff kind noodles pizza shoes shirts sale cheap store mall").split()
LABELS = ("Restaurants", "Shopping")


def write_reviews_csv(path, n=48, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "category", "stars"])
        writer.writeheader()
        for i in range(n):
            words = rng.choice(WORDS, size=int(rng.integers(6, 14)))
            writer.writerow({"id": f"r{i}", "text": " ".join(words),
                             "category": LABELS[i % 2], "stars": str(1 + i % 5)})
    return path


# The shortest --run_secret allowed (128 bits); fixed, so that runs compare byte for byte.
FIXED_SECRET = "0123abcd" * 4


def tiny_args(input_path, output, *extra, secret=FIXED_SECRET):
    return ["--input", str(input_path), "--output", str(output), "--lm", "tiny-llama3",
            "--encoder", "tiny-bert", "--encoder_sequence_length", "32",
            "--max_new_tokens", "4", "--batch_size", "4", "--run_secret", secret,
            "--public_corpus_size", "6", "--public_centers", "3", "--kept_centers", "2",
            "--kmeans_clusters", "2", "--kmeans_rounds", "2", "--stop_text", "",
            *extra]


def read_jsonl(directory, prefix):
    lines = []
    for path in sorted(directory.glob(f"{prefix}-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return lines


def synthetic_bytes(directory):
    return b"".join(p.read_bytes() for p in sorted(directory.glob("synthetic-*.jsonl")))
