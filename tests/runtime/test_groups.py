"""Device and backend choice with faked device counts and local ranks (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from fr_dist import FRError
from fr_dist.runtime.groups import choose_device


@pytest.mark.parametrize("device,transport,local_rank,local_ranks,gpus,want", [
    ("auto", "auto", 0, 1, 0, ("cpu", "gloo", False)),  # no GPU: the CPU, quietly
    ("auto", "auto", 1, 2, 2, ("cuda:1", "nccl", False)),  # a GPU per local rank: CUDA by local rank
    ("auto", "auto", 3, 4, 2, ("cpu", "gloo", True)),  # fewer GPUs than local ranks: the CPU, with a warning
    ("auto", "gloo", 1, 2, 2, ("cuda:1", "gloo", False)),  # CUDA stages, staged gloo links
    ("cpu", "auto", 0, 2, 8, ("cpu", "gloo", False)),
    ("cpu", "gloo", 1, 2, 8, ("cpu", "gloo", False)),
    ("cuda", "auto", 5, 8, 8, ("cuda:5", "nccl", False)),
    ("cuda", "gloo", 3, 4, 1, ("cuda:0", "gloo", False)),  # four stages share one GPU through host buffers
    ("cuda", "gloo", 3, 4, 2, ("cuda:1", "gloo", False)),  # by local rank, round robin over the GPUs
])
def test_choices(device, transport, local_rank, local_ranks, gpus, want):
    got, backend, warning = choose_device(device, transport, local_rank, local_ranks, gpus)
    assert (str(got), backend, warning is not None) == want
    if warning:
        assert f"{local_ranks} ranks on this node but {gpus} GPUs" in warning


@pytest.mark.parametrize("device,transport,local_ranks,gpus,match", [
    ("cuda", "auto", 4, 2, "4 ranks on this node but 2 GPUs: NCCL needs one GPU per rank"),
    ("cuda", "nccl", 2, 1, "use transport=gloo to share GPUs"),
    ("cuda", "auto", 1, 0, "device=cuda but no GPU is visible"),
    ("cpu", "nccl", 1, 4, "transport=nccl needs device=cuda"),
    ("auto", "nccl", 1, 0, "transport=nccl needs device=cuda"),
])
def test_refusals(device, transport, local_ranks, gpus, match):
    with pytest.raises(FRError, match=match):
        choose_device(device, transport, 0, local_ranks, gpus)


def test_cuda_device_is_the_local_ranks_never_the_stages():
    # Rank 5 of a job is local rank 1 on its node: cuda:1, whatever stage it runs.
    assert choose_device("cuda", "auto", 1, 4, 4)[0] == torch.device("cuda", 1)
