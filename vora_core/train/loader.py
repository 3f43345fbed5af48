"""The training data loader: packs → rows (decode + transform + tokenise + concatenate) in workers.

`PackSampler` (main process) walks this rank's packs epoch by epoch from a saved position and yields
`(epoch, index, pack)`; `PackDataset` (workers) builds each row: images are read by random access
through the shard's tar index, transformed, and the sample is re-tokenised (its length is checked
against the index, so the plan and the rows can never disagree). Every row carries its position, so
the loop knows exactly how far it has consumed — prefetching never moves the resume point.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vora_core.data.shards import ShardReader
from vora_core.errors import DataError
from vora_core.train.packing import Row, collate, concat_row, plan_epoch, rank_packs
from vora_core.train.samples import SampleBuilder, open_index
from vora_core.train.sequences import IGNORE

log = logging.getLogger(__name__)


class ImageUnreadable(DataError):
    """A sample's image failed to load at training time (a shard changed or was damaged on disk)."""


class PackDataset(Dataset):
    """Index → packed rows. Items are `(epoch, index, pack)` from `PackSampler`."""

    def __init__(self, index_path: str | Path, builder: SampleBuilder) -> None:
        self.index_path = str(index_path)
        self.builder = builder
        self._columns: dict | None = None
        self._readers: dict[str, ShardReader] = {}
        self._pid = os.getpid()

    def _cols(self) -> dict:
        if self._columns is None:  # opened lazily: each worker maps the file itself
            table = open_index(self.index_path)
            self._columns = {name: table.column(name) for name in ("messages", "shard", "key", "length")}
        return self._columns

    def _reader(self, tar: str) -> ShardReader:
        if self._pid != os.getpid():  # a forked worker: never share the parent's file offsets
            self._readers, self._pid = {}, os.getpid()
        reader = self._readers.get(tar)
        if reader is None:
            reader = self._readers[tar] = ShardReader(tar)
        return reader

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, list[torch.Tensor], int]:
        """One sample: ids, labels, its image tensors, its vision token count."""
        cols = self._cols()
        messages = json.loads(cols["messages"][i].as_py())
        tar = cols["shard"][i].as_py()
        try:
            images = [self._reader(tar).image(cols["key"][i].as_py())] if tar is not None else []
        except DataError as e:
            raise ImageUnreadable(f"sample {i} of {self.index_path} skipped: its image does not load ({e})") from None
        seq = self.builder.tokens(messages, [(im.height, im.width) for im in images])
        expected = cols["length"][i].as_py()
        if len(seq) != expected:
            raise DataError(f"sample {i} of {self.index_path} has {len(seq)} tokens but the index says {expected}; "
                            "the index is stale (delete it to rebuild) or the image changed on disk")
        pixels = [self.builder.pixels(im) for im in images[: seq.num_images]]
        vision = sum(int((seq.input_ids[s:e] == self.builder.config.image_token_id).sum()) for s, e in seq.image_spans)
        return seq.input_ids, seq.labels, pixels, vision

    def __getitem__(self, item: tuple[int, int, tuple]) -> Row:
        epoch, index, pack = item
        parts, pixels, vision, skipped = [], [], 0, 0
        for i in pack:
            try:
                ids, labels, pix, n = self.sample(i)
            except ImageUnreadable as e:  # a bad image costs its sample, never the run (the loop counts them)
                log.warning("%s", e)
                skipped += 1
                continue
            parts.append((ids, labels))
            pixels += pix
            vision += n
        if not parts:  # every sample failed: one padding token that trains nothing keeps the batch's shape
            pad = np.zeros(1, dtype=np.int64)
            parts = [(pad, np.full(1, IGNORE, dtype=np.int64))]
        row = concat_row(parts, pixels, vision, (epoch, index))
        row.samples, row.skipped = len(pack) - skipped, skipped
        return row

    def __len__(self) -> int:  # the sampler drives iteration; this is the number of samples
        return len(self._cols()["length"])


class EpochPlans:
    """This rank's packs per epoch (computed in the main process, cached)."""

    def __init__(self, lengths: np.ndarray, seq_len: int, packing: bool, seed: int, rank: int, world: int,
                 rows_per_step: int) -> None:
        self.lengths, self.seq_len, self.packing, self.seed = lengths, seq_len, packing, seed
        self.rank, self.world, self.rows_per_step = rank, world, rows_per_step
        self._cache: dict[int, list[tuple]] = {}

    def global_packs(self, epoch: int) -> list[tuple]:
        return plan_epoch(self.lengths, self.seq_len, self.packing, self.seed, epoch)

    def __call__(self, epoch: int) -> list[tuple]:
        if epoch not in self._cache:
            self._cache = {epoch: rank_packs(self.global_packs(epoch), self.rank, self.world, self.rows_per_step)}
            if not self._cache[epoch]:
                raise DataError(
                    f"epoch {epoch} has fewer rows than one global step ({self.rows_per_step} × {self.world} ranks); "
                    "add data or lower micro_batch / grad_accum / ranks"
                )
        return self._cache[epoch]

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return len(self(epoch)) // self.rows_per_step


class PackSampler(Sampler):
    """Yields `(epoch, index, pack)` forever, starting at a saved `(epoch, index)`."""

    def __init__(self, plans: EpochPlans, start: tuple[int, int] = (0, 0)) -> None:
        self.plans = plans
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int, tuple]]:
        epoch, index = self.start
        while True:
            packs = self.plans(epoch)
            for i in range(index, len(packs)):
                yield epoch, i, packs[i]
            epoch, index = epoch + 1, 0


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode and tokenise; leave the cores to the step


def build_loader(dataset: PackDataset, plans: EpochPlans, start: tuple[int, int], micro_batch: int,
                 num_workers: int, pad_id: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=micro_batch, sampler=PackSampler(plans, start), num_workers=num_workers,
        collate_fn=partial(collate, pad_id=pad_id), pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers else None, prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
    )
