"""GenerateSynthetic: one synthetic record per planned batch, through RunInference."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import string

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_pipeline import progress
from mechanisms.generate import GenerationConfig, PrivateTokenChooser
from offline_models.joint_decoding import GenerationRequest
from transforms.model_handlers import GenerateInFixedCalls
from transforms.read import NAMESPACE

# A model call that raises is run again: the embedded runner (FnApiRunner)
# never retries a failed bundle, so one transient failure would end the job.
GENERATION_CALL_ATTEMPTS = 3
# Test-only: with this variable set to a directory, the first attempt of
# every generation call raises (after the call ran), and the next succeeds.
FAULT_ENV = "DPSYNTH_FAIL_FIRST_ATTEMPT"


class InjectedFault(RuntimeError):
    """The failure `DPSYNTH_FAIL_FIRST_ATTEMPT` asks for."""


def fail_first_attempt_if_asked(requests) -> None:
    """Raises once per generation call when `DPSYNTH_FAIL_FIRST_ATTEMPT` names a directory.

    A marker file per call (named by a hash of the call's batch ids) records
    that its first attempt failed, across worker processes, so the next
    attempt passes. Without the variable it does nothing.
    """
    directory = os.environ.get(FAULT_ENV)
    if not directory:
        return
    call = "\x1f".join(sorted(str(request.key[0]) for request in requests))
    marker = os.path.join(directory, hashlib.sha256(call.encode("utf-8")).hexdigest()[:20])
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    raise InjectedFault(f"injected fault: first attempt of generation call {marker}")


@dataclasses.dataclass(frozen=True)
class SyntheticRecord:
    batch_id: str
    text: str
    label: object
    cluster: int
    tokens: int
    private_tokens: int
    public_tokens: int
    stopped_by: str
    token_rhos: tuple               # realised zCDP of each private token (accounting only)
    median_tokens: int | None = None  # median_ptr: tokens sampled while the test passed
    test_failed: bool = False         # median_ptr: whether the stability test failed

    def to_output(self) -> dict:
        """The released record: no accounting detail, which may depend on the data."""
        output = {"text": self.text, "cluster": self.cluster}
        if self.label is not None:
            output["label"] = self.label
        return output


class GenerateSynthetic(beam.PTransform):
    """Batch -> SyntheticRecord. The LM handler advances several batches per model call.

    Which batches share a model call is fixed by the plan (consecutive planned
    batch ids), not left to the runner's batching: logits differ in their
    last bits with the rows computed together, so a fixed grouping is what
    makes every runner, and every retry, release the same bytes.
    """

    def __init__(self, config: GenerationConfig, *, lm: str, template: str, secret: str,
                 stop_text: str | None, planned_batch_ids, batches_per_call: int = 8):
        super().__init__()
        self._config = config
        self._template = template
        self._secret = secret
        self._stop_text = stop_text
        self._planned_batch_ids = planned_batch_ids
        self._batches_per_call = batches_per_call
        self._lm = lm

    def expand(self, batches):
        config, template, secret, stop_text = (self._config, self._template, self._secret,
                                               self._stop_text)

        tick = progress.counter("generation", "batches", rate_unit="synthetic tokens")

        def to_request(batch):
            tick(0)  # the clock starts with the first request
            prompts = [render_prompt(template, member.text, batch.label)
                       for member in batch.members]
            prompts.append(render_prompt(template, "", batch.label))
            chooser = PrivateTokenChooser(config, secret=secret, batch_id=batch.batch_id)
            return GenerationRequest(key=(batch.batch_id, batch.label, batch.cluster),
                                     prompts=prompts, chooser=chooser,
                                     max_new_tokens=config.max_new_tokens, stop_text=stop_text)

        counters = {name: Metrics.counter(NAMESPACE, name) for name in (
            "synthetic_records", "private_tokens", "public_tokens")}

        def to_record(prediction, total):
            result = prediction.inference
            chooser = result.chooser
            batch_id, label, cluster = result.key
            counters["synthetic_records"].inc()
            counters["private_tokens"].inc(chooser.private_tokens)
            counters["public_tokens"].inc(chooser.public_tokens)
            tick(1, total=total, rate_count=len(result.token_ids))
            return SyntheticRecord(
                batch_id=batch_id, text=result.text, label=label, cluster=cluster,
                tokens=len(result.token_ids), private_tokens=chooser.private_tokens,
                public_tokens=chooser.public_tokens, stopped_by=result.stopped_by,
                token_rhos=tuple(chooser.token_rhos) if config.aggregator == "median" else (),
                median_tokens=chooser.median_tokens if config.ptr else None,
                test_failed=chooser.test_failed)

        per_call = self._batches_per_call
        call_of = self._planned_batch_ids | "CallOfBatch" >> beam.Map(
            lambda ids: {batch: index // per_call for index, batch in enumerate(ids)})
        total = self._planned_batch_ids | "TotalBatches" >> beam.Map(len)
        return (batches
                | "ToRequest" >> beam.Map(
                    lambda batch, calls: (calls[batch.batch_id], to_request(batch)),
                    beam.pvalue.AsSingleton(call_of))
                | "Generate" >> GenerateInFixedCalls(
                    self._lm, sort_key=lambda request: request.key[0],
                    call_attempts=GENERATION_CALL_ATTEMPTS,
                    after_call=fail_first_attempt_if_asked)
                | "ToSyntheticRecord" >> beam.Map(to_record, beam.pvalue.AsSingleton(total)))


def check_template(template: str, *, labelled: bool) -> None:
    """Raises ValueError unless the template has {text} (and {label} only with labels)."""
    fields = set()
    try:
        for _, field, _, _ in string.Formatter().parse(template):
            if field is not None:
                fields.add(field)
    except ValueError as error:
        raise ValueError(f"the prompt template is malformed: {error}") from None
    if "text" not in fields:
        raise ValueError("the prompt template has no {text} placeholder")
    unknown = fields - {"text", "label"}
    if unknown:
        raise ValueError(f"the prompt template has unknown placeholders: "
                         f"{', '.join('{' + f + '}' for f in sorted(unknown))}")
    if "label" in fields and not labelled:
        raise ValueError("the prompt template uses {label} but no --label_column is given")


def render_prompt(template: str, text: str, label: str | None) -> str:
    return template.format(text=text, label=label if label is not None else "")
