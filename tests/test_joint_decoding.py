import numpy as np

from offline_models.joint_decoding import GenerationRequest, GreedyChooser, generate_jointly


class ScriptedChooser:
    """Emits a fixed token sequence and records the logits it was shown."""

    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.seen = []

    def choose(self, step, logits):
        self.seen.append(logits.copy())
        return self.tokens[step] if step < len(self.tokens) else None


def test_each_request_sees_exactly_its_own_rows(tiny_lm):
    prompts_a = [tiny_lm.encode("the cat"), tiny_lm.encode("a long prompt about the food")]
    prompts_b = [tiny_lm.encode("great service")]
    a, b = ScriptedChooser([10, 11, 12]), ScriptedChooser([20, 21])
    results = generate_jointly(tiny_lm, [
        GenerationRequest("a", prompts_a, a, max_new_tokens=8),
        GenerationRequest("b", prompts_b, b, max_new_tokens=8)])
    assert [r.token_ids for r in results] == [[10, 11, 12], [20, 21]]
    assert [r.stopped_by for r in results] == ["chooser", "chooser"]
    # The logits each chooser saw are those of its rows with its own suffix.
    for step in range(3):
        expected = tiny_lm.next_token_logits([p + [10, 11, 12][:step] for p in prompts_a])
        np.testing.assert_allclose(a.seen[step], expected, atol=1e-3)
    for step in range(2):
        expected = tiny_lm.next_token_logits([p + [20, 21][:step] for p in prompts_b])
        np.testing.assert_allclose(b.seen[step], expected, atol=1e-3)


def test_stops_at_max_new_tokens_and_at_end_token(tiny_lm):
    end = min(tiny_lm.end_token_ids)
    results = generate_jointly(tiny_lm, [
        GenerationRequest(0, [[5, 6]], ScriptedChooser([1] * 10), max_new_tokens=4),
        GenerationRequest(1, [[7]], ScriptedChooser([2, end, 3]), max_new_tokens=9)])
    assert results[0].token_ids == [1, 1, 1, 1] and results[0].stopped_by == "max_new_tokens"
    assert results[1].token_ids == [2, end] and results[1].stopped_by == "end_token"


def test_greedy_generation_matches_stepwise_argmax(tiny_lm):
    prompt = tiny_lm.encode("the food")
    [result] = generate_jointly(tiny_lm, [GenerationRequest(0, [prompt], GreedyChooser(), 5)])
    sequence = list(prompt)
    for _ in range(5):
        sequence.append(int(np.argmax(tiny_lm.next_token_logits([sequence])[0])))
        if sequence[-1] in tiny_lm.end_token_ids:
            break
    assert result.token_ids == sequence[len(prompt):]
