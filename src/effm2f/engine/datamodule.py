"""Deterministic, resumable training data: every step's batch is a pure function of the seed and
the step's position, so a run killed at any point and resumed from a checkpoint sees exactly the
batches an uninterrupted run sees.

- :class:`EpochBatchSampler` shuffles with a generator seeded by ``(seed, epoch)`` and yields
  ``(epoch, index)`` keys, starting at a given batch of the epoch;
- :class:`SeededItems` computes each item under its own RNG seed derived from ``(seed, epoch,
  index)`` (the dataset's augmentation draws from torch's RNG), leaving the global RNG untouched,
  so the items do not depend on the worker, on prefetching or on what ran before;
- :class:`ResumableDataLoader` counts the batches the training loop consumed and implements
  ``state_dict`` / ``load_state_dict``, which Lightning saves in every checkpoint and restores on
  resume (a loader without them restarts the epoch from its first batch).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from effm2f.config import ConfigError
from effm2f.data.datasets import collate

Key = tuple[int, int]
"""(epoch, dataset index)."""


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (a simple, platform-independent hash)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class EpochBatchSampler(Sampler[list[Key]]):
    """Batches of a seeded permutation per epoch (the last incomplete batch is dropped).

    Under data parallelism every rank shuffles alike and takes its slice of each global batch
    of ``batch_size * num_replicas`` items.

    Args:
        num_items: dataset size.
        batch_size: items per batch (per rank).
        seed: the shuffling seed; epoch ``e`` uses the permutation seeded by ``(seed, e)``.
        num_replicas, rank: data-parallel world size and this process's rank.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, num_replicas: int = 1,
                 rank: int = 0) -> None:
        if num_items < batch_size * num_replicas:
            raise ConfigError(f"dataset of {num_items} items is smaller than one global batch "
                             f"({batch_size} x {num_replicas} ranks)")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return self.num_items // (self.batch_size * self.num_replicas)

    def __iter__(self) -> Iterator[list[Key]]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_items, generator=generator).tolist()
        epoch, start, size = self.epoch, self.start, self.batch_size
        for b in range(start, len(self)):
            first = (b * self.num_replicas + self.rank) * size
            yield [(epoch, i) for i in order[first:first + size]]


class SeededItems(Dataset):
    """``dataset[index]`` computed under torch's RNG seeded by ``(seed, epoch, index)``.

    Indexed by ``(epoch, index)`` keys from :class:`EpochBatchSampler`.
    """

    def __init__(self, dataset: Dataset, *, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            return self.dataset[index]


class ResumableDataLoader(DataLoader):
    """A DataLoader over :class:`EpochBatchSampler` batches that knows where it stands.

    Its state is ``{"epoch": e, "batch": b}``: the next batch the training loop will get is batch
    ``b`` of epoch ``e``. Consuming the last batch of an epoch moves it to ``(e + 1, 0)``.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, num_workers: int = 0,
                 size_divisibility: int = 32, pin_memory: bool = False, num_replicas: int = 1,
                 rank: int = 0) -> None:
        self.position = {"epoch": 0, "batch": 0}
        sampler = EpochBatchSampler(len(dataset), batch_size, seed=seed,  # type: ignore[arg-type]
                                    num_replicas=num_replicas, rank=rank)
        super().__init__(
            SeededItems(dataset, seed=seed),
            batch_sampler=sampler,
            num_workers=num_workers,
            collate_fn=functools.partial(collate, size_divisibility=size_divisibility),
            pin_memory=pin_memory,
        )

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler: EpochBatchSampler = self.batch_sampler  # type: ignore[assignment]
        sampler.epoch, sampler.start = self.position["epoch"], self.position["batch"]
        return self._counting(super().__iter__(), len(sampler))

    def _counting(self, batches: Iterator[Any], per_epoch: int) -> Iterator[Any]:
        for batch in batches:
            self.position["batch"] += 1
            if self.position["batch"] >= per_epoch:
                self.position = {"epoch": self.position["epoch"] + 1, "batch": 0}
            yield batch

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, int]:
        return dict(self.position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = {"epoch": int(state["epoch"]), "batch": int(state["batch"])}


class TrainDataModule(L.LightningDataModule):
    """The training loader, built once the Trainer knows this process's rank and world size.

    Args:
        dataset: the training dataset (items as `effm2f.data.datasets.PanopticDataset` gives).
        batch_size: images per step per device.
        seed: data order and augmentation seed.
        num_workers: loader worker processes.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return ResumableDataLoader(self.dataset, batch_size=self.batch_size, seed=self.seed,
                                   num_workers=self.num_workers, num_replicas=world, rank=rank,
                                   pin_memory=torch.cuda.is_available())
