"""Data loaders with reproducible order.

- Training: shuffled with a `torch.Generator` that is re-seeded from (seed, epoch) at the start
  of every epoch, so epoch n sees the same order (and the same worker seeds) whether the run went
  straight through or resumed from a checkpoint; `accelerator.prepare` shards it over processes.
  Incomplete batches are dropped (BatchNorm, equal steps on every process).
- Validation: each process reads its own strided shard (rank, rank + world, ...) with no padding
  or repeated images, so per-process confusion matrices simply add up (`ConfusionMatrix.reduce`).
"""

from __future__ import annotations

import random
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from distillery.inference import collate_list


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of `epoch` (1-based)."""
    return (seed * 1_000_003 + epoch) % (2**63)


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """`worker_init_fn`: seed numpy and `random` in a loader worker from its torch seed (which
    the loader derives from its generator), distinct per worker and per process."""
    seed = (torch.initial_seed() + rank * 7919) % 2**32
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    generator: torch.Generator,
    num_samples: int | None = None,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled, drop-last loader over `num_samples` images per epoch (all if None)."""
    sampler = RandomSampler(dataset, num_samples=num_samples, generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=partial(seed_worker, rank=rank),
        pin_memory=pin_memory,
        # Fresh workers each epoch: they copy the dataset after `set_epoch`.
        persistent_workers=False,
    )


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """This process's share of `n` items: rank, rank + world, ... (disjoint, covering all)."""
    return list(range(rank, n, world))


def val_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """In-order loader over this process's shard of the validation set; batches are lists of
    items (images may differ in size: Cityscapes and BDD100K mixed, native-size masks)."""
    shard = Subset(dataset, shard_indices(len(dataset), rank, world))  # type: ignore[arg-type]
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_list,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
