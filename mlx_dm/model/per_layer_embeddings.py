"""Gemma 3n's per-layer embedding table, cut down to the token ids a training run feeds the model.

E2B's `embed_tokens_per_layer` has 262,144 rows of 30 × 256 values: 2.0B parameters, 4 GB in
bfloat16 and 8 GB in float32, more than all of its transformer layers together. Training only
looks up the ids that occur in its data (a few thousand), and LoRA never changes the table, so a
table of those rows computes exactly the same steps. The rows are read through a memory map of the
safetensors file, so the full table is never in memory; stock `mlx_lm.lora` holds all of it.

Only for training and loss evaluation on known data: generation can produce any id, so exports,
validation and chat load the full table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import mlx.core as mx
import mlx.nn as nn
import numpy as np


class CompactEmbedding(nn.Module):
    """An embedding over a subset of ids. Any other id reads a row of NaN, so a lookup outside the
    subset shows up as a NaN loss instead of a silently wrong row."""

    def __init__(self, weight: mx.array, index: mx.array):
        super().__init__()
        self.weight = weight
        self._index = index  # full id -> row of weight; a leading underscore keeps it out of parameters()

    def __call__(self, ids: mx.array) -> mx.array:
        return self.weight[self._index[ids]]


@dataclass(frozen=True)
class Compaction:
    rows_kept: int
    rows_total: int
    bytes_before: int  # the full table in the dtype the model computes in
    bytes_after: int
    read_from_file: bool  # False: taken from a table already loaded (e.g. a quantised checkpoint)


def _language_model(model):
    inner = getattr(getattr(model, "model", None), "language_model", None)
    return inner if inner is not None and hasattr(inner, "embed_tokens_per_layer") else None


def _compute_dtype(module) -> mx.Dtype:
    return module.scales.dtype if hasattr(module, "scales") else module.weight.dtype


def keep_rows(model, checkpoint: Path, token_ids: Iterable[int]) -> Compaction | None:
    """Replace the model's per-layer embedding table by the rows of ``token_ids`` (plus id 0, which
    ids beyond the table map to). Call it before the model's parameters are evaluated (load_model
    with lazy=True), so the full table is never read. None for a model without such a table."""
    language_model = _language_model(model)
    if language_model is None:
        return None
    from ..files import NUMPY_STORAGE, read_rows, safetensors_headers
    from .hub import PER_LAYER_TABLE

    table = language_model.embed_tokens_per_layer
    if isinstance(table, CompactEmbedding):
        raise ValueError("the per-layer embedding table is already compacted")
    vocabulary = language_model.vocab_size_per_layer_input
    ids = np.union1d(np.fromiter((i for i in token_ids if 0 <= i < vocabulary), dtype=np.int64), [0]).astype(np.int64)
    dtype = _compute_dtype(table)
    stored = [info for name, info in safetensors_headers(checkpoint).items() if name.endswith(PER_LAYER_TABLE)]
    from_file = len(stored) == 1 and stored[0]["dtype"] in NUMPY_STORAGE and stored[0]["shape"][0] == vocabulary
    if from_file:
        raw = mx.array(read_rows(stored[0], ids))
        rows = raw.view(mx.bfloat16) if stored[0]["dtype"] == "BF16" else raw
    else:  # quantised or unusual layout: look the rows up in the (lazily) loaded table
        rows = table(mx.array(ids.astype(np.int32)))
    width = rows.shape[-1]
    weight = mx.concatenate([rows.astype(dtype), mx.full((1, width), float("nan"), dtype=dtype)])
    index = np.full(vocabulary, len(ids), dtype=np.int32)
    index[ids] = np.arange(len(ids), dtype=np.int32)
    language_model.embed_tokens_per_layer = CompactEmbedding(weight, mx.array(index))
    mx.eval(weight)
    itemsize = weight.itemsize
    return Compaction(len(ids), vocabulary, vocabulary * width * itemsize, weight.size * itemsize, from_file)
