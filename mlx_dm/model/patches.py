"""Every fix to mlx-lm's Gemma 3n (mlx_lm/models/gemma3n.py, 0.32.x), in one place, applied at load.

1. KV sharing without a cache. Gemma 3n's last layers reuse the K/V of earlier layers. Upstream
   only does that `if cache is not None`, so a forward pass without a cache (what a trainer runs)
   lets the shared layers compute their own K/V from weights the real model never uses: training
   would tune a different function from the one exported and served. Fix: a forward pass without
   a cache gets a pass-through cache, so shared layers read their owner's K/V exactly as in
   generation and in llama.cpp.
2. AltUp magnitude epsilon. Upstream divides by `max(magnitude, finfo(dtype).min)` (the most
   negative float: no protection), giving NaN for an all-zero embedding row (e.g. `<pad>`).
   Hugging Face clamps the mean square at 1e-5 before the square root; so do we.
3. LoRA targets. mlx-lm's default LoRA wraps every Linear of a layer, including AltUp's
   coefficient layers whose `.weight` Gemma 3n reassigns in its forward pass, which then fails
   with `LoRALinear has no attribute weight`. `GEMMA3N_LORA_KEYS` lists the projections that work.

4. Gemma 3 text (mlx_lm/models/gemma3_text.py) has no way to pass an attention mask, so packed
   training rows would attend across scenarios. Not a bug upstream, an extension: the same
   optional ``mask=`` argument as Gemma 3n's, applied to full and (windowed) sliding layers.
5. Gradient checkpointing. mlx-lm's `grad_checkpoint` passes a layer's cache object into
   `mx.checkpoint` as a constant; with fix 1 the shared layers read their K/V through it, so the
   gradient never flows back through the K/V of the layers they share with, and every gradient
   below is wrong (on the tiny model: up to 95% off). `language_model.checkpoint_layers = True`
   checkpoints each layer with the shared K/V as explicit inputs and outputs (exact gradients).
6. Not a fix, an extension for training: the KV-shared layers at chosen positions only. A
   shared layer takes its K/V from an earlier layer, so a position's output there depends on
   that position's own hidden state alone (and the shared K/V of every position). The loss only
   reads the DM positions, so `positions=` runs the shared layers (E2B: 10 of 30) on those alone:
   the same values, and a third of the layer work saved at every context position.

`apply()` is idempotent; `is_applied()` says whether the running process has it.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

GEMMA3N_LORA_KEYS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
ALTUP_MAGNITUDE_EPS = 1e-5

class PassThroughKVCache:
    """Holds one layer's K/V for the length of a single cache-less forward pass."""

    offset = 0

    def __init__(self) -> None:
        self._keys: mx.array | None = None
        self._values: mx.array | None = None

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self._keys, self._values = keys, values
        return keys, values

    def keys_and_values(self) -> tuple[mx.array, mx.array]:
        if self._keys is None:
            raise RuntimeError("a KV-shared layer ran before the layer that owns its K/V")
        return self._keys, self._values


def _checkpointed_layer(layer, h: mx.array, mask: Any, cache: PassThroughKVCache, per_layer_input: mx.array,
                        offset: int) -> mx.array:
    """One Gemma 3n decoder layer under gradient checkpointing (fix 5), with KV sharing kept
    differentiable: the K/V a layer stores for the shared layers, and the K/V a shared layer reads,
    pass through the checkpoint as arrays. mlx-lm's grad_checkpoint hands the cache object in as a
    constant, so the shared layers' gradient never reaches the layers that computed their K/V, and
    every gradient below them is wrong (tests/test_model.py shows it)."""
    shared = layer.self_attn.is_kv_shared_layer

    def run(params, hidden, layer_input, *kv):
        layer.update(params)
        local = PassThroughKVCache()
        if kv:
            local._keys, local._values = kv
        out = layer(hidden, mask, local, layer_input, offset=offset)
        return (out,) if shared else (out, local._keys, local._values)

    kv = cache.keys_and_values() if shared else ()
    outputs = mx.checkpoint(run)(layer.trainable_parameters(), h, per_layer_input, *kv)
    if not shared:
        cache._keys, cache._values = outputs[1], outputs[2]
    return outputs[0]


