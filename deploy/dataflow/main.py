"""Entry point of the flex template launcher: `dpsynth run` with the template's parameters.

The launcher passes every parameter as `--name=value`, flags included
(`--public_tokens=true`); flags are turned back into what `dpsynth run`
takes. The job is submitted without waiting for it: the launcher VM exits
once Dataflow has the job, and the budget ledger reservation (if any) is
already written by then.
"""

from __future__ import annotations

import argparse
import sys

from beam_pipeline import cli


def flag_names() -> set[str]:
    from beam_pipeline.options import option_actions

    return {action.dest for _, action in option_actions()
            if isinstance(action, argparse._StoreTrueAction)}


def normalise_flags(argv: list[str], flags: set[str]) -> list[str]:
    """--flag=true -> --flag; --flag=false -> nothing; anything else unchanged."""
    result = []
    for argument in argv:
        name, equals, value = argument.partition("=")
        if equals and name.startswith("--") and name[2:] in flags:
            if value.strip().lower() in ("true", "1", "yes"):
                result.append(name)
            elif value.strip().lower() not in ("false", "0", "no", ""):
                raise SystemExit(f"dpsynth: error: {name} takes true or false, got {value!r}")
            continue
        result.append(argument)
    return result


def main(argv=None) -> int:
    argv = normalise_flags(list(sys.argv[1:] if argv is None else argv), flag_names())

    def submit():
        from beam_pipeline.options import DpSynthOptions
        from beam_pipeline.run import configure_logging, run

        # A misspelt parameter must not launch a job that spends budget without it.
        cli._check_option_values(argv, DpSynthOptions)
        cli._refuse_unknown_options(argv)
        configure_logging()
        run(argv, wait=False)

    return cli._guarded(submit)


if __name__ == "__main__":
    sys.exit(main())
