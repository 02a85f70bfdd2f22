"""Next-token logits from a keras-hub causal LM, with KV-cached decoding.

DP generation needs, at every step, the next-token logits of many prompts of
different lengths, each followed by a suffix that grows by one token per step
(the suffix of its DP batch). keras-hub's own `generate()` samples inside the
model, so it cannot serve a sampler that aggregates logits across rows; this
module exposes the logits and keeps a key/value cache between steps.

Rows are LEFT-padded to a common prompt length, so that every row writes its
next token at the same cache index and one compiled step serves all rows.
Left padding shifts a row's positions by a constant; rotary position
embeddings depend only on position differences, so attention scores are
unchanged, and the padded keys are masked out of every query. Gemma 3's
sliding-window layers bound the same difference, so left padding leaves
their windows unchanged too.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import dataclasses
import functools
import logging
from typing import Sequence

import numpy as np

_LOG = logging.getLogger(__name__)

# Prompt and cache lengths are rounded up to these multiples so that a few
# compiled shapes serve all batches instead of one compilation per length.
PROMPT_LENGTH_BUCKET = 16
CACHE_LENGTH_BUCKET = 64
ROW_BUCKET = 8
PREFILL_ROWS = 8  # a multiple of ROW_BUCKET, so every chunk is full
END_OF_DOCUMENT_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>",
                          "<eos>", "<end_of_turn>")


def release_freed_memory() -> bool:
    """Hands the pages malloc keeps for blocks already freed back to the system.

    Tensors of a few MB (a prefill's activations, a finished call's buffers) come
    from glibc's heaps, which return nothing while a block above them is live; a
    run's resident memory then climbs from call to call by what earlier calls
    freed. False where there is no glibc (nothing to release).
    """
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


@dataclasses.dataclass
class DecodeState:
    """What one cached decoding run carries from step to step."""

    sequences: list            # per row: prompt ids followed by the ids fed so far
    caches: list | None        # per layer, a tf.Variable (rows, 2, cache_length, kv_heads, head_dim)
    key_mask: object | None    # (rows, cache_length) 1 where a key is a real token
    next_index: int            # cache index the next fed token is written to
    cache_length: int
    logits: np.ndarray         # (rows, vocabulary) for the next token, or RowLogits
    full_rows: np.ndarray | None = None   # rows with whole-vocabulary logits (None: all)

    @property
    def steps_left(self) -> int:
        return self.cache_length - self.next_index


class RowLogits:
    """Next-token logits of a step: some rows over the whole vocabulary, the others
    computed on request for the columns asked.

    Indexes like the (rows, vocabulary) array it stands for, in the ways a chooser
    reads one: `logits[i]` (a row), `logits[a:b]` (a view of rows) and
    `logits[:, columns]` (some columns of every row, with `columns` an index array).
    `np.asarray(logits)` computes the whole array.
    """

    def __init__(self, lm, hidden, full_logits, full_rows):
        self._lm, self._hidden = lm, hidden
        self._full_logits = full_logits
        self._full_position = {int(r): i for i, r in enumerate(full_rows)}
        self._rows = np.arange(len(hidden))

    @property
    def shape(self):
        return (len(self._rows), self._lm.vocabulary_size)

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, key):
        if isinstance(key, slice):
            view = copy.copy(self)
            view._rows = self._rows[key]
            return view
        if isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None):
            return self._columns(self._rows, np.asarray(key[1]))
        if isinstance(key, (int, np.integer)):
            return self._columns(self._rows[[key]], None)[0]
        raise TypeError(f"RowLogits does not take the index {key!r}")

    def __array__(self, dtype=None, copy=None):
        whole = self._columns(self._rows, None)
        return whole if dtype is None else whole.astype(dtype)

    def _columns(self, rows, columns):
        width = self._lm.vocabulary_size if columns is None else len(columns)
        out = np.empty((len(rows), width), dtype=self._full_logits.dtype)
        computed = []
        for i, row in enumerate(rows):
            position = self._full_position.get(int(row))
            if position is None:
                computed.append(i)
            else:
                full = self._full_logits[position]
                out[i] = full if columns is None else full[columns]
        if computed:
            every_column = np.arange(self._lm.vocabulary_size) if columns is None else columns
            out[computed] = self._lm.logits_on_columns(self._hidden[rows[computed]],
                                                       every_column)
        return out


class CausalLanguageModel:
    """Serves last-position logits of a keras-hub CausalLM, recomputed or cached.

    `cached=None` uses the KV cache when the architecture supports it (the
    Llama family and text-only Gemma 3) and full recomputation otherwise; both
    give the same logits.
    """

    def __init__(self, keras_causal_lm, *, cached: bool | None = None,
                 jit_compile: bool = True):
        import tensorflow as tf

        self.keras_model = keras_causal_lm
        self.backbone = keras_causal_lm.backbone
        self.tokenizer = keras_causal_lm.preprocessor.tokenizer
        self.vocabulary_size = int(self.backbone.vocabulary_size)
        supports_cache = self._supports_cache()
        if cached and not supports_cache:
            raise ValueError(
                f"{type(self.backbone).__name__} has no cached decoding here; "
                "use cached=None or False")
        self.cached = supports_cache if cached is None else cached
        self.end_token_ids = self._end_token_ids()
        preprocessor = keras_causal_lm.preprocessor
        start = getattr(self.tokenizer, "start_token_id", None)
        # Gemma needs its BOS token; SmolLM2 was trained without one.
        self._start = [int(start)] if start is not None and getattr(
            preprocessor, "add_start_token", False) else []
        self._tf = tf
        self._last_hidden = tf.function(self._last_hidden_eager, jit_compile=jit_compile,
                                        reduce_retracing=True)
        # Decoding steps repeat one shape many times: worth an XLA compilation.
        # Prefill shapes change with every batch of prompts, and a compilation
        # of the whole model costs more than XLA saves on one call.
        gemma = self._is_gemma3()
        self._decode_step = tf.function(
            self._gemma3_decode_step_eager if gemma else self._decode_step_eager,
            jit_compile=jit_compile)
        self._prefill_forward = tf.function(
            self._gemma3_prefill_eager if gemma else self._prefill_eager,
            jit_compile=False, reduce_retracing=True)

    # --- text ----------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, with the start token when the model was trained with one."""
        return self._start + [int(t) for t in np.asarray(self.tokenizer(text))]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        rows = self.tokenizer(list(texts))
        rows = rows.to_list() if hasattr(rows, "to_list") else rows
        return [self._start + [int(t) for t in np.asarray(row)] for row in rows]

    def decode(self, token_ids: Sequence[int]) -> str:
        if len(token_ids) == 0:
            return ""
        text = self.tokenizer.detokenize(np.asarray(token_ids, dtype="int32"))
        return _to_str(text)

    def generate(self, requests):
        """Runs `joint_decoding.GenerationRequest`s together (see that module).

        A method of the model, so that a model shared across processes serves
        a whole generation in one proxied call.
        """
        from offline_models.joint_decoding import generate_jointly

        return generate_jointly(self, requests)

    # --- logits by full recomputation -----------------------------------------

    def next_token_logits(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits of the token after each sequence, (rows, vocabulary), float32.

        Rows are right-padded, so each row's positions start at 0; only the
        last real position is projected onto the vocabulary, which keeps
        large-vocabulary models from materialising (rows, length, vocabulary).
        """
        _check_nonempty(sequences)
        length = _round_up(max(len(s) for s in sequences), PROMPT_LENGTH_BUCKET)
        rows = _round_up(len(sequences), ROW_BUCKET)
        token_ids = np.zeros((rows, length), dtype="int32")
        padding_mask = np.zeros((rows, length), dtype="int32")
        padding_mask[:, 0] = 1  # padding rows: one token, so no row is all masked
        last = np.zeros(rows, dtype="int32")
        for row, seq in enumerate(sequences):
            token_ids[row, :len(seq)] = seq
            padding_mask[row, :len(seq)] = 1
            last[row] = len(seq) - 1
        return self._last_hidden(token_ids, padding_mask, last).numpy()[:len(sequences)]

    def _last_hidden_eager(self, token_ids, padding_mask, last_positions):
        tf = self._tf
        hidden = self.backbone({"token_ids": token_ids, "padding_mask": padding_mask})
        last_hidden = tf.gather(hidden, last_positions, axis=1, batch_dims=1)
        return self.backbone.token_embedding(last_hidden, reverse=True)

    # --- cached decoding -------------------------------------------------------

    def start(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
              full_rows: Sequence[int] | None = None) -> DecodeState:
        """Reads the prompts and returns a state whose `.logits` predict token 1.

        The cache has room for `max_new_tokens` fed tokens after the prompts.
        `full_rows`: the rows whose logits over the whole vocabulary the caller
        reads at every step (None: all). Decoding steps then return the other
        rows' logits as `RowLogits`, computed on the columns the caller asks for.
        """
        _check_nonempty(prompts)
        if full_rows is not None:
            full_rows = np.asarray(sorted(set(int(r) for r in full_rows)), dtype="int32")
            if len(full_rows) and not 0 <= full_rows[0] <= full_rows[-1] < len(prompts):
                raise ValueError(f"full_rows must index the {len(prompts)} prompts")
        if not self.cached:
            sequences = [list(p) for p in prompts]
            return DecodeState(sequences, None, None, 0, max_new_tokens,
                               self.next_token_logits(sequences))  # full_rows: all rows
        tf = self._tf
        prompt_length = _round_up(max(len(p) for p in prompts), PROMPT_LENGTH_BUCKET)
        cache_length = _round_up(prompt_length + max_new_tokens, CACHE_LENGTH_BUCKET)
        # Padding rows (copies of the first prompt, never read) keep the
        # number of compiled shapes small when batches vary in size.
        rows = _round_up(len(prompts), ROW_BUCKET)
        padded_prompts = list(prompts) + [prompts[0]] * (rows - len(prompts))
        key_mask = np.ones((rows, cache_length), dtype="int32")
        for row, prompt in enumerate(padded_prompts):
            key_mask[row, :prompt_length - len(prompt)] = 0
        # Prefill in chunks of rows of similar length: a chunk computes only
        # its own longest prompt, written at the end of the shared prompt
        # window, which saves the padding work and bounds the activations.
        order = sorted(range(rows), key=lambda r: -len(padded_prompts[r]))
        # The cache is a run's largest allocation: what earlier calls freed goes
        # back to the system first rather than sit beside it.
        release_freed_memory()
        # The cache lives in variables updated in place, so neither the
        # prefill nor a decoding step holds a second copy of it.
        caches = [tf.Variable(tf.zeros(self._layer_cache_shape(rows, cache_length), "float32"),
                              trainable=False)
                  for _ in self.backbone.transformer_layers]
        cache_handles = [cache.handle for cache in caches]
        # keras-hub's cached layer call returns an updated copy and leaves its
        # input cache untouched, so one empty chunk cache serves every layer.
        empty_chunk_cache = None
        logits = np.zeros((rows, self.vocabulary_size), dtype="float32")
        for begin in range(0, rows, PREFILL_ROWS):
            chunk = order[begin:begin + PREFILL_ROWS]
            chunk_length = _round_up(max(len(padded_prompts[r]) for r in chunk),
                                     PROMPT_LENGTH_BUCKET)
            token_ids = np.zeros((len(chunk), chunk_length), dtype="int32")
            for i, r in enumerate(chunk):
                token_ids[i, chunk_length - len(padded_prompts[r]):] = padded_prompts[r]
            chunk_cache_shape = self._layer_cache_shape(len(chunk), cache_length)
            if empty_chunk_cache is None or tuple(empty_chunk_cache.shape) != chunk_cache_shape:
                empty_chunk_cache = tf.zeros(chunk_cache_shape, "float32")
            chunk_logits = self._prefill_forward(
                tf.constant(token_ids), empty_chunk_cache, cache_handles,
                tf.constant(np.asarray(chunk, dtype="int32")[:, None]),
                tf.constant(key_mask[chunk]),
                tf.constant(prompt_length - chunk_length, dtype="int32"))
            logits[chunk] = chunk_logits.numpy()
        del empty_chunk_cache, chunk_logits
        # The decoding steps allocate differently sized blocks than the prefill.
        release_freed_memory()
        return DecodeState([list(p) for p in prompts], caches, tf.constant(key_mask),
                           prompt_length, cache_length, logits[:len(prompts)], full_rows)

    def advance(self, state: DecodeState, next_tokens: Sequence[int]) -> np.ndarray:
        """Feeds one token per row; updates `state` and returns the new logits."""
        next_tokens = np.asarray(next_tokens, dtype="int32").reshape(-1)
        if next_tokens.shape[0] != len(state.sequences):
            raise ValueError(f"expected {len(state.sequences)} tokens, got {next_tokens.shape[0]}")
        if state.steps_left <= 0:
            raise ValueError("the decoding cache is full: start() with a larger max_new_tokens")
        for seq, token in zip(state.sequences, next_tokens):
            seq.append(int(token))
        if not self.cached:
            state.next_index += 1
            state.logits = self.next_token_logits(state.sequences)
            return state.logits
        tf = self._tf
        rows = int(state.key_mask.shape[0])
        padded = np.zeros(rows, dtype="int32")
        padded[:len(next_tokens)] = next_tokens
        full_rows = np.arange(rows) if state.full_rows is None else state.full_rows
        # Padding rows, and copies of row 0 that fill the list of full rows up to a
        # multiple of ROW_BUCKET, keep the compiled shapes few.
        padded_full_rows = np.zeros(_round_up(len(full_rows), ROW_BUCKET), dtype="int32")
        padded_full_rows[:len(full_rows)] = full_rows
        hidden, logits = self._decode_step(
            tf.constant(padded[:, None]), [cache.handle for cache in state.caches],
            state.key_mask, tf.constant(state.next_index, dtype="int32"),
            tf.constant(padded_full_rows))
        state.next_index += 1
        if state.full_rows is None:
            state.logits = logits.numpy()[:len(next_tokens)]
        else:
            state.logits = RowLogits(self, hidden.numpy()[:len(next_tokens)],
                                     logits.numpy()[:len(full_rows)], full_rows)
        return state.logits

    def _step_outputs(self, x, full_rows):
        """The final hidden state of every row, and the whole-vocabulary logits of the
        rows in `full_rows` only: the head is a large share of a decoding step (a fifth
        of SmolLM2's weights, a third of Gemma 3's), and rows whose chooser reads a few
        columns get those from the hidden state instead (`RowLogits`)."""
        hidden = self.backbone.layer_norm(x[:, -1, :])
        return hidden, self.backbone.token_embedding(
            self._tf.gather(hidden, full_rows), reverse=True)

    def logits_on_columns(self, hidden, columns) -> np.ndarray:
        """Logits of the vocabulary entries `columns` from final hidden states (rows, hidden):
        the head's arithmetic on those columns only."""
        tf = self._tf
        embedding = self.backbone.token_embedding
        columns = tf.constant(np.asarray(columns, dtype="int32"))
        if embedding.tie_weights:
            kernel = tf.gather(embedding.embeddings, columns)
        else:
            kernel = tf.transpose(tf.gather(embedding.reverse_embeddings, columns, axis=1))
        hidden = tf.constant(np.asarray(hidden))
        if embedding.reverse_dtype is not None:
            hidden = tf.cast(hidden, embedding.reverse_dtype)
            kernel = tf.cast(kernel, embedding.reverse_dtype)
        logits = tf.linalg.matmul(hidden, kernel, transpose_b=True)
        if embedding.logit_soft_cap is not None:
            logits = tf.tanh(logits / embedding.logit_soft_cap) * embedding.logit_soft_cap
        return logits.numpy()

    def _write_cache(self, handle, slots, updates):
        """Scatters `updates` into the cache variable behind `handle`, in place.

        The prefill and decoding steps take the caches' resource handles, not the variables: a
        tf.function keeps the variables of the call that traced it alive for good, which
        held one whole cache (about 1 GB at 72 rows) per traced shape.
        """
        self._tf.raw_ops.ResourceScatterNdUpdate(ref=handle, indices=slots, updates=updates)

    def _cache_slots(self, rows, start_index):
        """Scatter indices of every row's new key (then value) at `start_index`, matching
        the updates `concat([keys, values])` of shape (2 * rows, heads, dim)."""
        tf = self._tf
        row_index = tf.range(rows)
        at = tf.fill([rows], start_index)
        return tf.concat([tf.stack([row_index, tf.zeros_like(row_index), at], axis=1),
                          tf.stack([row_index, tf.ones_like(row_index), at], axis=1)], axis=0)

    def _read_cache(self, handle):
        return self._tf.raw_ops.ReadVariableOp(resource=handle, dtype=self._tf.float32)

    def _decode_step_eager(self, token_ids, cache_handles, key_mask, start_index, full_rows):
        """One token per row through every Llama block, reading the cache in place.

        The same arithmetic as the decoder layers' own call, written for one
        query position: the new key and value go into the cache variables at
        `start_index` (a scatter, not a copy of the cache), and the query heads
        of each key-value group attend to that group's keys directly. The
        layers' own call repeats every cached key and value across the query
        heads of its group and copies the whole cache several times per step.
        """
        tf = self._tf
        x = self.backbone.token_embedding(token_ids)                   # (rows, 1, hidden)
        rows = tf.shape(token_ids)[0]
        positions = tf.range(tf.shape(key_mask)[1])
        visible = tf.logical_and(key_mask > 0, positions[None, :] <= start_index)
        visible = visible[:, None, None, :]                            # (rows, 1, 1, keys)
        slots = self._cache_slots(rows, start_index)
        for layer, handle in zip(self.backbone.transformer_layers, cache_handles):
            attention = layer._self_attention_layer
            hidden = layer._self_attention_layernorm(x)
            query = attention.rotary_embedding_layer(attention._query_dense(hidden),
                                                     start_index=start_index)
            key = attention.rotary_embedding_layer(attention._key_dense(hidden),
                                                   start_index=start_index)
            value = attention._value_dense(hidden)
            self._write_cache(handle, slots, tf.concat([key[:, 0], value[:, 0]], axis=0))
            cache = self._read_cache(handle)
            groups = attention.num_key_value_groups
            heads, head_dim = attention.num_key_value_heads, tf.shape(query)[-1]
            # Query head h uses key-value head h // groups (keras-hub repeats each
            # key-value head `groups` times in a row).
            grouped = tf.reshape(query, (rows, heads, groups, head_dim))
            keys, values = cache[:, 0], cache[:, 1]                     # (rows, keys, heads, dim)
            scores = tf.einsum("bkgd,btkd->bkgt", grouped, keys) * attention._inv_norm_factor
            scores = tf.where(visible, scores, tf.cast(-1e9, scores.dtype))
            weights = tf.nn.softmax(scores, axis=-1)
            attended = tf.einsum("bkgt,btkd->bkgd", weights, values)
            attended = tf.reshape(attended, (rows, 1, heads * groups, head_dim))
            x = x + attention._output_dense(attended)
            hidden = layer._feedforward_layernorm(x)
            gate = layer.activation(layer._feedforward_gate_dense(hidden))
            x = x + layer._feedforward_output_dense(
                layer._feedforward_intermediate_dense(hidden) * gate)
        return self._step_outputs(x, full_rows)

    def _prefill_eager(self, token_ids, empty_chunk_cache, cache_handles, cache_rows, key_mask,
                       start_index):
        """Reads a chunk of left-padded prompts through the Llama blocks' own cached call.

        Each layer's chunk cache is scattered into rows `cache_rows` of its cache
        variable as soon as the layer has run, so at most a layer or two of chunk
        caches are alive at once instead of a whole chunk-sized copy of the cache.
        """
        tf = self._tf
        x = self.backbone.token_embedding(token_ids)
        query_length = tf.shape(token_ids)[1]
        # (rows, queries, keys): a query may see every real key; causality
        # relative to start_index is added by the decoder layer itself.
        attention_mask = tf.repeat(key_mask[:, None, :], query_length, axis=1)
        for layer, handle in zip(self.backbone.transformer_layers, cache_handles):
            x, chunk_cache = layer(
                x,
                decoder_attention_mask=attention_mask,
                self_attention_cache=empty_chunk_cache,
                self_attention_cache_update_index=start_index,
            )
            self._write_cache(handle, cache_rows, chunk_cache)
        hidden = self.backbone.layer_norm(x[:, -1, :])
        return self.backbone.token_embedding(hidden, reverse=True)

    # --- Gemma 3 -------------------------------------------------------------
    #
    # keras-hub's Gemma 3 decoder block takes a padding mask only as long as its
    # own input, not one over the whole cache, so left-padded rows cannot go
    # through its cached call. These functions redo its arithmetic (query/key
    # norms, two RoPE wavelengths, post-attention and post-feedforward norms,
    # sliding windows) with an explicit mask over the cache.

    def _gemma3_prefill_eager(self, token_ids, empty_chunk_cache, cache_handles, cache_rows,
                              key_mask, start_index):
        """Reads a chunk of left-padded prompts that ends at the prompt window's end.

        Rows of a chunk hold no earlier tokens, so the chunk's queries attend to
        the chunk's own keys only, not to the whole (empty) cache. Each layer's
        keys and values go into rows `cache_rows` of its cache variable as soon as
        the layer has run. `empty_chunk_cache` is unused: the Llama prefill's
        signature, so both share the caller.
        """
        del empty_chunk_cache
        tf = self._tf
        x = self._gemma3_embed(token_ids)
        length = tf.shape(token_ids)[1]
        positions = start_index + tf.range(length)
        chunk_mask = key_mask[:, start_index:start_index + length]
        visible = self._gemma3_visibility(chunk_mask, positions, positions)
        after = tf.shape(key_mask)[1] - start_index - length
        for layer, handle in zip(self.backbone.transformer_layers, cache_handles):
            hidden = layer.pre_attention_norm(x)
            query, key, value = self._gemma3_projections(layer.attention, hidden, start_index)
            self._write_cache(handle, cache_rows, tf.pad(
                tf.stack([key, value], axis=1),
                [[0, 0], [0, 0], [start_index, after], [0, 0], [0, 0]]))
            x = self._gemma3_block_rest(layer, x, query, key, value,
                                        visible[layer.attention.use_sliding_window_attention])
        hidden = self.backbone.layer_norm(x[:, -1, :])
        return self.backbone.token_embedding(hidden, reverse=True)

    def _gemma3_decode_step_eager(self, token_ids, cache_handles, key_mask, start_index,
                                  full_rows):
        """One token per row through every Gemma 3 block, the cache updated in place."""
        tf = self._tf
        x = self._gemma3_embed(token_ids)                              # (rows, 1, hidden)
        rows = tf.shape(token_ids)[0]
        visible = self._gemma3_visibility(key_mask, start_index[None],
                                          tf.range(tf.shape(key_mask)[1]))
        slots = self._cache_slots(rows, start_index)
        for layer, handle in zip(self.backbone.transformer_layers, cache_handles):
            hidden = layer.pre_attention_norm(x)
            query, key, value = self._gemma3_projections(layer.attention, hidden, start_index)
            self._write_cache(handle, slots, tf.concat([key[:, 0], value[:, 0]], axis=0))
            cache = self._read_cache(handle)
            x = self._gemma3_block_rest(layer, x, query, cache[:, 0], cache[:, 1],
                                        visible[layer.attention.use_sliding_window_attention])
        return self._step_outputs(x, full_rows)

    def _gemma3_embed(self, token_ids):
        tf = self._tf
        x = self.backbone.token_embedding(token_ids)
        return x * tf.cast(tf.sqrt(float(self.backbone.hidden_dim)), x.dtype)

    def _gemma3_visibility(self, key_mask, query_positions, key_positions):
        """{sliding: (rows, queries, keys)} which keys each query may attend to.

        A key is visible when it is a real token at or before the query; in a
        sliding-window layer also less than the window behind it, as keras-hub's
        band of width window - 1 has it.
        """
        tf = self._tf
        distance = query_positions[:, None] - key_positions[None, :]     # (queries, keys)
        causal = tf.logical_and(key_mask[:, None, :] > 0, (distance >= 0)[None])
        window = self.backbone.sliding_window_size
        return {False: causal,
                True: tf.logical_and(causal, (distance < window)[None])}

    def _gemma3_projections(self, attention, hidden, start_index):
        query = attention.query_dense(hidden)
        key = attention.key_dense(hidden)
        if attention.use_query_key_norm:
            query = attention.query_norm(query)
            key = attention.key_norm(key)
        return (attention.rope_layer(query, start_index=start_index),
                attention.rope_layer(key, start_index=start_index),
                attention.value_dense(hidden))

    def _gemma3_block_rest(self, layer, x, query, keys, values, visible):
        """Attention of `query` (rows, queries, heads, dim) over `keys` and `values`
        (rows, keys, kv heads, dim) where `visible`, then the feedforward half."""
        tf = self._tf
        attention = layer.attention
        if attention.query_head_dim_normalize:
            scale = 1.0 / np.sqrt(attention.head_dim)
        else:
            scale = 1.0 / np.sqrt(attention.hidden_dim // attention.num_query_heads)
        rows, length = tf.shape(query)[0], tf.shape(query)[1]
        heads, groups = attention.num_key_value_heads, attention.num_key_value_groups
        grouped = tf.reshape(query * scale, (rows, length, heads, groups, attention.head_dim))
        scores = tf.einsum("bqkgd,btkd->bkgqt", grouped, keys)
        if attention.logit_soft_cap is not None:
            cap = attention.logit_soft_cap
            scores = tf.tanh(scores / cap) * cap
        scores = tf.where(visible[:, None, None], scores, tf.cast(-1e9, scores.dtype))
        weights = tf.nn.softmax(scores, axis=-1)
        attended = tf.einsum("bkgqt,btkd->bqkgd", weights, values)
        attended = tf.reshape(attended, (rows, length, heads * groups, attention.head_dim))
        attended = attention.output_dense(attended)
        if layer.use_post_attention_norm:
            attended = layer.post_attention_norm(attended)
        x = x + attended
        hidden = layer.pre_ffw_norm(x)
        feedforward = layer.ffw_linear(
            tf.nn.gelu(layer.gating_ffw(hidden), approximate=True) * layer.gating_ffw_2(hidden))
        if layer.use_post_ffw_norm:
            feedforward = layer.post_ffw_norm(feedforward)
        return x + feedforward

    # --- architecture ----------------------------------------------------------

    def _layer_cache_shape(self, rows, cache_length):
        backbone = self.backbone
        head_dim = (backbone.head_dim if self._is_gemma3()
                    else backbone.hidden_dim // backbone.num_query_heads)
        return (rows, 2, cache_length, backbone.num_key_value_heads, head_dim)

    def _is_gemma3(self) -> bool:
        from keras_hub.src.models.gemma3.gemma3_backbone import Gemma3Backbone

        return (isinstance(self.backbone, Gemma3Backbone)
                and getattr(self.backbone, "vision_encoder", None) is None)

    def _supports_cache(self) -> bool:
        from keras_hub.src.models.llama.llama_backbone import LlamaBackbone

        return isinstance(self.backbone, LlamaBackbone) or self._is_gemma3()

    def _end_token_ids(self) -> frozenset:
        ids = set()
        for attribute in ("end_token_id", "end_token2_id"):
            value = getattr(self.tokenizer, attribute, None)
            if value is not None:
                ids.add(int(value))
        # A completion prompt ends its document with the end-of-text token,
        # which chat-tuned vocabularies keep apart from their end-of-turn one.
        for token in END_OF_DOCUMENT_TOKENS:
            try:
                token_id = self.tokenizer.token_to_id(token)
            except (KeyError, ValueError, TypeError):
                continue
            if token_id is not None and 0 <= int(token_id) < self.vocabulary_size:
                ids.add(int(token_id))
        return frozenset(ids)


def _check_nonempty(sequences):
    if len(sequences) == 0:
        raise ValueError("no sequences given")
    for seq in sequences:
        if len(seq) == 0:
            raise ValueError("every sequence needs at least one token")


def _to_str(value) -> str:
    if hasattr(value, "numpy"):
        value = value.numpy()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
