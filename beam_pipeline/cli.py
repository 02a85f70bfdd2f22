"""The `dpsynth` command line."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from offline_models import quiet_tensorflow, registry

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


class DefaultsOnceFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" where the help text does not already say what the default is,
    and nothing where there is no default to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def _set_memory_environment() -> None:
    """Must run before TensorFlow is imported; worker processes inherit it.

    TensorFlow's oneDNN build serves tensors over 256 KB from a pool that never
    shrinks, so a run kept the high-water mark of every generation call's prefill
    and decoding buffers, about 0.7 GB above the decoding cache in `dpsynth demo`.
    With the system allocator the memory a call frees goes back to the system
    (with `causal_lm.release_freed_memory`). A value the user set is kept.
    """
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


def main(argv=None) -> int:
    if argv is not None:
        return _main(list(argv))
    code = _main(sys.argv[1:])
    if code == EXIT_INTERRUPTED:
        # The runner's threads may still be busy with a model call; waiting for them at
        # exit would keep the process, and a second Ctrl-C would print their tracebacks.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str]) -> int:
    quiet_tensorflow.set_quiet_environment()
    _set_memory_environment()
    parser = _parser()
    if argv[:1] == ["run"]:
        return _guarded(lambda: _run_job(argv[1:]))
    if argv[:1] == ["audit"]:
        return _guarded(lambda: _audit(argv[1:]))
    if argv[:1] == ["plan"]:
        return _guarded(lambda: _plan(argv[1:]))
    try:
        args = _parse_strictly(parser, argv)
    except UsageError as error:
        return _usage_error(error)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    return _guarded(lambda: args.run(args))


def _parse_strictly(parser, argv):
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        chosen = parser
        for name in ("command", "models_command"):
            subcommands = getattr(chosen, "_subparsers", None)
            if getattr(args, name, None) and subcommands:
                chosen = subcommands._group_actions[0].choices[getattr(args, name)]
        _refuse(unknown, _option_strings(chosen), chosen.prog)
    return args


def _parser():
    parser = _OneLineParser(
        prog="dpsynth",
        description="Differentially private synthetic text from private LM inference.")
    commands = parser.add_subparsers(dest="command")

    models = commands.add_parser("models", help="prepare and list the offline models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    prepare = model_commands.add_parser(
        "prepare", help="install, convert and check the models (idempotent)")
    prepare.add_argument("--lm", default=registry.DEFAULT_LM,
                         help=f"known LM name ({', '.join(registry.KNOWN_LMS)}) or a local "
                              f"keras-hub preset directory (default: {registry.DEFAULT_LM})")
    prepare.add_argument("--encoder", default=registry.DEFAULT_ENCODER,
                         help=f"known encoder name or preset directory (default: {registry.DEFAULT_ENCODER})")
    prepare.set_defaults(run=_models_prepare)
    listing = model_commands.add_parser("list", help="known models and whether they are prepared")
    listing.set_defaults(run=_models_list)

    run = commands.add_parser(
        "run", add_help=False,
        help="run the DP synthetic-data job (dpsynth run --help lists every option)")
    run.set_defaults(run=_run)

    plan = commands.add_parser(
        "plan", add_help=False,
        help="print what `dpsynth run` with the same options would spend and calibrate, and "
             "its privacy ledger; reads no data and runs nothing")
    plan.set_defaults(run=_run)

    audit = commands.add_parser(
        "audit", add_help=False,
        help="insert canaries, run the job, and attack its output: canary exposure, "
             "membership-inference AUC, empirical epsilon (dpsynth audit --help)")
    audit.set_defaults(run=_run)

    demo = commands.add_parser(
        "demo", help="run the whole job on a sample of the bundled Yelp reviews (real models)")
    demo.add_argument("--records", type=_positive_int, default=400,
                      help="records of the sample (default 400)")
    demo.add_argument("--input", default=None, help="the Yelp CSV (default: the shared sample)")
    demo.add_argument("--output", default=None, help="output directory (default: output/demo)")
    demo.add_argument("--run_secret", default=None)
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser(
        "evaluate", help="score a synthetic dataset against real data: MAUVE, downstream "
                         "accuracy, lengths, labels, verbatim copying")
    synthetic = evaluate.add_mutually_exclusive_group(required=True)
    synthetic.add_argument("--synthetic", default=None,
                           help="synthetic records (a file or a glob, e.g. out/synthetic-*.jsonl)")
    synthetic.add_argument("--synthetic_embeddings", default=None,
                           help="synthetic embeddings instead of records (.npz or .parquet "
                                "with embeddings and labels, see docs/privacy.md): downstream "
                                "accuracy and feature-level MAUVE against the real records' "
                                "embeddings (use the --encoder the run used)")
    evaluate.add_argument("--real", required=True,
                          help="real records to compare with and test on (CSV, JSONL, Parquet, "
                               "text), ideally held out from the private data")
    evaluate.add_argument("--private", default=None,
                          help="the private records the synthetic data came from: enables the "
                               "memorisation check and trains the real-data baseline")
    evaluate.add_argument("--label_column", action="append", default=[],
                          help="a label column of the real data (repeat for several)")
    evaluate.add_argument("--synthetic_label_column", default=None,
                          help="which --label_column the synthetic records' 'label' field (or "
                               "the synthetic embeddings' labels) holds (default: the first)")
    evaluate.add_argument("--text_column", default="text",
                          help="text column of the real and private data (default: text)")
    evaluate.add_argument("--synthetic_text_column", default="text",
                          help="text field of the synthetic records (default: text)")
    evaluate.add_argument("--output", default="output/evaluation",
                          help="report directory (default: output/evaluation)")
    evaluate.add_argument("--encoder", default=registry.DEFAULT_ENCODER,
                          help="sentence encoder for MAUVE features and the classifiers "
                               f"(default: {registry.DEFAULT_ENCODER})")
    evaluate.add_argument("--encoder_sequence_length", type=_positive_int, default=128,
                          help="encoder tokens per text (default: 128)")
    evaluate.add_argument("--feature_encoder", default=None,
                          help="a second feature space for MAUVE that no method uses, shown "
                               "beside the --encoder's: an LM name (gemma3-270m, smollm2-135m: "
                               "its last hidden state, mean-pooled) or another encoder "
                               "(default: none)")
    evaluate.add_argument("--real_max_words", type=_positive_int, default=None,
                          help="cut every real text to its first N words before scoring, so "
                               "that long real texts are compared with short synthetic ones "
                               "like with like (default: whole)")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="seed of the subsampling, the split, k-means and the classifier "
                               "(default: 0)")
    evaluate.set_defaults(run=_evaluate)

    smoke = commands.add_parser(
        "smoke", help="embed three sentences and continue a prompt with the real models")
    smoke.add_argument("--lm", default=registry.DEFAULT_LM)
    smoke.add_argument("--encoder", default=registry.DEFAULT_ENCODER)
    smoke.add_argument("--max_new_tokens", type=_positive_int, default=16)
    smoke.set_defaults(run=_smoke)
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _check_lm_reference(reference):
    if reference not in registry.KNOWN_LMS:
        registry.resolve_lm(reference)  # one-line error for an unknown name


def _models_prepare(args):
    quiet_tensorflow.import_tensorflow()
    _check_lm_reference(args.lm)
    from offline_models.prepare import prepare

    prepare(args.lm, args.encoder, say=lambda line: print(line, flush=True))


def _models_list(args):
    print(f"cache: {registry.cache_dir()}")
    for model in [*registry.KNOWN_LMS.values(), *registry.KNOWN_ENCODERS.values()]:
        state = "prepared" if registry.is_prepared(model.name) else "not prepared"
        print(f"{model.name:14} {model.kind:8} {state:13} {model.description}; {model.license}")


def _run(args):  # reached only through main's "run" branch
    raise UsageError("use: dpsynth run --input ... --output ...")


def _run_job(argv):
    from beam_pipeline.options import DpSynthOptions

    if "--help" in argv or "-h" in argv or not argv:
        parser = argparse.ArgumentParser(
            prog="dpsynth run", formatter_class=DefaultsOnceFormatter,
            description="Turn a sensitive text dataset into differentially private synthetic "
                        "records. Any Apache Beam pipeline option (--runner, --project, ...) "
                        "is accepted too.")
        DpSynthOptions._add_argparse_args(parser)
        parser.print_help()
        return 0 if argv else EXIT_USAGE
    _check_option_values(argv, DpSynthOptions)
    _refuse_unknown_options(argv)
    from beam_pipeline.run import configure_logging, run

    configure_logging()
    quiet_tensorflow.import_tensorflow()
    run(argv)
    return 0


def _plan(argv):
    from beam_pipeline.options import DpSynthOptions

    if "--help" in argv or "-h" in argv or not argv:
        parser = argparse.ArgumentParser(
            prog="dpsynth plan", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            description="Print the plan of `dpsynth run` with the same options: the target "
                        "epsilon, its split, the calibrated clip and noise, and the privacy "
                        "ledger. Reads no data, loads no model, writes nothing.")
        DpSynthOptions._add_argparse_args(parser)
        parser.print_help()
        return 0 if argv else EXIT_USAGE
    _check_option_values(argv, DpSynthOptions, prog="dpsynth plan")
    _refuse_unknown_options(argv, prog="dpsynth plan")
    from beam_pipeline import budget_ledger
    from beam_pipeline.plan import (check_budget, describe_plan, lifetime_preview, make_plan,
                                    plan_ledger)
    from beam_pipeline.run import pipeline_options

    plan = make_plan(pipeline_options(argv))
    epsilon = check_budget(plan)
    for line in describe_plan(plan, epsilon):
        print(line)
    print()
    # The ledger without its token counts, which only a run fills in.
    print(plan_ledger(plan).to_markdown().split("\n## ")[0].rstrip())
    try:
        lines = lifetime_preview(plan)
    except budget_ledger.BudgetLedgerError as error:
        raise UsageError(str(error)) from None
    for line in lines:
        print(line)
    return 0


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} ({self.prog} --help lists the options)")


def _option_strings(parser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings
            if name.startswith("--")]


def _refuse(unknown: list[str], known: list[str], prog: str) -> None:
    """Stops at the first argument nobody declared, naming the closest declared option."""
    argument = next((a for a in unknown if a.startswith("-")), unknown[0])
    if not argument.startswith("-"):
        raise UsageError(f"unexpected argument {argument!r} ({prog} --help lists the options)")
    name = argument.split("=", 1)[0]
    closest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f": did you mean {closest[0]}?" if closest else ""
    raise UsageError(f"unknown option {name}{hint} ({prog} --help lists the options)")


def _refuse_unknown_options(argv, prog="dpsynth run", also_known=()) -> None:
    """Beam only warns about an option it does not know, and runs without it: a misspelt
    --target_epsilon would run at whatever budget the defaults cost. Every option of a
    registered Beam option class (--runner, --project, --temp_location, ...) is known."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    class StrictParser(_BeamArgumentParser):
        def error(self, message):
            raise UsageError(f"{message} ({prog} --help lists the options)")

    parser = StrictParser(prog=prog, add_help=False, allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse(unknown, [*_option_strings(parser), *also_known], prog)


def _check_option_values(argv, options_class, prog="dpsynth run"):
    """A malformed value of dpsynth's own options is one line, not Beam's whole usage text."""
    parser = _OneLineParser(prog=prog, add_help=False, allow_abbrev=False)
    options_class._add_argparse_args(parser)
    parser.parse_known_args(argv)


def _add_audit_options(parser):
    audit = parser.add_argument_group("audit")
    audit.add_argument("--canaries", type=_positive_int, default=8,
                       help="random 12-word phrases inserted as records, and as many control "
                            "phrases drawn the same way and never inserted")
    audit.add_argument("--canary_repeats", type=_positive_int, default=1,
                       help="copies of each canary record. The guarantee is per record (or "
                            "privacy unit): a canary repeated k times has a k-record group "
                            "guarantee, so repeats are a stress test, not a contradiction")
    audit.add_argument("--holdout_fraction", type=float, default=0.5,
                       help="share of the usable records (whole privacy units) held out of the "
                            "job: the attack's non-members")
    audit.add_argument("--seed", type=int, default=0,
                       help="seed of the split, the canaries and the attack's samples")
    audit.add_argument("--report", default=None,
                       help="directory of audit.json and audit.md (default: OUTPUT/audit)")
    audit.add_argument("--work_dir", default=None,
                       help="where the job's input (kept records and canaries, JSONL) is "
                            "written (default: a temporary directory, removed afterwards)")


def _audit(argv):
    from beam_pipeline.options import DpSynthOptions

    if "--help" in argv or "-h" in argv or not argv:
        parser = argparse.ArgumentParser(
            prog="dpsynth audit", formatter_class=DefaultsOnceFormatter,
            description="Insert canary records into a copy of the input, hold out part of it, "
                        "run the job once with the given `dpsynth run` options, and attack "
                        "the synthetic output: canary exposure, a membership-inference AUC "
                        "and the empirical epsilon lower bound next to the claimed epsilon.")
        _add_audit_options(parser)
        DpSynthOptions._add_argparse_args(parser)
        parser.print_help()
        return 0 if argv else EXIT_USAGE
    parser = _OneLineParser(prog="dpsynth audit", add_help=False, allow_abbrev=False)
    _add_audit_options(parser)
    args, run_argv = parser.parse_known_args(argv)
    _check_option_values(run_argv, DpSynthOptions, prog="dpsynth audit")
    _refuse_unknown_options(run_argv, prog="dpsynth audit", also_known=_option_strings(parser))
    from beam_pipeline.audit import AuditError, AuditSettings, run_audit
    from beam_pipeline.run import configure_logging

    settings = AuditSettings(canaries=args.canaries, canary_repeats=args.canary_repeats,
                             holdout_fraction=args.holdout_fraction, seed=args.seed,
                             report=args.report, work_dir=args.work_dir)
    configure_logging()
    quiet_tensorflow.import_tensorflow()
    try:
        run_audit(run_argv, settings)
    except AuditError as error:
        raise UsageError(str(error)) from None
    return 0


def _guarded(action):
    """Runs a command; a mistake the user can fix becomes one line and exit code 2."""
    from beam_pipeline.plan import PlanError

    try:
        return action() or 0
    except (UsageError, PlanError, registry.UnknownModelError,
            registry.ModelNotPreparedError) as error:
        return _usage_error(error)
    except KeyboardInterrupt:
        print("dpsynth: interrupted: nothing was published", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def _usage_error(error) -> int:
    print(f"dpsynth: error: {error}", file=sys.stderr)
    return EXIT_USAGE


def _demo(args):
    quiet_tensorflow.import_tensorflow()
    from pathlib import Path

    from beam_pipeline import demo

    input_path = Path(args.input) if args.input else demo.DEFAULT_INPUT
    if not input_path.is_file():
        raise UsageError(f"the demo data {input_path} is missing: pass --input PATH")
    output = Path(args.output) if args.output else demo.DEFAULT_OUTPUT
    demo.run_demo(input_path=input_path, output=output, records=args.records,
                  secret=args.run_secret)


def _evaluate(args):
    quiet_tensorflow.import_tensorflow()
    import time

    from evaluation.data import InputError
    from evaluation.evaluate import evaluate_files
    from evaluation.report import summary_rows, verdict

    def say(line):
        print(f"{time.strftime('%H:%M:%S')} evaluate: {line}", file=sys.stderr, flush=True)

    try:
        result, paths = evaluate_files(
            synthetic=args.synthetic, synthetic_embeddings=args.synthetic_embeddings,
            real=args.real, private=args.private, output=args.output,
            label_columns=args.label_column, synthetic_label_column=args.synthetic_label_column,
            text_column=args.text_column, synthetic_text_column=args.synthetic_text_column,
            encoder=args.encoder, encoder_sequence_length=args.encoder_sequence_length,
            seed=args.seed, feature_encoder=args.feature_encoder,
            real_max_words=args.real_max_words, say=say)
    except InputError as error:
        raise UsageError(str(error)) from None
    for figure, value, meaning in summary_rows(result):
        print(f"  {figure}: {value}" + (f" ({meaning})" if value == "n/a" else ""))
    print(verdict(result)["headline"])
    print(f"Report: {paths['html']} (figures in {paths['json']})")


def _smoke(args):
    quiet_tensorflow.import_tensorflow()
    from beam_pipeline.smoke import run_smoke

    run_smoke(lm=args.lm, encoder=args.encoder, max_new_tokens=args.max_new_tokens)


if __name__ == "__main__":
    sys.exit(main())
