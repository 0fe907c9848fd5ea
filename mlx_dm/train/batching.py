"""Token ids, loss masks and packed rows.

Each dataset row (rendered text + character spans with loss) becomes token ids and a per-token
loss weight: 0 outside model turns, 1 for the narration, ``call_weight`` for the tokens of a tool
call and the token that ends the reply (see ``weighted_spans``). A scenario longer than
``max_seq_length`` is split at user turns into windows that each restart from the scenario's
context (world, place, party), so every DM reply is trained on with that context in view
instead of being cut off. Short scenarios (and windows) are packed into rows
of ``max_seq_length`` tokens; a block-diagonal causal mask keeps attention inside each scenario.
Because RoPE and the sliding window only see relative positions, a packed scenario computes
exactly what it would alone; stock mlx-lm pads every batch instead.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class TokenizedExample:
    path: str
    ids: list[int]
    loss_mask: list[float]  # per position t: the weight of predicting ids[t] (0 unless ids[t] is a model token)
    truncated: bool = False

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for weight in self.loss_mask if weight)


def weighted_spans(text: str, train_spans: list[tuple[int, int]], call_weight: float) -> list[tuple[int, int, float]]:
    """(start, end, weight) character spans with loss, in order: the narration of a model turn
    weighs 1; its tool calls and its closing ``<end_of_turn>`` weigh ``call_weight``.

    Why: a DM reply is mostly narration, so an unweighted loss spends nearly all its signal on
    prose that a few scenarios let the model memorise, while what the app acts on (which tool,
    which argument, and whether to call at all, decided at ``[`` or at the end of the reply) is a
    few tokens. Weighting those keeps training on the decisions after the prose is learnt."""
    from ..data.render import END
    from ..data.toolcalls import APP_CALL_PATTERN

    if call_weight == 1.0:
        return [(start, end, 1.0) for start, end in train_spans]
    pieces = []
    for start, end in train_spans:
        body_end = end - len(END) if text.endswith(END, start, end) else end
        cursor = start
        for match in APP_CALL_PATTERN.finditer(text, start, body_end):
            pieces += [(cursor, match.start(), 1.0), (match.start(), match.end(), call_weight)]
            cursor = match.end()
        pieces += [(cursor, body_end, 1.0), (body_end, end, call_weight)]
    return [piece for piece in pieces if piece[1] > piece[0]]


def tokenize_record(tokenizer, record: dict, max_seq_length: int, call_weight: float = 1.0,
                    keep_tail: bool = False) -> TokenizedExample:
    """Tokenize one rendered conversation; each token whose characters start in a model span gets
    a weight (``weighted_spans``), the others 0. Too long, it keeps its first `max_seq_length`
    tokens, or its last with `keep_tail` (where the reply is)."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    encoded = hf(record["text"], add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    spans = weighted_spans(record["text"], [tuple(span) for span in record["train_spans"]], call_weight)
    mask: list[float] = []
    span_index = 0
    for start, end in encoded["offset_mapping"]:
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]
        # A token such as " [" starts in the narration but carries the call: it takes the largest
        # weight among the spans it overlaps.
        overlapping = (w for s, e, w in spans[span_index:span_index + 3] if s < end and start < e)
        mask.append(max(overlapping) if inside and end > start else 0.0)
    truncated = len(ids) > max_seq_length
    kept = slice(len(ids) - max_seq_length, None) if truncated and keep_tail else slice(0, max_seq_length)
    return TokenizedExample(record.get("path", ""), ids[kept], mask[kept], truncated)


def window_messages(messages: list[dict[str, str]], context: str, start: int, end: int) -> list[dict[str, str]]:
    """Messages ``start:end`` as a conversation of their own; a window that does not begin the
    scenario gets the scenario context folded into its first user message, as the first has."""
    window = [dict(message) for message in messages[start:end]]
    if start > 0 and context:
        window[0]["content"] = f"{context}\n\n{window[0]['content']}"
    return window


def tokenize_windows(tokenizer, record: dict, max_seq_length: int, call_weight: float = 1.0) -> list[TokenizedExample]:
    """One example per record, or, when it is too long, one per window of whole user/DM exchanges.

    Windows start at user messages and grow one exchange at a time while they fit; an exchange
    that does not fit even alone is truncated (and flagged), keeping its end when its start holds no reply."""
    from ..data.render import render_messages

    whole = tokenize_record(tokenizer, record, max_seq_length, call_weight)
    messages = record.get("messages")
    if not whole.truncated or not messages:
        return [whole]
    context = record.get("context", "")

    def encode(start: int, end: int, keep_tail: bool = False) -> TokenizedExample:
        rendered = render_messages(window_messages(messages, context, start, end))
        return tokenize_record(tokenizer, {"path": record.get("path", ""), "text": rendered.text,
                                           "train_spans": rendered.train_spans}, max_seq_length, call_weight, keep_tail)

    windows = []
    start = 0
    while start < len(messages):
        end = min(start + 2, len(messages))
        best = encode(start, end)
        if best.truncated and not best.trainable_tokens:  # the context alone fills the window: keep the reply
            best = encode(start, end, keep_tail=True)
        while end < len(messages):
            candidate = encode(start, min(end + 2, len(messages)))
            if candidate.truncated:
                break
            best, end = candidate, min(end + 2, len(messages))
        if best.trainable_tokens:
            windows.append(best)
        start = end
    return windows or [whole]


