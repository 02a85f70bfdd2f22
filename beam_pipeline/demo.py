"""`dpsynth demo`: the whole job on a sample of the bundled Yelp reviews, with real models."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from beam_pipeline.run import configure_logging, run
from transforms.write import read_json_lines

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "yelp" / "dev.csv"
DEFAULT_OUTPUT = REPO / "output" / "demo"
YELP_CATEGORIES = (
    "Restaurants", "Bars", "Shopping", "Event Planning & Services", "Beauty & Spas",
    "Hotels & Travel", "Arts & Entertainment", "Grocery", "Health & Medical", "Home & Garden")
YELP_TEMPLATE = "Yelp review ({label}):\n{text}\n\nAnother Yelp review ({label}):\n"


def demo_arguments(*, input_path: Path, output: Path, records: int, secret: str | None) -> list:
    labels = ",".join(f"Business Category: {c}" for c in YELP_CATEGORIES)
    arguments = [
        "--input", str(input_path), "--output", str(output), "--max_records", str(records),
        "--text_column", "text", "--label_column", "label1", "--label_values", labels,
        "--prompt_template", YELP_TEMPLATE,
        "--clustering", "public_centers", "--aggregator", "median",
        "--batch_size", "8", "--clip", "6", "--temperature", "1", "--top_k", "50",
        "--max_new_tokens", "48",
        "--public_corpus_size", "40", "--public_centers", "8", "--kept_centers", "4",
        "--max_chars", "800", "--generation_batches_per_call", "8",
    ]
    if secret:
        arguments += ["--run_secret", secret]
    return arguments


def run_demo(*, input_path: Path, output: Path, records: int, secret: str | None = None) -> dict:
    configure_logging()
    if output.exists():  # the demo's own folder: stale shards would mix into its output
        shutil.rmtree(output)
    started = time.time()
    summary = run(demo_arguments(input_path=input_path, output=output, records=records,
                                 secret=secret))
    print()
    print(f"Outputs in {output}:")
    for path in sorted(output.iterdir()):
        print(f"  {path.name}")
    synthetic = read_json_lines(str(output), "synthetic")
    examples = sorted((r for r in synthetic if r["text"].strip()),
                      key=lambda r: -len(r["text"]))[:3]
    print("\nThree synthetic records:")
    for record in examples:
        print(f"  [{record.get('label', '-')}, cluster {record['cluster']}]")
        print("    " + record["text"].strip().replace("\n", "\n    "))
    report = json.loads((output / "privacy_report.json").read_text())
    print("\nPrivacy summary:")
    print(f"  formal (epsilon, delta) = ({report['formal_epsilon']:.4g}, {report['delta']:g}) "
          "for every record, all stages composed")
    for stage in report["stages"]:
        print(f"    {stage['stage']}: epsilon {stage['epsilon']:.4g}")
    for stage, figures in report["ex_post"].items():
        total = figures["total_epsilon"]
        print(f"  {stage}, ex-post (data-dependent, not a formal guarantee): epsilon max "
              f"{total['max']:.4g}, median {total['p50']:.4g} over {figures['batches']} batches")
    tokens = report["tokens"].get("generation", {})
    print(f"  tokens: {tokens.get('tokens', 0)} generated, {tokens.get('private_tokens', 0)} private")
    print(f"\nDemo finished in {time.time() - started:.0f} s ({summary['records_embedded']} of "
          f"{summary['records_accepted']} records used, {summary['synthetic_records']} "
          f"synthetic).")
    return summary
