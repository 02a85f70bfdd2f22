"""CSV framing: one malformed row never pulls the well-formed rows after it into itself.

The reader of transforms/read.py rejects a row it cannot read by its first line
alone and reads on from the next line. That keeps neighbouring inputs neighbours
only if a row that opens a quote it never closes cannot end up closing it inside
the well-formed rows below: `scan_csv_row`'s rules on how a quoted field may begin
are what rule that out, and the exhaustive test below checks it.
"""

import itertools

import pytest

from transforms.read import (CSV_MAX_ROW_LINES, CsvRowError, Record, RecordSchema, Rejected, parse_file, scan_csv_row)

ALPHABET = ("a", ",", '"', "\n")
# Every text of up to this many characters over ALPHABET: about 1.4 million.
EXHAUSTIVE_LENGTH = 10


def _well_formed_field_counts(lines):
    """The field count of every row when `lines` read as well-formed rows, else None."""
    counts, index = [], 0
    while index < len(lines):
        if not lines[index]:
            index += 1
            continue
        try:
            fields, end = scan_csv_row(lines, index)
        except CsvRowError:
            return None
        counts.append(len(fields))
        index = end + 1
    return counts


def test_an_unclosed_quote_never_closes_inside_well_formed_rows():
    """For every short text that reads as well-formed rows of one width, a row above it
    that leaves a quoted field open (with any number of fields before it) is never read
    as a whole row of that width ending inside the text."""
    texts = checked = 0
    for length in range(1, EXHAUSTIVE_LENGTH + 1):
        for chars in itertools.product(ALPHABET, repeat=length):
            text = "".join(chars)
            if text.endswith("\n"):
                continue
            lines = text.split("\n")
            counts = _well_formed_field_counts(lines)
            if not counts or len(set(counts)) != 1:
                continue
            texts += 1
            width = counts[0]
            for fields_before in range(width):
                opening = ",".join(["p"] * fields_before + ['"x'])
                checked += 1
                try:
                    fields, _ = scan_csv_row([opening] + lines, 0)
                except CsvRowError:
                    continue
                assert len(fields) != width, (text, fields_before)
    print(f"{texts} well-formed texts, {checked} rows with an open quote above them")
    assert texts > 10_000


def test_the_exhaustive_check_finds_the_swallowing_without_the_quoted_start_rule(monkeypatch):
    """The check above has teeth: without the rule on how a quoted field begins, an open
    quote does close inside well-formed rows (e.g. above a row `a,"` + line break + `x"`)."""
    from transforms import read as records
    monkeypatch.setattr(records, "_check_quoted_start", lambda line, position: None)
    lines = ['a,"', 'x"']
    assert records.scan_csv_row(lines, 0) == (["a", "\nx"], 1)
    fields, end = records.scan_csv_row(['p,"x'] + lines, 0)
    assert (len(fields), end) == (2, 1)


def _parse(text: str, **schema):
    return list(parse_file("in.csv", text.encode("utf-8"), RecordSchema(**schema), "csv"))


def test_one_unclosed_quote_rejects_only_its_own_row():
    good = [f'{i},"review {i}, with a comma",A' for i in range(8)]
    text = "id,text,label\n" + "\n".join(good[:2] + ['x,"an unclosed quote,A'] + good[2:]) + "\n"
    items = _parse(text, id_column="id", label_column="label")
    accepted = [i for i in items if isinstance(i, Record)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert [r.record_id for r in accepted] == [str(i) for i in range(8)]
    assert [(r.source, r.reason.split(":")[0]) for r in rejected] == [
        ("in.csv:4", "malformed CSV row")]


def test_quoted_line_breaks_are_read_and_numbered_by_the_first_line():
    text = 'text,label\n"two\nlines",A\n"one",B\n'
    items = _parse(text, label_column="label")
    assert [(i.text, i.label, i.source) for i in items] == [
        ("two\nlines", "A", "in.csv:2"), ("one", "B", "in.csv:4")]


def test_a_quoted_field_past_the_line_limit_rejects_its_first_line_and_reads_on():
    body = "\n".join(f"line {i}" for i in range(CSV_MAX_ROW_LINES + 2))
    text = f'text\n"{body}"\nafter\n'
    items = _parse(text)
    assert isinstance(items[0], Rejected)
    assert f"within {CSV_MAX_ROW_LINES} lines" in items[0].reason
    assert items[0].source == "in.csv:2"
    # The field's other lines are read as rows of their own, and the row after it is intact.
    assert isinstance(items[-1], Record) and items[-1].text == "after"
    within = "\n".join(f"line {i}" for i in range(CSV_MAX_ROW_LINES - 1))
    [record] = _parse(f'text\n"{within}"\n')
    assert record.text == within


@pytest.mark.parametrize("row, reason", [
    ('1,a "stray" quote', "a quote inside an unquoted field"),
    ('1,"closed" early', "a closing quote must be followed by a comma"),
    ('1,",starts with a comma"', "may not begin with a comma or a line break"),
    ('1,""",x"', "may not begin with a comma or a line break"),
    ('1,"never closed', "a quoted field is not closed"),
])
def test_malformed_rows_name_their_problem(row, reason):
    [item] = _parse(f"id,text\n{row}\n")
    assert isinstance(item, Rejected) and reason in item.reason, item.reason


def test_doubled_quotes_empty_fields_and_crlf_read_as_in_rfc_4180():
    text = 'id,text,note\r\n1,"say ""hi"", then go","""quoted"""\r\n2,plain,\r\n3,"",x\r\n'
    items = _parse(text, id_column="id")
    assert [i.text for i in items[:2]] == ['say "hi", then go', "plain"]
    assert isinstance(items[2], Rejected) and items[2].reason == "empty text"
