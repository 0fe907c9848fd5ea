"""One training step's math: the mask over packed rows, the loss on the DM tokens only, and the
validation loss (summed over the processes of a distributed group)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..model import patches
from . import batching


def attention_mask(segments: mx.array) -> mx.array:
    """Causal and block-diagonal over packed scenarios; padding attends to itself (no empty rows)."""
    length = segments.shape[1]
    positions = mx.arange(length)
    causal = positions[:, None] >= positions[None, :]
    same = segments[:, :, None] == segments[:, None, :]
    diagonal = positions[:, None] == positions[None, :]
    return ((same & causal) | diagonal)[:, None, :, :]


def loss_fn(model, inputs, targets, positions, weights, segments):
    """Weighted mean cross-entropy over the DM tokens, and the total weight (the token count when
    every weight is 1, `train.call_weight`); the output head, and Gemma 3n's KV-shared layers, run
    at those positions only (patches, extension 6)."""
    selected = patches.hidden_states(model, inputs, mask=attention_mask(segments), positions=positions)
    logits = patches.output_logits(model, selected)
    losses = nn.losses.cross_entropy(logits.astype(mx.float32), targets.reshape(-1)[positions]) * weights
    tokens = weights.sum()
    return losses.sum() / mx.maximum(tokens, 1), tokens


def batch_arrays(batch: batching.Batch) -> tuple:
    positions, weights = batch.loss_positions()
    return (mx.array(batch.inputs), mx.array(batch.targets), mx.array(positions), mx.array(weights),
            mx.array(batch.segments))


def evaluate_loss(model, rows: list[batching.PackedRow], length: int, batch_size: int, group=None) -> float | None:
    """Mean loss over the DM tokens of ``rows``; with a distributed group each process scores its
    share of the rows and the sums are added up, so every process gets the same value."""
    if not rows:
        return None
    world, rank = (group.size(), group.rank()) if group is not None else (1, 0)
    mine = rows[rank::world]
    total, tokens = 0.0, 0.0
    for start in range(0, len(mine), batch_size):
        batch = batching.make_batch(mine[start:start + batch_size], length + 1)
        loss, n = loss_fn(model, *batch_arrays(batch))
        mx.eval(loss, n)
        total += loss.item() * n.item()
        tokens += n.item()
    if world > 1:
        summed = mx.distributed.all_sum(mx.array([total, tokens], dtype=mx.float32), group=group)
        total, tokens = summed.tolist()
    return total / tokens if tokens else None
