"""RunInference model handlers for Keras 3 / keras-hub models.

Beam ships no handler for Keras 3. These hold only picklable configuration
(a model reference string and a few numbers) and import Keras inside
`load_model`, because Keras fixes its backend at first import.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from offline_models.encoder import MAX_TEXTS_PER_CALL
from offline_models.joint_decoding import GenerationRequest

_LOG = logging.getLogger(__name__)


class _KerasModelHandler(ModelHandler[Any, PredictionResult, Any]):
    """What both handlers share: picklable settings and explicit RunInference hooks."""

    metrics_namespace = "dpsynth"

    def __init__(self, model: str, *, max_batch_size: int, share_across_processes: bool,
                 model_copies: int):
        super().__init__()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._model = model
        self._max_batch_size = max_batch_size
        self._share = share_across_processes
        self._copies = model_copies

    def batch_elements_kwargs(self):
        # Fixed-size batches: Beam's adaptive batching starts at one element,
        # and every new batch shape costs these models a compilation.
        return {"min_batch_size": self._max_batch_size, "max_batch_size": self._max_batch_size}

    def share_model_across_processes(self) -> bool:
        return self._share

    def model_copies(self) -> int:
        return self._copies

    def get_metrics_namespace(self) -> str:
        return self.metrics_namespace


class SentenceEmbeddingHandler(_KerasModelHandler):
    """Text in, unit-norm embedding (float32 numpy vector) out."""

    metrics_namespace = "dpsynth_sentence_embedding"

    def __init__(self, encoder: str, *, sequence_length: int = 128,
                 max_batch_size: int = MAX_TEXTS_PER_CALL,
                 share_across_processes: bool = False, model_copies: int = 1):
        if max_batch_size > MAX_TEXTS_PER_CALL:
            raise ValueError(f"max_batch_size must be at most {MAX_TEXTS_PER_CALL}")
        super().__init__(encoder, max_batch_size=max_batch_size,
                         share_across_processes=share_across_processes, model_copies=model_copies)
        self._sequence_length = sequence_length

    def load_model(self):
        from offline_models.loading import load_sentence_encoder

        return load_sentence_encoder(self._model, sequence_length=self._sequence_length)

    def run_inference(self, batch: Sequence[str], model, inference_args: Optional[dict] = None
                      ) -> Iterable[PredictionResult]:
        vectors = model.embed(list(batch))
        return [PredictionResult(text, vector) for text, vector in zip(batch, vectors)]

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text.encode("utf-8")) for text in batch)


class CausalLmHandler(_KerasModelHandler):
    """Serves a causal LM in two ways, chosen per element.

    - A token-id sequence (or a text, tokenised here): the inference is the
      float32 next-token logit vector after its last position.
    - A `GenerationRequest`: the inference is a `GenerationResult`. All
      requests of a batch advance together through KV-cached decoding, so one
      model call per step serves every row of every request.

    A generation call that raises is run again, up to `call_attempts` times
    in all, each time on fresh copies of the requests: a chooser counts the
    tokens it spent, so a failed attempt must leave nothing behind, and its
    keyed randomness makes the new attempt release the same tokens.
    `after_call(requests)` runs after each attempt (a test hook for faults).
    """

    metrics_namespace = "dpsynth_causal_lm"

    def __init__(self, lm: str, *, max_batch_size: int = 16, cached: Optional[bool] = None,
                 share_across_processes: bool = False, model_copies: int = 1,
                 call_attempts: int = 1, after_call: Optional[Callable] = None):
        super().__init__(lm, max_batch_size=max_batch_size,
                         share_across_processes=share_across_processes, model_copies=model_copies)
        if call_attempts < 1:
            raise ValueError("call_attempts must be >= 1")
        self._cached = cached
        self._attempts = call_attempts
        self._after_call = after_call

    def load_model(self):
        from offline_models.loading import load_causal_lm

        return load_causal_lm(self._model, cached=self._cached)

    def run_inference(self, batch: Sequence[Any], model, inference_args: Optional[dict] = None
                      ) -> Iterable[PredictionResult]:
        requests = [e for e in batch if isinstance(e, GenerationRequest)]
        sequences = [e for e in batch if not isinstance(e, GenerationRequest)]
        outputs = {}
        if requests:
            for request, result in zip(requests, self._generate(model, requests)):
                outputs[id(request)] = result
        if sequences:
            token_lists = [model.encode(e) if isinstance(e, str) else list(e) for e in sequences]
            for element, logits in zip(sequences, model.next_token_logits(token_lists)):
                outputs[id(element)] = logits
        return [PredictionResult(e, outputs[id(e)]) for e in batch]

    def _generate(self, model, requests):
        for attempt in range(1, self._attempts + 1):
            fresh = copy.deepcopy(requests)
            try:
                results = model.generate(fresh)
                if self._after_call is not None:
                    self._after_call(fresh)
                return results
            except Exception as error:  # noqa: BLE001 - retried, then raised
                if attempt == self._attempts:
                    raise
                # The type only: a message could quote a prompt.
                _LOG.warning("a generation call failed (%s), attempt %d of %d: running it again",
                             type(error).__name__, attempt, self._attempts)
        raise AssertionError("unreachable")

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        def rows(element):
            if isinstance(element, GenerationRequest):
                return sum(len(p) for p in element.prompts)
            return len(element)
        return 4 * sum(rows(e) for e in batch)


class GenerateInFixedCalls(beam.PTransform):
    """(call index, GenerationRequest) -> PredictionResults, one model call per index.

    Logits differ in their last bits with the rows computed together, so
    leaving the grouping to the runner's batching would let runners (and
    retries) release different bytes. Requests of a call run in order of
    `sort_key`. `call_attempts` and `after_call` are the handler's.
    """

    def __init__(self, lm: str, *, sort_key, call_attempts: int = 1,
                 after_call: Optional[Callable] = None):
        super().__init__()
        self._handler = CausalLmHandler(lm, call_attempts=call_attempts,
                                        after_call=after_call).with_no_batching()
        self._sort_key = sort_key

    def expand(self, keyed_requests):
        sort_key = self._sort_key
        return (keyed_requests
                | "GroupIntoCalls" >> beam.GroupByKey()
                | "OrderRequests" >> beam.Map(lambda call: sorted(call[1], key=sort_key))
                | "RunInference" >> RunInference(self._handler))
