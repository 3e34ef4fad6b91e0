"""Process groups and device choice: the job's ranks and how they talk.

Rank = stage. Tensor traffic uses NCCL on GPU and gloo on CPU; a separate gloo
group carries control traffic (shapes, metrics, errors) so it never mixes with
tensors. Each direction of each neighbour pair gets its own process group:
under NCCL every group has its own communicator and stream, so a posted
gradient receive can never block an activation send queued behind it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from fr_dist.errors import FRError


@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device
    backend: str
    control: "dist.ProcessGroup"  # gloo: metrics, shapes, errors
    groups: dict  # (src, dst) -> process group for tensors sent from src to dst
    store: "dist.Store | None" = None  # the job's key-value store: failure records, the run directory
    attempt: str = "attempt_0"  # torchrun restart round

    def record(self, key: str, value: str, per_attempt: bool = True) -> str | None:
        """Set `key` unless set already; the value that holds (None: store unreachable).

        Keys are per restart attempt unless `per_attempt` is false: those
        outlive a torchrun restart (the agent's store does).
        """
        if self.store is None:
            return None
        key = f"fr_dist/{self.attempt}/{key}" if per_attempt else f"fr_dist/{key}"
        try:
            return self.store.compare_set(key, "", value).decode()
        except Exception:  # its host is gone (plain launch: rank 0 hosts it)
            return None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def check_devices() -> None:
    """Under NCCL every stage needs its own GPU: refuse more local ranks than GPUs."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available() and local > torch.cuda.device_count():
        raise FRError(
            f"{local} stages on this node but {torch.cuda.device_count()} visible GPUs: NCCL needs one GPU per "
            f"stage; lower --nproc_per_node (and splits) or spread the stages over more nodes"
        )


def init(timeout_s: float) -> Runtime:
    """Join the job started by torchrun (or a single process without it)."""
    single = "WORLD_SIZE" not in os.environ
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                         ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "0" if single else "29500")):
        os.environ.setdefault(key, default)
    r, world, local = rank(), world_size(), int(os.environ["LOCAL_RANK"])
    timeout = timedelta(seconds=timeout_s)
    # Under torchrun the agent hosts the store and keeps it across restarts, so
    # the keys of one attempt would be read by the next: every attempt gets its
    # own prefix (torch's env:// rendezvous adds none, and restarts then race).
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent and r == 0, timeout=timeout, wait_for_workers=False)
    attempt = f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    pg_store = dist.PrefixStore(f"fr_dist/{attempt}", store)
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", store=pg_store, rank=r, world_size=world, timeout=timeout, device_id=device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", store=pg_store, rank=r, world_size=world, timeout=timeout)
        backend = "gloo"
    control = dist.new_group(backend="gloo", timeout=timeout)
    groups = {}
    for k in range(world - 1):  # every rank creates every group, in the same order
        groups[(k, k + 1)] = dist.new_group([k, k + 1], timeout=timeout)
        groups[(k + 1, k)] = dist.new_group([k, k + 1], timeout=timeout)
    return Runtime(r, world, device, backend, control, groups, store, attempt)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def agree(rt: Runtime, error: str | None) -> list:
    """Share each rank's start-up error (or None) so that all ranks stop together."""
    errors = [None] * rt.world
    dist.all_gather_object(errors, error, group=rt.control)
    return errors
