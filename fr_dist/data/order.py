"""Which samples each batch holds, by batch id: the one sampler of both data paths.

Training batch b belongs to epoch b // steps_per_epoch; each epoch is a
permutation drawn from (seed, epoch) and the last partial batch is dropped, so
every link carries one fixed shape. Test batch e holds samples e x batch_size
onwards, in order. Stage 0 and the last stage compute the same indices
independently: the last stage gets exactly the labels of its batch. The data
in memory (Batches) and a user's Dataset read by DataLoader workers
(loader.DatasetBatches) are both a BatchOrder plus their storage.
"""

from __future__ import annotations

import torch

from fr_dist.errors import FRError


class BatchOrder:
    """Sample indices of training batch b and test batch e, sharded over replicas."""

    tokens = False  # a language model's data: inputs and labels are (N, T) token windows, metrics per token

    def __init__(self, train_size: int, test_size: int, batch_size: int, seed: int):
        if train_size < batch_size:
            raise FRError(f"batch_size={batch_size} is larger than the {train_size} training samples: "
                          f"use batch_size <= {train_size}")
        self.train_size, self.test_size, self.batch_size, self.seed = train_size, test_size, batch_size, seed
        self.steps_per_epoch = train_size // batch_size
        self.test_batches = -(-test_size // batch_size)
        self.replica, self.replicas = 0, 1
        self._perms: dict[int, torch.Tensor] = {}  # epoch -> permutation (read by two threads)

    def indices(self, batch: int) -> torch.Tensor:
        epoch, i = divmod(batch, self.steps_per_epoch)
        perm = self._perms.get(epoch)
        if perm is None:  # deterministic: two threads racing here compute the same tensor
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = self._perms[epoch] = torch.randperm(self.train_size, generator=g)
            self._perms.pop(epoch - 2, None)
        j = i * self.replicas + self.replica  # this replica's slice of the global batch
        return perm[j * self.batch_size:(j + 1) * self.batch_size]

    def test_indices(self, e: int) -> range:
        """Test batch e: fewer than batch_size samples at the end."""
        return range(e * self.batch_size, min((e + 1) * self.batch_size, self.test_size))

    def shard(self, replica: int, replicas: int) -> None:
        """Replica d of D reads slice d of every global batch of D x batch_size samples (by batch id)."""
        if self.train_size < replicas * self.batch_size:
            raise FRError(f"replicas={replicas} x batch_size={self.batch_size} is larger than the "
                          f"{self.train_size} training samples: lower batch_size or replicas")
        self.replica, self.replicas = replica, replicas
        self.steps_per_epoch = self.train_size // (replicas * self.batch_size)


def pad(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A short last test batch zero-padded to batch_size rows, so that it fits the links."""
    if len(x) < batch_size:
        x = torch.cat([x, x.new_zeros(batch_size - len(x), *x.shape[1:])])
    return x
