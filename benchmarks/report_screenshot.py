"""A headless Chromium screenshot of a `dpsynth evaluate` page, to look at it as a reader will.

    .venv/bin/python benchmarks/report_screenshot.py [PAGE.html] [--out PNG] [--work DIR]

Without a page, it first writes a sample one with `dpsynth evaluate` on made-up records in
--work (default: a new temporary folder, kept): the tiny test encoder, --private, and a
privacy_report.json beside the synthetic file, with fewer than 50 synthetic records, so that
every part of the page shows: the private-data banner, the verdict, the run's epsilon, the
sample texts and the few-records warnings. It prints the PNG's path.

Needs Debian's chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH, HEIGHT = 1200, 1600
# Running as root (as CI does) needs --no-sandbox; the rest keep a headless run offline and
# free of first-run work.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")

WORDS = {"billing": "invoice charged twice refund card payment receipt amount".split(),
         "login": "password reset account locked sign code email browser".split()}
FILLER = "please help today again still cannot since yesterday thanks".split()


def chromium_binary() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: str | os.PathLike, png: str | os.PathLike, *, width: int = WIDTH,
               height: int = HEIGHT, timeout: float = 120) -> Path:
    """Renders the local HTML `page` in headless Chromium into `png` (width x height pixels)."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("chromium is not installed: apt-get install -y chromium")
    png = Path(png).resolve()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="dpsynth-chromium-") as profile:
        completed = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
             f"--window-size={width},{height}", Path(page).resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if not png.is_file():
        tail = "\n".join((completed.stderr or "").splitlines()[-5:])
        raise RuntimeError(f"chromium wrote no screenshot (exit {completed.returncode}): {tail}")
    return png


def _ticket(rng, label: str) -> str:
    words = list(rng.choice(WORDS[label], size=6)) + list(rng.choice(FILLER, size=4))
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def sample_report(folder: str | os.PathLike) -> Path:
    """Writes made-up support tickets and a report on them into `folder`; the page's path."""
    import numpy as np

    from beam_pipeline import cli

    folder = Path(folder)
    run = folder / "run"
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = ["billing", "login"]

    def tickets(count):
        return [{"body": _ticket(rng, labels[i % 2]), "product": labels[i % 2]}
                for i in range(count)]

    for name, rows in (("real.csv", tickets(120)), ("private.csv", tickets(80))):
        with open(folder / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["body", "product"])
            writer.writeheader()
            writer.writerows(rows)
    with open(run / "synthetic-00000-of-00001.jsonl", "w", encoding="utf-8") as handle:
        for row in tickets(30):
            handle.write(json.dumps({"text": row["body"], "label": row["product"],
                                     "cluster": 0}) + "\n")
    (run / "privacy_report.json").write_text(json.dumps(
        {"formal_epsilon": 9.62, "delta": 1e-6, "privacy_unit": "one input record"}),
        encoding="utf-8")
    report = folder / "report"
    code = cli.main(["evaluate", "--synthetic", str(run / "synthetic-*.jsonl"),
                     "--real", str(folder / "real.csv"), "--private", str(folder / "private.csv"),
                     "--text_column", "body", "--label_column", "product",
                     "--encoder", "tiny-bert", "--encoder_sequence_length", "32",
                     "--output", str(report)])
    if code:
        raise RuntimeError(f"dpsynth evaluate exited {code}")
    return report / "evaluation.html"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", help="an evaluation.html; default: a sample one")
    parser.add_argument("--out", help="the PNG; default: beside the page")
    parser.add_argument("--work", help="where the sample report goes")
    args = parser.parse_args(argv)
    page = (Path(args.page) if args.page
            else sample_report(args.work or tempfile.mkdtemp(prefix="dpsynth-report-")))
    png = screenshot(page, args.out or page.with_suffix(".png"))
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
