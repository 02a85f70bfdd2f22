"""Reading the files to evaluate with the pipeline's own parsers (transforms.read).

A row without usable text is rejected with the pipeline's reason and counted, never dropped
silently. A row whose label column is empty keeps its text and counts as unlabelled for that
column. Texts are not truncated here (lengths are measured as written).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os

from transforms import read as records_lib

# Larger than any text worth measuring: evaluation reads texts whole.
_NO_TRUNCATION = 10 ** 9


class InputError(ValueError):
    """An input file the user has to fix: missing, empty, or without a named column."""


@dataclasses.dataclass
class LoadedFile:
    path: str
    files: list[str]
    records: list[dict]         # {"text", "source", and each label column the row has}
    rejected: dict              # reason -> count
    columns: list[str]

    def summary(self) -> dict:
        return {"path": self.path, "files": self.files, "records": len(self.records),
                "rejected": sum(self.rejected.values()), "rejected_reasons": self.rejected}


def resolve_paths(pattern: str, what: str) -> list[str]:
    """The files a path or a glob names; one-line InputError when there are none."""
    if os.path.isdir(pattern):
        raise InputError(f"the {what} path {pattern} is a directory: name the file "
                         f"(a glob such as {os.path.join(pattern, '*.jsonl')} works)")
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise InputError(f"the {what} file {pattern} does not exist")
    return paths


def read_records(pattern: str, *, what: str, text_column: str, label_columns=(),
                 label_field: str | None = None, require_labels: bool = True) -> LoadedFile:
    """Usable records of the files behind `pattern`, as {"text", column: label, "source"}.

    `label_field` (the synthetic "label") is read as well when present. With `require_labels`
    a label column found in no row is an InputError; otherwise it only stays unlabelled.
    """
    paths = resolve_paths(pattern, what)
    wanted = list(dict.fromkeys([*label_columns, *([label_field] if label_field else [])]))
    records, rejected, columns = [], collections.Counter(), {}
    for path in paths:
        try:
            file_format = records_lib.format_of(path)
        except ValueError:
            raise InputError(f"cannot tell the format of the {what} file {path}: name it "
                             f".jsonl, .csv, .parquet or .txt") from None
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise InputError(f"cannot read the {what} file {path}: {error.strerror}") from None
        name = os.path.basename(path)
        text_only = records_lib.RecordSchema(text_column=text_column, max_chars=_NO_TRUNCATION)
        with_label = {column: dataclasses.replace(text_only, label_column=column)
                      for column in wanted}
        for row_number, row in records_lib.iter_rows(data, file_format, text_column):
            source = f"{name}:{row_number}"
            if isinstance(row, records_lib.Rejected):
                rejected[row.reason] += 1
                continue
            columns.update(dict.fromkeys(row))
            record = records_lib.to_record(row, source, text_only)
            if isinstance(record, records_lib.Rejected):
                rejected[record.reason] += 1
                continue
            output = {"text": record.text, "source": source}
            for column, schema in with_label.items():
                if column not in row:
                    continue
                labelled = records_lib.to_record(row, source, schema)
                usable = isinstance(labelled, records_lib.Record)
                output[column] = labelled.label if usable else None
            records.append(output)
    column_list = list(columns)
    if columns and text_column not in columns:
        raise InputError(f"the {what} file {pattern} has no column {text_column!r} "
                         f"(its columns: {', '.join(column_list)})")
    if require_labels:
        for column in label_columns:
            if columns and column not in columns:
                raise InputError(f"the {what} file {pattern} has no column {column!r} "
                                 f"(its columns: {', '.join(column_list)})")
    if not records:
        detail = "; ".join(f"{count} {reason}" for reason, count in rejected.most_common(3))
        raise InputError(f"the {what} file {pattern} has no usable records"
                         + (f" ({detail})" if detail else ""))
    return LoadedFile(path=pattern, files=paths, records=records, rejected=dict(rejected),
                      columns=column_list)
