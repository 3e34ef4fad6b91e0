"""Process groups and device choice: the job's ranks and how they talk.

Rank = stage. Tensor traffic uses NCCL on GPU and gloo on CPU; a separate gloo
group carries control traffic (shapes, metrics, errors) so it never mixes with
tensors. Each direction of each neighbour pair gets its own process group:
under NCCL every group has its own communicator and stream, so a posted
gradient receive can never block an activation send queued behind it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from fr_dist.errors import FRError


# How long a failing rank waits for the job's store before it gives up on recording the
# failure: the store's host may be the frozen or dead rank itself.
RECORD_TIMEOUT_S = 1.0


@dataclass
class Runtime:
    """This rank's place in the job: global rank, its stage and replica, and the groups it talks in.

    Layout (docs/DESIGN.md): rank = stage * replicas + replica, so the replicas of a
    stage sit on neighbouring ranks (their gradient all-reduce stays inside a node)
    and only stage boundaries cross nodes.
    """

    rank: int
    world: int
    device: torch.device
    backend: str
    control: "dist.ProcessGroup"  # gloo, every rank: metrics, shapes, errors
    groups: dict  # (src stage, dst stage) -> process group of this replica's tensors from src to dst
    store: "dist.Store | None" = None  # the job's key-value store: failure records, the run directory
    attempt: str = "attempt_0"  # torchrun restart round
    store_host: int | None = None  # the rank whose process serves the store (None: torchrun's agent)
    replicas: int = 1  # D data-parallel copies of the pipeline
    data_parallel: "dist.ProcessGroup | None" = None  # the D ranks of this stage (None: D = 1)
    stage_control: "dist.ProcessGroup | None" = None  # gloo, the same D ranks: small host-side sums

    @property
    def stage(self) -> int:
        return self.rank // self.replicas

    @property
    def replica(self) -> int:
        return self.rank % self.replicas

    @property
    def stages(self) -> int:
        return self.world // self.replicas

    @property
    def name(self) -> str:
        """How this rank names itself in messages."""
        return f"stage {self.stage}" + (f" replica {self.replica}" if self.replicas > 1 else "")

    def global_rank(self, stage: int) -> int:
        """The rank of `stage` in this rank's replica."""
        return stage * self.replicas + self.replica

    def record(self, key: str, value: str, per_attempt: bool = True, timeout_s: float | None = None) -> str | None:
        """Set `key` unless set already; the value that holds (None: store unreachable).

        Keys are per restart attempt unless `per_attempt` is false: those
        outlive a torchrun restart (the agent's store does). With `timeout_s`
        the call gives up after that long (the store's host may be frozen).
        """
        if self.store is None:
            return None
        key = f"fr_dist/{self.attempt}/{key}" if per_attempt else f"fr_dist/{key}"

        def ask():
            return self.store.compare_set(key, "", value).decode()

        if timeout_s is None:
            try:
                return ask()
            except Exception:  # its host is gone (plain launch: rank 0 hosts it)
                return None
        box: list = []
        thread = threading.Thread(target=lambda: box.append(ask()), daemon=True)
        thread.start()
        thread.join(timeout_s)
        return box[0] if box else None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Ranks on this node: torchrun's LOCAL_WORLD_SIZE, else every rank is local (a plain launch)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def choose_device(device: str, transport: str, local_rank: int, local_ranks: int, gpus: int):
    """(device, backend, warning or None) for `device` (auto, cpu, cuda) and `transport` (auto, nccl, gloo).

    The GPU is the local rank's (never the stage's: with replicas they differ).
    NCCL needs a GPU per local rank; gloo with CUDA stages stages payloads through
    host memory, so several local ranks may share one GPU. Raises FRError for a
    combination this node cannot run.
    """
    warning = None
    if device == "auto":
        if gpus and local_ranks <= gpus:
            device = "cuda"
        else:
            if gpus:
                warning = (f"{local_ranks} ranks on this node but {gpus} GPUs: training on the CPU "
                           f"(device=cuda transport=gloo lets ranks share GPUs)")
            device = "cpu"
    if device == "cpu":
        if transport == "nccl":
            raise FRError("transport=nccl needs device=cuda (NCCL moves GPU tensors only): use transport=gloo")
        return torch.device("cpu"), "gloo", warning
    if gpus == 0:
        raise FRError("device=cuda but no GPU is visible: use device=cpu (or auto), or check CUDA_VISIBLE_DEVICES")
    backend = "nccl" if transport == "auto" else transport
    if backend == "nccl" and local_ranks > gpus:
        raise FRError(f"{local_ranks} ranks on this node but {gpus} GPUs: NCCL needs one GPU per rank; lower "
                      f"--nproc_per_node, spread the ranks over more nodes, or use transport=gloo to share GPUs")
    return torch.device("cuda", local_rank % gpus), backend, warning


