"""Writes deploy/dataflow/metadata.json, the flex template's parameters, from DpSynthOptions.

    PYTHONPATH=. python deploy/dataflow/make_metadata.py          # rewrite metadata.json
    PYTHONPATH=. python deploy/dataflow/make_metadata.py --check  # exit 1 if it is stale

Every `dpsynth run` option becomes one parameter with the option's own help
text, its default, and a type: NUMBER (with a regex) for int and float
options, BOOLEAN for flags, ENUM for options with choices, TEXT otherwise.
tests/test_deploy.py fails when the committed file differs from this output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METADATA_PATH = Path(__file__).with_name("metadata.json")
REQUIRED = ("input", "output")
INTEGER_REGEX = r"^-?[0-9]+$"
FLOAT_REGEX = r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


def parameter_type(action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "BOOLEAN"
    if action.choices:
        return "ENUM"
    if action.type in (int, float):
        return "NUMBER"
    return "TEXT"


def parameter(group: str, action) -> dict:
    param = {
        "name": action.dest,
        "label": action.dest.replace("_", " ").capitalize(),
        "helpText": action.help,
        "isOptional": action.dest not in REQUIRED,
        "groupName": group,
        "paramType": parameter_type(action),
    }
    if action.type is int:
        param["regexes"] = [INTEGER_REGEX]
    elif action.type is float:
        param["regexes"] = [FLOAT_REGEX]
    if action.choices:
        param["enumOptions"] = [{"value": str(choice)} for choice in action.choices]
    if action.default not in (None, False):
        param["defaultValue"] = str(action.default)
    return param


def metadata() -> dict:
    from beam_pipeline.options import option_actions

    return {
        "name": "dpsynth",
        "description": "Differentially private synthetic text from private LM inference: reads "
                       "a text dataset (local or gs://), writes synthetic records and a privacy "
                       "report. See deploy/dataflow/README.md.",
        "streaming": False,
        "parameters": [parameter(group, action) for group, action in option_actions()],
    }


def render() -> str:
    return json.dumps(metadata(), indent=2) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if METADATA_PATH.read_text(encoding="utf-8") != text:
            print(f"{METADATA_PATH} is stale: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    METADATA_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {METADATA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
