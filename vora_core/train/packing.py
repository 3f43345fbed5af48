"""Packing plans and batch collation.

A plan is a list of packs (tuples of sample indices), one pack per row of at most `seq_len` tokens.
Epoch e shuffles the samples with (seed, e) and fills rows first-fit over a window of open rows
(bounded work per sample, nearly full rows); `packing: false` makes one row per sample. The plan is
identical on every rank; rank r takes every world-th pack after the list is cut to a whole number
of global steps, so ranks see disjoint data and stay in lockstep.

`collate` turns packed rows into tensors: ids, labels, per-token document ids (−1 = padding) and
positions restarting at each document, plus host-side counts (tokens, labels, vision tokens) that
the loop uses for loss normalisation without reading anything back from the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vora_core.train.sequences import IGNORE

OPEN_ROWS = 64  # rows kept open while packing (first-fit window)


def pack_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def pack_first_fit(lengths: np.ndarray, order: np.ndarray, seq_len: int, open_rows: int = OPEN_ROWS) -> list[tuple]:
    """Greedy first-fit packing of `order` into rows of ≤ seq_len; rows leave the window when it is full."""
    free = np.zeros(0, dtype=np.int64)
    rows: list[list[int]] = []  # the open rows, aligned with `free`
    done: list[tuple] = []
    for i in order.tolist():
        need = int(lengths[i])
        fits = np.flatnonzero(free >= need)
        if len(fits):
            j = int(fits[0])
            rows[j].append(i)
            free[j] -= need
            continue
        if len(rows) >= open_rows:  # close the fullest row to make room
            j = int(np.argmin(free))
            done.append(tuple(rows.pop(j)))
            free = np.delete(free, j)
        rows.append([i])
        free = np.append(free, seq_len - need)
    done.extend(tuple(r) for r in rows)
    return done


def plan_epoch(lengths: np.ndarray, seq_len: int, packing: bool, seed: int, epoch: int) -> list[tuple]:
    order = pack_order(len(lengths), seed, epoch)
    if not packing:
        return [(int(i),) for i in order]
    return pack_first_fit(lengths, order, seq_len)


def rank_packs(packs: Sequence[tuple], rank: int, world: int, rows_per_step: int) -> list[tuple]:
    """This rank's packs: the plan cut to whole global steps, then every world-th pack."""
    usable = (len(packs) // (rows_per_step * world)) * rows_per_step * world
    return list(packs[rank:usable:world])


@dataclass
class Row:
    """One packed row, built by a loader worker."""

    input_ids: np.ndarray
    labels: np.ndarray
    doc_ids: np.ndarray
    pixel_values: list[torch.Tensor]
    vision_tokens: int
    samples: int
    position: tuple[int, int]  # (epoch, index of this pack in the rank's epoch list)
    skipped: int = 0  # samples of the pack left out: their image failed to load


def concat_row(parts: Sequence[tuple[np.ndarray, np.ndarray]], pixels: list[torch.Tensor], vision_tokens: int,
               position: tuple[int, int]) -> Row:
    """Documents (ids, labels) → one row with document ids 0..k-1."""
    ids = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    docs = np.repeat(np.arange(len(parts), dtype=np.int64), [len(p[0]) for p in parts])
    return Row(ids, labels, docs, pixels, vision_tokens, len(parts), position)


def positions_from_docs(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position inside each document, restarting at 0 (vectorised over [B, L])."""
    length = doc_ids.shape[-1]
    idx = torch.arange(length).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return idx - torch.where(starts, idx, 0).cummax(dim=-1).values


def collate(rows: Sequence[Row], pad_id: int) -> dict:
    """Rows → a micro-batch padded to its longest row (packed rows are nearly full)."""
    width = max(len(r.input_ids) for r in rows)
    b = len(rows)
    ids = np.full((b, width), pad_id, dtype=np.int64)
    labels = np.full((b, width), IGNORE, dtype=np.int64)
    docs = np.full((b, width), -1, dtype=np.int64)
    for k, r in enumerate(rows):
        n = len(r.input_ids)
        ids[k, :n], labels[k, :n], docs[k, :n] = r.input_ids, r.labels, r.doc_ids
    doc_t = torch.from_numpy(docs)
    # Targets the model trains on: labelled and inside the predictor's document (as the model counts them).
    valid = (labels[:, 1:] != IGNORE) & (docs[:, 1:] == docs[:, :-1])
    tokens = int(sum(len(r.input_ids) for r in rows))
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "doc_ids": doc_t,
        "position_ids": positions_from_docs(doc_t),
        "pixel_values": [p for r in rows for p in r.pixel_values],
        "counts": {
            "tokens": tokens, "slots": b * width, "labels": int(valid.sum()),
            "vision_tokens": int(sum(r.vision_tokens for r in rows)), "samples": int(sum(r.samples for r in rows)),
            "rows": b, "skipped": int(sum(r.skipped for r in rows)),
        },
        "positions": [r.position for r in rows],
    }
