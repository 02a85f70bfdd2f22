import numpy as np
import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from offline_models.joint_decoding import GenerationRequest, GreedyChooser
from offline_models.loading import TINY_ENCODER, TINY_LM
from transforms.model_handlers import CausalLmHandler, SentenceEmbeddingHandler


def _pipeline():
    # Pinned: the default DirectRunner may try the Prism runner, which needs a download.
    return TestPipeline(runner="FnApiRunner")


def test_embedding_handler_in_a_pipeline(tiny_encoder):
    texts = [f"good food number {i}" for i in range(70)]
    expected = {t: v for t, v in zip(texts, tiny_encoder.embed(texts))}

    def check(results):
        assert len(results) == len(texts)
        for result in results:
            assert result.inference.shape == (32,)
            assert abs(np.linalg.norm(result.inference) - 1) < 1e-5
            np.testing.assert_allclose(result.inference, expected[result.example], atol=1e-5)

    with _pipeline() as p:
        out = (p | beam.Create(texts)
               | RunInference(SentenceEmbeddingHandler(TINY_ENCODER, sequence_length=32)))
        assert_that(out, check)


def test_lm_handler_logits_and_generation_in_a_pipeline(tiny_lm):
    prompts = [tiny_lm.encode("the cat"), tiny_lm.encode("a much longer prompt here")]
    expected_logits = tiny_lm.next_token_logits(prompts)
    greedy = tiny_lm.generate([GenerationRequest("g", prompts, GreedyChooser(), 5)])[0]

    def check(results):
        by_kind = {}
        for r in results:
            key = r.example.key if isinstance(r.example, GenerationRequest) else tuple(r.example)
            by_kind[key] = r.inference
        np.testing.assert_allclose(by_kind[tuple(prompts[0])], expected_logits[0], atol=1e-3)
        np.testing.assert_allclose(by_kind[tuple(prompts[1])], expected_logits[1], atol=1e-3)
        assert by_kind["g"].token_ids == greedy.token_ids

    with _pipeline() as p:
        elements = [prompts[0], prompts[1], GenerationRequest("g", prompts, GreedyChooser(), 5)]
        out = p | beam.Create(elements) | RunInference(CausalLmHandler(TINY_LM))
        assert_that(out, check)


def test_handlers_override_the_runinference_hooks():
    for handler, namespace in ((SentenceEmbeddingHandler("x", model_copies=2), "dpsynth_sentence_embedding"),
                               (CausalLmHandler("x", model_copies=2), "dpsynth_causal_lm")):
        assert handler.get_metrics_namespace() == namespace
        assert handler.model_copies() == 2
        assert handler.share_model_across_processes() is False
        assert handler.batch_elements_kwargs()["max_batch_size"] >= 1
    assert SentenceEmbeddingHandler("x").batch_elements_kwargs()["max_batch_size"] <= 64
