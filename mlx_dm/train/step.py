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


# The loss weight that marks, in the validation rows, the tokens carrying the call decision: each
# reference call's tokens and each reply's closing token (batching.weighted_spans puts the call
# weight there). Validation reads it as a marker, never as a weight.
DECISION_MARK = 2.0


def position_losses(model, inputs, targets, positions, segments):
    """Cross-entropy at `positions` only: the output head, and Gemma 3n's KV-shared layers, run
    there alone (patches, extension 6)."""
    selected = patches.hidden_states(model, inputs, mask=attention_mask(segments), positions=positions)
    logits = patches.output_logits(model, selected)
    return nn.losses.cross_entropy(logits.astype(mx.float32), targets.reshape(-1)[positions])


def loss_fn(model, inputs, targets, positions, weights, segments):
    """Weighted mean cross-entropy over the DM tokens, and the total weight (the token count when
    every weight is 1, `train.call_weight`)."""
    losses = position_losses(model, inputs, targets, positions, segments) * weights
    tokens = weights.sum()
    return losses.sum() / mx.maximum(tokens, 1), tokens


def batch_arrays(batch: batching.Batch) -> tuple:
    positions, weights = batch.loss_positions()
    return (mx.array(batch.inputs), mx.array(batch.targets), mx.array(positions), mx.array(weights),
            mx.array(batch.segments))


def evaluate_losses(model, rows: list[batching.PackedRow], length: int, batch_size: int,
                    group=None) -> tuple[float | None, float | None]:
    """(mean loss over every DM token of `rows`, mean loss over their decision tokens) in one pass.

    The decision tokens are those weighted DECISION_MARK (rows tokenized with that call weight):
    where a reply opens a call, names the tool and its argument, or ends. A reply is mostly
    narration, so the first number barely sees the calls; the second is what adapter selection
    and early stopping watch (train.select_by = "calls"). With a distributed group each process
    scores its share of the rows and the sums are added up."""
    if not rows:
        return None, None
    world, rank = (group.size(), group.rank()) if group is not None else (1, 0)
    # Rows of like length together, each batch padded to its longest row (in steps of 64), not to
    # the run's: most held-out rows are shorter than the longest.
    mine = sorted(rows[rank::world], key=lambda row: len(row.ids))
    sums = mx.zeros((4,), dtype=mx.float32)  # loss and count over DM tokens, then over decision tokens
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        batch = batching.make_batch(chunk, batching.batch_length(chunk, length) + 1)
        inputs, targets, positions, weights, segments = batch_arrays(batch)
        losses = position_losses(model, inputs, targets, positions, segments)
        dm, decision = (weights > 0).astype(mx.float32), (weights >= DECISION_MARK).astype(mx.float32)
        sums = sums + mx.stack([(losses * dm).sum(), dm.sum(), (losses * decision).sum(), decision.sum()])
        mx.eval(sums)
    if world > 1:
        sums = mx.distributed.all_sum(sums, group=group)
    total, tokens, decision_total, decision_tokens = sums.tolist()
    return (total / tokens if tokens else None), (decision_total / decision_tokens if decision_tokens else None)


def evaluate_loss(model, rows: list[batching.PackedRow], length: int, batch_size: int, group=None) -> float | None:
    """Mean loss over the DM tokens of ``rows`` (evaluate_losses' first number)."""
    return evaluate_losses(model, rows, length, batch_size, group)[0]
