"""Edge cases for the parity check, derived from validation feeds.

The dynamo exporter keeps batch and history lengths symbolic, but a graph is only trusted at
shapes it was run at: batch 1, 7 and 64 (the export example has another), histories emptied
(every length 0: only the current token attends), full (no padding at all), and history
lengths below and above the trained K, different per stream (each stream has its own dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from issuer_seq.export.signature import HISTORY_DIMS, TensorSpec
from issuer_seq.export.validation import Feeds, ValidationData

EDGE_ROWS = 64


@dataclass
class Case:
    name: str
    feeds: Feeds
    note: str = ""


def take(feeds: Feeds, idx: np.ndarray | slice) -> Feeds:
    return {k: v[idx] for k, v in feeds.items()}


def empty_histories(feeds: Feeds, specs: list[TensorSpec]) -> Feeds:
    """Every history slot padding (ids 0, values 0) and every length 0."""
    out = dict(feeds)
    for s in specs:
        if s.stream in HISTORY_DIMS:
            out[s.name] = np.zeros_like(feeds[s.name])
    return out


def window_sizes(feeds: Feeds, specs: list[TensorSpec]) -> dict[str, int]:
    """stream -> K of these feeds (the second dim of the stream's (B, K) inputs)."""
    return {
        s.stream: feeds[s.name].shape[1]
        for s in specs
        if s.stream in HISTORY_DIMS and len(s.shape) == 2
    }


def fill_histories(feeds: Feeds, specs: list[TensorSpec]) -> Feeds:
    """Every slot counted as an event (length = K): the graph runs with no padding mask."""
    out = dict(feeds)
    sizes = window_sizes(feeds, specs)
    for s in specs:
        if s.kind == "length":
            out[s.name] = np.full_like(feeds[s.name], sizes[s.stream])
    return out


def resize_histories(feeds: Feeds, specs: list[TensorSpec], sizes: dict[str, int]) -> Feeds:
    """Windows cut (oldest events dropped) or left-padded to `sizes[stream]` slots.

    Windows are right-aligned, so the most recent events stay at the end either way.
    """
    out = dict(feeds)
    for s in specs:
        if s.stream not in sizes:
            continue
        k = sizes[s.stream]
        v = feeds[s.name]
        if s.kind == "length":
            out[s.name] = np.minimum(v, k)
        elif v.shape[1] >= k:
            out[s.name] = np.ascontiguousarray(v[:, v.shape[1] - k :])
        else:
            pad = np.zeros((v.shape[0], k - v.shape[1]), dtype=v.dtype)
            out[s.name] = np.concatenate([pad, v], axis=1)
    return out


def edge_cases(
    data: ValidationData, specs: list[TensorSpec], history: dict[str, int]
) -> list[Case]:
    """The parity check's edge cases (at most EDGE_ROWS rows each)."""
    ks = {s: history[dim] for s, dim in HISTORY_DIMS.items()}
    head, _ = data.feeds(data.rows[:EDGE_ROWS])
    n = len(head["cur_mcc"])
    cases = [Case(f"batch_{b}", take(head, slice(0, b))) for b in (1, 7, 64) if b <= n]
    cases.append(Case("empty_histories", empty_histories(head, specs), "every length 0"))
    if len(data.full_rows):
        full, _ = data.feeds(data.full_rows[:EDGE_ROWS])
        cases.append(Case("full_histories", full, "validation rows with every window full"))
    else:
        # A small log may have no row whose windows are all full; the no-padding path
        # still has to be checked, so every slot is declared an event.
        cases.append(Case("full_histories", fill_histories(head, specs), "lengths forced to K"))
    # different fractions per stream, so that no two streams share a length by accident
    short = {s: max(1, k // (2 + i)) for i, (s, k) in enumerate(ks.items())}
    cases += [
        Case("short_histories", resize_histories(head, specs, short), f"K = {short}"),
        Case("one_slot_histories", resize_histories(head, specs, dict.fromkeys(ks, 1))),
        Case(
            "long_histories",
            resize_histories(head, specs, {s: 2 * k for s, k in ks.items()}),
            "K doubled, left-padded",
        ),
    ]
    return cases
