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


def test_a_top_k_private_chooser_lets_the_model_skip_its_members_head(tiny_lm):
    """PrivateTokenChooser with top-k reads members on the public row's top-k columns only,
    so the model computes the whole head for the public rows alone; the tokens, and the
    ledger's figures, are those of whole logits."""
    from mechanisms.generate import GenerationConfig, PrivateTokenChooser

    class SpyLM:
        def __init__(self, lm):
            self.lm, self.full_rows = lm, []

        def start(self, prompts, max_new_tokens, full_rows=None):
            self.full_rows.append(full_rows)
            return self.lm.start(prompts, max_new_tokens, full_rows=full_rows)

        def __getattr__(self, name):
            return getattr(self.lm, name)

    class WholeLogits(PrivateTokenChooser):
        reads_other_rows_on_last_rows_columns = False

    texts = ["the soup was cold", "great pasta and wine", "slow service, rude staff",
             "a quiet place for tea", "the best tacos in town", "we waited an hour"]
    prompts = [[tiny_lm.encode(t) for t in texts[:3]] + [tiny_lm.encode("Review:")],
               [tiny_lm.encode(t) for t in texts[3:]] + [tiny_lm.encode("A review:")]]
    config = GenerationConfig(aggregator="median", clip=4.0, temperature=1.0,
                              expected_batch_size=3, max_new_tokens=8, top_k=6)
    runs = {}
    for kind in (PrivateTokenChooser, WholeLogits):
        spy = SpyLM(tiny_lm)
        choosers = [kind(config, secret="s", batch_id=f"b{i}") for i in range(2)]
        results = generate_jointly(spy, [GenerationRequest(i, rows, choosers[i], 8)
                                         for i, rows in enumerate(prompts)])
        runs[kind] = (spy.full_rows, [r.token_ids for r in results],
                      [c.local_sensitivities for c in choosers])
    partial_rows, partial_tokens, partial_sensitivities = runs[PrivateTokenChooser]
    whole_rows, whole_tokens, whole_sensitivities = runs[WholeLogits]
    assert partial_rows == [[3, 7]] and whole_rows == [None]
    assert partial_tokens == whole_tokens
    assert partial_tokens[0] != partial_tokens[1]
    for partial, whole in zip(partial_sensitivities, whole_sensitivities):
        np.testing.assert_allclose(partial, whole, atol=1e-4)
