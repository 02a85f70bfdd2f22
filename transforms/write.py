"""Writing the outputs: synthetic records, rejections, privacy report and run summary."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems


def output_path(output_dir: str, name: str) -> str:
    return FileSystems.join(output_dir, name)


def write_text_file(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="text/plain") as handle:
        handle.write(text.encode("utf-8"))


class WriteJsonLines(beam.PTransform):
    """Elements as JSON lines in `<output>/<name>-SSSSS-of-NNNNN.jsonl`, sorted within a shard
    so that the same elements always give the same bytes."""

    def __init__(self, output_dir: str, name: str, to_json=None):
        super().__init__()
        self._prefix = output_path(output_dir, name)
        self._to_json = to_json or (lambda element: element)

    def expand(self, elements):
        to_json = self._to_json
        return (elements
                | "ToJson" >> beam.Map(lambda e: json.dumps(to_json(e), ensure_ascii=False,
                                                            sort_keys=True))
                | "Collect" >> beam.combiners.ToList()
                | "Sort" >> beam.FlatMap(sorted)
                | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl",
                                                 num_shards=1))