class _FlatKV:
    """An owner layer's K/V with the batch rows laid end to end, (1, heads, B*L, dim), for queries
    gathered from every row; the mask keeps each query inside its own row."""

    offset = 0

    def __init__(self, owner: PassThroughKVCache):
        self.owner = owner

    def keys_and_values(self) -> tuple[mx.array, mx.array]:
        return tuple(_rows_end_to_end(x) for x in self.owner.keys_and_values())


def _rows_end_to_end(x: mx.array) -> mx.array:
    batch, heads, length, dim = x.shape
    return x.transpose(1, 0, 2, 3).reshape(1, heads, batch * length, dim)


class _RopeAtPositions:
    """A layer's RoPE applied at given positions, one per query (queries laid out as (1, H, N, D)):
    the same kernel as the model's, with one offset per query."""

    def __init__(self, rope, positions: mx.array):
        self.rope, self.positions = rope, positions

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        per_query = x.transpose(2, 1, 0, 3)  # (N, H, 1, D): each query its own batch row
        rotated = mx.fast.rope(per_query, self.rope.dims, traditional=self.rope.traditional, base=self.rope.base,
                               scale=self.rope.scale, offset=self.positions + offset)
        return rotated.transpose(2, 1, 0, 3)


def _gather_positions(mask: mx.array, positions: mx.array, batch: int, length: int) -> mx.array:
    """Rows ``positions`` (flat over batch × length) of a boolean (B, 1, L, L) mask, against the
    keys of all rows laid end to end: (1, 1, N, B*L)."""
    rows = mx.broadcast_to(mask, (batch, 1, length, length))[:, 0].reshape(batch * length, length)[positions]
    key_rows = mx.repeat(mx.arange(batch), length)
    return (mx.tile(rows, (1, batch)) & (key_rows[None, :] == (positions // length)[:, None]))[None, None]


def _shared_layer_at_positions(layer, h: mx.array, mask: mx.array, cache: _FlatKV, per_layer_input: mx.array,
                               query_positions: mx.array) -> mx.array:
    attention = layer.self_attn
    rope = attention.rope
    attention.rope = _RopeAtPositions(rope, query_positions)
    try:
        return layer(h, mask, cache, per_layer_input)
    finally:
        attention.rope = rope


def _magnitude(x: mx.array) -> mx.array:
    return mx.sqrt(mx.maximum(mx.mean(x**2, axis=-1, keepdims=True), ALTUP_MAGNITUDE_EPS))


def language_model_call(self, inputs: mx.array = None, cache: Any = None, input_embeddings: mx.array = None,
                        mask: Any = None, return_hidden: bool = False, positions: mx.array | None = None) -> mx.array:
    """mlx_lm.models.gemma3n.LanguageModel.__call__ with fixes 1 and 2.

    ``mask`` (optional) replaces both attention masks, e.g. a block-diagonal mask that keeps
    packed sequences from attending to each other: a boolean or additive array broadcastable to
    (batch, heads, queries, keys). ``positions`` (with a boolean ``mask`` and no cache; extension 6):
    flat indices over batch × length; the output is (N, ...) at those positions only.
    """
    from mlx_lm.models.base import create_attention_mask

    if input_embeddings is None:
        h = self.embed_tokens(inputs) * (self.hidden_size**0.5)
    else:
        h = input_embeddings

    per_layer_inputs = self.get_per_layer_inputs(inputs)
    per_layer_inputs = self.project_per_layer_inputs(h, per_layer_inputs)

    if cache is None:
        cache = [PassThroughKVCache() for _ in range(self.first_kv_shared_layer_idx)]

    if mask is None:
        global_mask = create_attention_mask(h, cache[self.first_full_idx])
        sliding_window_mask = create_attention_mask(h, cache[self.first_sliding_idx], window_size=self.sliding_window)
    else:
        global_mask = mask
        sliding_window_mask = _with_window(mask, h.shape[1], self.sliding_window)

    h0 = h
    target_magnitude = mx.mean(h0**2, axis=-1, keepdims=True) ** 0.5
    h_list = [h0] + [proj(h0) for proj in self.altup_projections]
    h = mx.stack(h_list, axis=0)
    h[1:] = h[1:] * (target_magnitude / _magnitude(h[1:]))

    offset = cache[0].offset if cache[0] is not None else 0
    select = positions is not None and mask is not None and mask.dtype == mx.bool_ and \
        all(isinstance(c, PassThroughKVCache) for c in cache)
    batch, length = h.shape[1], h.shape[2]
    query_positions = None
    for i, layer in enumerate(self.layers):
        if select and i == self.first_kv_shared_layer_idx:
            h = h.reshape(h.shape[0], batch * length, h.shape[-1])[:, positions][:, None]
            per_layer_inputs = per_layer_inputs.reshape(batch * length, *per_layer_inputs.shape[2:])[positions][None]
            global_mask = _gather_positions(global_mask, positions, batch, length)
            sliding_window_mask = _gather_positions(sliding_window_mask, positions, batch, length)
            cache = [_FlatKV(c) for c in cache]
            query_positions = positions % length + offset
        per_layer_input = per_layer_inputs[:, :, i, :]
        layer_mask = global_mask if self.config.layer_types[i] == "full_attention" else sliding_window_mask
        layer_cache = cache[self.layer_idx_to_cache_idx[i]]
        if query_positions is not None:
            h = _shared_layer_at_positions(layer, h, layer_mask, layer_cache, per_layer_input, query_positions)
        elif getattr(self, "checkpoint_layers", False) and isinstance(layer_cache, PassThroughKVCache):
            h = _checkpointed_layer(layer, h, layer_mask, layer_cache, per_layer_input, offset)
        else:
            h = layer(h, layer_mask, layer_cache, per_layer_input, offset=offset)

    target_magnitude = mx.mean(h[0] ** 2, axis=-1, keepdims=True) ** 0.5
    for i, proj in enumerate(self.altup_unembed_projections):
        h[i + 1] = proj(h[i + 1])
    h[1:] = h[1:] * (target_magnitude / _magnitude(h[1:]))
    h = mx.mean(h, axis=0)

    out = self.norm(h)
    if positions is not None:
        out = out[0] if select else out.reshape(-1, out.shape[-1])[positions]
    return out if return_hidden else gemma3n_head(self, out)


def gemma3n_head(language_model, hidden: mx.array) -> mx.array:
    out = language_model.embed_tokens.as_linear(hidden)
    if language_model.final_logit_softcapping is not None:
        from mlx_lm.models.gemma3n import logit_softcap

        out = logit_softcap(language_model.final_logit_softcapping, out)
    return out


def hidden_states(model, inputs: mx.array, mask: Any = None, positions: mx.array | None = None) -> mx.array:
    """The final normed hidden states (before the output head) of a Gemma 3n or Gemma 3 text model;
    with ``positions`` (flat over batch × length) only those, as (N, hidden)."""
    if model.model_type == "gemma3n":
        return model.model.language_model(inputs, mask=mask, return_hidden=True, positions=positions)
    hidden = model.model(inputs, mask=mask)
    return hidden if positions is None else hidden.reshape(-1, hidden.shape[-1])[positions]


def output_logits(model, hidden: mx.array) -> mx.array:
    """The output head (tied embeddings, soft-capping where the model has it) on given hidden states."""
    if model.model_type == "gemma3n":
        return gemma3n_head(model.model.language_model, hidden)
    return model.model.embed_tokens.as_linear(hidden) if model.tie_word_embeddings else model.lm_head(hidden)


def _with_window(mask: mx.array, length: int, window: int) -> mx.array:
    positions = mx.arange(length)
    in_window = (positions[:, None] - positions[None, :]) < window
    if mask.dtype == mx.bool_:
        return mask & in_window
    return mask + mx.where(in_window, 0.0, mx.finfo(mask.dtype).min).astype(mask.dtype)


def _gemma3n_call(self, inputs, cache=None, input_embeddings=None, mask=None):
    return self.language_model(inputs, cache=cache, input_embeddings=input_embeddings, mask=mask)


def _model_call(self, inputs, cache=None, input_embeddings=None, mask=None):
    return self.model(inputs, cache=cache, input_embeddings=input_embeddings, mask=mask)


def gemma3_text_model_call(self, inputs, cache=None, input_embeddings=None, mask=None):
    """mlx_lm.models.gemma3_text.Gemma3Model.__call__ with an optional attention mask (fix 4)."""
    from mlx_lm.models.base import create_attention_mask

    h = self.embed_tokens(inputs) if input_embeddings is None else input_embeddings
    h *= mx.array(self.args.hidden_size**0.5, mx.bfloat16).astype(h.dtype)
    if cache is None:
        cache = [None] * len(self.layers)
    if mask is None:
        global_mask = create_attention_mask(h, cache[self.sliding_window_pattern - 1])
        sliding_mask = (create_attention_mask(h, cache[0], window_size=self.window_size)
                        if self.sliding_window_pattern > 1 else None)
    else:
        global_mask = mask
        sliding_mask = _with_window(mask, h.shape[1], self.window_size)
    for i, (layer, layer_cache) in enumerate(zip(self.layers, cache)):
        is_global = i % self.sliding_window_pattern == self.sliding_window_pattern - 1
        h = layer(h, global_mask if is_global else sliding_mask, layer_cache)
    return self.norm(h)


def _gemma3_text_call(self, inputs, cache=None, input_embeddings=None, mask=None):
    out = self.model(inputs, cache, input_embeddings, mask=mask)
    return self.model.embed_tokens.as_linear(out) if self.tie_word_embeddings else self.lm_head(out)


_originals: dict[str, Any] = {}


def apply() -> None:
    """Install fixes 1, 2 and 4 into mlx-lm's classes (fix 3 is used by the trainer)."""
    from mlx_lm.models import gemma3_text, gemma3n

    if is_applied():
        return
    _originals.update(LanguageModel=gemma3n.LanguageModel.__call__, Gemma3n=gemma3n.Gemma3n.__call__,
                      Model=gemma3n.Model.__call__, Gemma3TextModel=gemma3_text.Gemma3Model.__call__,
                      Gemma3TextOuter=gemma3_text.Model.__call__)
    gemma3n.LanguageModel.__call__ = language_model_call
    gemma3n.Gemma3n.__call__ = _gemma3n_call
    gemma3n.Model.__call__ = _model_call
    gemma3_text.Gemma3Model.__call__ = gemma3_text_model_call
    gemma3_text.Model.__call__ = _gemma3_text_call


def is_applied() -> bool:
    from mlx_lm.models import gemma3n

    return gemma3n.LanguageModel.__call__ is language_model_call


def remove() -> None:
    """Restore upstream behaviour (tests use it to show each fix is needed)."""
    from mlx_lm.models import gemma3n

    if not is_applied():
        return
    from mlx_lm.models import gemma3_text

    gemma3n.LanguageModel.__call__ = _originals["LanguageModel"]
    gemma3n.Gemma3n.__call__ = _originals["Gemma3n"]
    gemma3n.Model.__call__ = _originals["Model"]
    gemma3_text.Gemma3Model.__call__ = _originals["Gemma3TextModel"]
    gemma3_text.Model.__call__ = _originals["Gemma3TextOuter"]
