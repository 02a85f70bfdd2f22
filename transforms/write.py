"""Writing the outputs: synthetic records, rejections, privacy report and run summary.

Every file is first written to a staging folder inside the output folder;
`PublishOutputs`, the last step of the job, moves them into the output folder
once every writer has finished. A job that fails leaves its outputs in the
staging folder only, so a downstream reader never sees a half-written result.
"""

from __future__ import annotations

import fnmatch
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import storage
from beam_pipeline import progress

STAGING_PREFIX = ".staging-"
# What a run publishes: a folder holding any of these holds an earlier run's outputs.
OUTPUT_NAMES = ("synthetic-*.jsonl", "rejected-*.jsonl", "privacy_report.json",
                "privacy_report.md", "run_summary.json", "synthetic_embeddings.*")


def output_path(output_dir: str, name: str) -> str:
    return FileSystems.join(output_dir, name)


def staging_dir(output_dir: str, run_id: str) -> str:
    return storage.join(output_dir, STAGING_PREFIX + run_id)


def existing_outputs(output_dir: str) -> list[str]:
    """The files of an earlier run in `output_dir` (local or gs://)."""
    return [path for path in storage.list_files(output_dir)
            if any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], name) for name in OUTPUT_NAMES)]


def remove_staging(output_dir: str, run_id: str) -> None:
    """Removes what an interrupted run staged; nothing of it was published."""
    staging = staging_dir(output_dir, run_id)
    for path in storage.list_files(staging):
        storage.delete(path)
    storage.delete(staging)


def write_text_file(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="text/plain") as handle:
        handle.write(text.encode("utf-8"))


class WriteJsonLines(beam.PTransform):
    """Elements as JSON lines in `<output>/<name>-00000-of-00001.jsonl`, sorted so that the same
    elements always give the same bytes. Yields the path written."""

    def __init__(self, output_dir: str, name: str, to_json=None):
        super().__init__()
        self._path = output_path(output_dir, f"{name}-00000-of-00001.jsonl")
        self._to_json = to_json or (lambda element: element)

    def expand(self, elements):
        to_json, path = self._to_json, self._path

        def write(lines):
            write_text_file(path, "".join(line + "\n" for line in sorted(lines)))
            return path

        return (elements
                | "ToJson" >> beam.Map(lambda e: json.dumps(to_json(e), ensure_ascii=False,
                                                            sort_keys=True))
                | "Collect" >> beam.combiners.ToList()
                | "Write" >> beam.Map(write))


def read_json_lines(output_dir: str, name: str) -> list[dict]:
    """What `WriteJsonLines` wrote as `name` into `output_dir` (local or gs://), in shard order."""
    pattern = output_path(output_dir, f"{name}-*-of-*.jsonl")
    records = []
    for metadata in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        with FileSystems.open(metadata.path) as handle:
            records += [json.loads(line) for line in handle.read().decode("utf-8").splitlines()
                        if line.strip()]
    return records


def publish(staging: str, output_dir: str) -> list[str]:
    """Moves every file of `staging` into `output_dir`; safe to repeat after a partial move."""
    published = []
    for source in storage.list_files(staging):
        destination = storage.join(output_dir, source.rstrip("/").rsplit("/", 1)[-1])
        storage.move(source, destination)
        published.append(destination)
    storage.delete(staging)
    progress.announce("writing: %d files published to %s", len(published), output_dir)
    return published


class PublishOutputs(beam.PTransform):
    """The job's last step: runs once every PCollection in the input tuple is complete."""

    def __init__(self, staging: str, output_dir: str):
        super().__init__()
        self._staging = staging
        self._output = output_dir

    def expand(self, written):
        staging, output = self._staging, self._output
        return (written
                | "AllWritten" >> beam.Flatten()
                | "WaitForAll" >> beam.combiners.Count.Globally()
                | "Publish" >> beam.FlatMap(lambda _: publish(staging, output)))
