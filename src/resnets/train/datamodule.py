"""uint8 batches, sharded across data-parallel ranks: straight from in-memory tensors, or
decoded from files by DataLoader worker processes for folders too large for memory."""

import os
from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from ..data.datasets import Dataset, ImageSet


class _Batches(torch.utils.data.Dataset):
    """Indexing with a tensor of indices returns a whole batch: in one copy from memory, or
    decoded from its files, less any file found unreadable (see `FileImages.load`)."""

    def __init__(self, split: ImageSet) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.split.in_memory:
            return self.split.images[indices], self.split.labels[indices]
        images, kept = self.split.images.load(indices)
        return images, self.split.labels[indices][kept]


class BatchIndexSampler(Sampler[torch.Tensor]):
    """Yields index tensors of one batch each, for this rank's share of the data.

    Training shuffles with a generator seeded by (seed, epoch), so a resumed run sees the
    same order; every rank takes the same number of batches. Evaluation gives each rank a
    contiguous share without padding, so every sample is counted exactly once.
    A last training batch of one sample is dropped: batch norm cannot normalise it.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.resume_epoch, self.resume_batches = -1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Skip the batches an interrupted epoch already trained on when it runs again.

        Sets the epoch too: a loader with worker processes starts drawing batches from
        this sampler as soon as it is iterated, which Lightning does before `set_epoch`."""
        self.resume_epoch, self.resume_batches = epoch, batches_done
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size).tensor_split(self.world_size)[self.rank]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        per_rank = self.size // self.world_size
        return order[self.rank * per_rank : (self.rank + 1) * per_rank]

    def _batches(self) -> list[torch.Tensor]:
        batches = list(self._indices().split(self.batch_size))
        if self.shuffle and len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()
        return batches

    def __iter__(self):
        batches = self._batches()
        if self.epoch == self.resume_epoch:
            batches = batches[self.resume_batches :]
            self.resume_epoch = -1
        yield from batches

    def __len__(self) -> int:
        return len(self._batches())


class ResumableLoader(DataLoader):
    """A DataLoader whose state (epoch, batches done) Lightning saves in each checkpoint,
    so a run resumed mid-epoch trains on the rest of that epoch, not on its start again."""

    def __init__(
        self,
        dataset,
        sampler: BatchIndexSampler,
        batches_done: Callable[[], int],
        **workers,
    ):
        super().__init__(dataset, sampler=sampler, batch_size=None, **workers)
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": self.batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(state["epoch"], state["batches_done"])


class ImageDataModule(L.LightningDataModule):
    """Serves a `Dataset`'s train and held-out splits as uint8 batches."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def _batches_done(self) -> int:
        # `processed`, not `completed`: a checkpoint saved at a batch's end (step.ckpt) is
        # written after the batch's optimiser step but before Lightning counts it completed.
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _sampler(self, split: ImageSet, shuffle: bool) -> BatchIndexSampler:
        rank, world_size = self._rank()
        return BatchIndexSampler(
            len(split),
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )

    def train_steps_per_epoch(self) -> int:
        """Optimiser steps in one training epoch on this rank, without building a loader."""
        return len(self._sampler(self.dataset.train, shuffle=True))

    def _workers(self, split: ImageSet, shuffle: bool) -> dict:
        """No workers for images in memory: a batch is one indexing. Files are decoded by
        this process's share of the machine's cores, kept alive between training epochs."""
        if split.in_memory:
            return {"num_workers": 0}
        processes = self.trainer.num_devices if self.trainer else 1
        workers = min(8, max(1, (os.cpu_count() or 2) // processes))
        return {
            "num_workers": workers,
            "persistent_workers": shuffle,
            "pin_memory": torch.cuda.is_available(),
            "prefetch_factor": 2,
        }

    def _loader(self, split: ImageSet, shuffle: bool) -> DataLoader:
        sampler = self._sampler(split, shuffle)
        workers = self._workers(split, shuffle)
        if shuffle:
            return ResumableLoader(_Batches(split), sampler, self._batches_done, **workers)
        return DataLoader(_Batches(split), sampler=sampler, batch_size=None, **workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset.held_out, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