def make_deterministic() -> None:
    """Runs that repeat bit for bit on a GPU: deterministic kernels, no TF32, no autotuning."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def init(timeout_s: float, device: torch.device, backend: str, replicas: int = 1) -> Runtime:
    """Join the job started by torchrun (or a single process without it) on `device` with `backend`."""
    single = "WORLD_SIZE" not in os.environ
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                         ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "0" if single else "29500")):
        os.environ.setdefault(key, default)
    r, world = rank(), world_size()
    timeout = timedelta(seconds=timeout_s)
    # Under torchrun the agent hosts the store and keeps it across restarts, so
    # the keys of one attempt would be read by the next: every attempt gets its
    # own prefix (torch's env:// rendezvous adds none, and restarts then race).
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=not agent and r == 0, timeout=timeout, wait_for_workers=False)
    except (dist.DistNetworkError, dist.DistStoreError) as e:
        if "EADDRINUSE" in str(e) or "address already in use" in str(e):
            raise FRError(f"MASTER_PORT {os.environ['MASTER_PORT']} is in use on this machine: choose a free one "
                          f"(torchrun --master_port=PORT, or --standalone)") from None
        raise FRError(f"the job's store at {address} did not answer within fail_timeout_s={timeout_s} "
                      f"({type(e).__name__}): is rank 0 running, and MASTER_ADDR/MASTER_PORT the same on every rank?") \
            from None
    attempt = f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    pg_store = dist.PrefixStore(f"fr_dist/{attempt}", store)
    if backend == "nccl":
        torch.cuda.set_device(device)
        # NCCL's own watchdog ends a rank by SIGABRT, without our one message: it
        # must never be first, so its timeout is well above ours (runtime/watchdog.py).
        nccl_timeout = timedelta(seconds=timeout_s + max(600.0, 4 * timeout_s))
        dist.init_process_group("nccl", store=pg_store, rank=r, world_size=world, timeout=nccl_timeout,
                                device_id=device)
        tensor_timeout = nccl_timeout
    else:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("gloo", store=pg_store, rank=r, world_size=world, timeout=timeout)
        tensor_timeout = timeout
    control = dist.new_group(backend="gloo", timeout=timeout)
    D, K = replicas, world // replicas
    stage, replica = r // D, r % D
    groups, data_parallel, stage_control = {}, None, None
    for d in range(D):  # every rank creates every group, in the same order
        for k in range(K - 1):
            pair = [k * D + d, (k + 1) * D + d]
            up = dist.new_group(pair, timeout=tensor_timeout)
            down = dist.new_group(pair, timeout=tensor_timeout)
            if d == replica:
                groups[(k, k + 1)], groups[(k + 1, k)] = up, down
    if D > 1:
        for k in range(K):
            ranks = [k * D + d for d in range(D)]
            group = dist.new_group(ranks, timeout=tensor_timeout)
            host = dist.new_group(ranks, backend="gloo", timeout=timeout)
            if k == stage:
                data_parallel, stage_control = group, host
    return Runtime(r, world, device, backend, control, groups, store, attempt, None if agent else 0, D,
                   data_parallel, stage_control)


def shutdown(abort: bool = False) -> None:
    """Leave the process groups: destroy them after a clean run, abort them after a failure.

    With a dead or frozen peer, destroying can block on pending point-to-point
    work; aborting does not wait for it, and the process exits right after.
    """
    if not dist.is_initialized():
        return
    if not abort:
        dist.destroy_process_group()
        return
    from torch.distributed.distributed_c10d import _abort_process_group

    thread = threading.Thread(target=_abort_process_group, daemon=True)
    thread.start()
    thread.join(RECORD_TIMEOUT_S)


def agree(rt: Runtime, error: str | None) -> list:
    """Share each rank's start-up error (or None) so that all ranks stop together."""
    errors = [None] * rt.world
    dist.all_gather_object(errors, error, group=rt.control)
    return errors