def load_examples(path: Path, tokenizer, max_seq_length: int, call_weight: float = 1.0) -> list[TokenizedExample]:
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                examples.extend(tokenize_windows(tokenizer, json.loads(line), max_seq_length, call_weight))
    return examples


@dataclass
class PackedRow:
    ids: np.ndarray  # (L,) int32, padded with pad_id
    loss_mask: np.ndarray  # (L,) float32: the weight of the target at this position (0: no loss)
    segments: np.ndarray  # (L,) int32: 1.. per scenario, 0 for padding
    examples: list[int]


def pack(examples: list[TokenizedExample], max_seq_length: int, pad_id: int = 0, enabled: bool = True) -> list[PackedRow]:
    """First-fit-decreasing packing into rows of at most ``max_seq_length`` tokens (deterministic)."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].ids), i))
    bins: list[list[int]] = []
    fill: list[int] = []
    for index in order:
        length = len(examples[index].ids)
        target = None
        if enabled:
            for b, used in enumerate(fill):
                if used + length <= max_seq_length:
                    target = b
                    break
        if target is None:
            bins.append([index])
            fill.append(length)
        else:
            bins[target].append(index)
            fill[target] += length
    rows = []
    for members in bins:
        ids, mask, segments = [], [], []
        for segment, index in enumerate(sorted(members), start=1):
            example = examples[index]
            ids += example.ids
            mask += example.loss_mask
            segments += [segment] * len(example.ids)
        rows.append(PackedRow(np.array(ids, np.int32), np.array(mask, np.float32), np.array(segments, np.int32),
                              sorted(members)))
    return rows


@dataclass
class Batch:
    inputs: np.ndarray  # (B, L-1)
    targets: np.ndarray  # (B, L-1)
    loss_mask: np.ndarray  # (B, L-1)
    segments: np.ndarray  # (B, L-1)

    def loss_positions(self, bucket: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of the tokens with loss and their weights, padded to a multiple of ``bucket`` (weight 0).

        The output head runs on these positions only: with Gemma's 262k vocabulary the logits of
        every position cost more than the rest of the model. Padding to buckets keeps the number
        of shapes (compilations) small."""
        flat = np.flatnonzero(self.loss_mask.reshape(-1)).astype(np.int32)
        size = min(max(bucket, -(-len(flat) // bucket) * bucket), self.loss_mask.size)
        positions = np.zeros(size, np.int32)
        weights = np.zeros(size, np.float32)
        positions[:len(flat)], weights[:len(flat)] = flat, self.loss_mask.reshape(-1)[flat]
        return positions, weights

    @property
    def trainable_tokens(self) -> int:
        return int(np.count_nonzero(self.loss_mask))


def batch_length(rows: list[PackedRow], cap: int, bucket: int = 64) -> int:
    """The tokens a batch of `rows` is padded to: its longest row, rounded up to `bucket` (so a
    compiled step sees few shapes), at most `cap` (the run's row length)."""
    return min(cap, -(-max(len(r.ids) for r in rows) // bucket) * bucket)


def make_batch(rows: list[PackedRow], length: int, pad_id: int = 0) -> Batch:
    """Rows padded to ``length`` tokens, shifted into inputs and next-token targets."""
    B = len(rows)
    ids = np.full((B, length), pad_id, np.int32)
    mask = np.zeros((B, length), np.float32)
    seg = np.zeros((B, length), np.int32)
    for b, row in enumerate(rows):
        n = min(len(row.ids), length)
        ids[b, :n], mask[b, :n], seg[b, :n] = row.ids[:n], row.loss_mask[:n], row.segments[:n]
    # The target at position t is ids[t+1]; it counts when it is a model token of the same scenario.
    same_segment = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    return Batch(ids[:, :-1], ids[:, 1:], mask[:, 1:] * same_segment, seg[:, :-1])


def epoch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The row order of one epoch: a function of seed and epoch alone, so a resumed run repeats it."""
    order = list(range(n_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def padding_fraction(rows: list[PackedRow], length: int) -> float:
    total = len(rows) * length
    return 1.0 - sum(len(r.ids) for r in rows) / total if total else 0.0
