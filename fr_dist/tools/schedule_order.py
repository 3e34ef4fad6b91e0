"""The compute order of torch.distributed.pipelining's schedules, read from torch itself.

Every schedule of torch computes, on every rank, the whole pipeline's order: for each rank
a list of actions (chunk, F / B / I / W / an overlapped F;B pair, micro-batch) with None
for an idle slot. ``pipeline_order(schedule, K, V, M)`` builds the schedule on stand-in
stages that carry only their indices (nothing is allocated, no process group is needed)
and returns that order as plain tuples, so the simulator runs exactly what torch would run.
"""

from __future__ import annotations

from functools import lru_cache

from fr_dist.algos.pipe import SCHEDULES, SINGLE
from fr_dist.algos.placement import chunks_of, owner

# torch's computation types the simulator prices; the rest (gradient reduction, FSDP's
# unshard/reshard, send and receive) are no compute of the pipeline's own
COMPUTE = ("F", "B", "I", "W")


def _stand_in_stage(index: int, num_stages: int, rank: int, K: int):
    from torch.distributed.pipelining.stage import _PipelineStageBase

    class StandInStage(_PipelineStageBase):
        # _PipelineStageBase.__init__ needs a module and a process group; a schedule's
        # constructor reads only these fields while it computes the order
        def __init__(self):
            self.stage_index, self.num_stages, self.group_rank, self.group_size = index, num_stages, rank, K
            self.has_backward, self.dw_builder, self.submod = True, None, None
            self.stage_index_to_group_rank = {}

        def _create_grad_recv_info(self, *args, **kwargs):
            return None

        def _prepare_forward_infra(self, *args, **kwargs):
            return None

        def _prepare_backward_infra(self, *args, **kwargs):
            return None

        @property
        def is_first(self):
            return self.stage_index == 0

        @property
        def is_last(self):
            return self.stage_index == self.num_stages - 1

    return StandInStage()


def _flatten(action) -> list[tuple[str, int, int]]:
    if action is None:
        return []
    if action.sub_actions:  # DualPipeV's overlapped forward and backward: one after the other on a CPU
        return [a for sub in action.sub_actions for a in _flatten(sub)]
    kind = action.computation_type.value
    return [(kind, action.stage_index, action.microbatch_index)] if kind in COMPUTE else []


@lru_cache(maxsize=None)
def pipeline_order(schedule: str, K: int, V: int, M: int) -> tuple[tuple[tuple[str, int, int], ...], ...]:
    """Per rank, the compute actions (kind, chunk, micro-batch) of one batch, in torch's order.

    kind: F forward, B full backward, I input gradient, W weight gradient. Raises
    ValueError where torch refuses the combination (e.g. DualPipeV with M < 2K).
    """
    import torch.distributed.pipelining as pipelining

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if schedule == "1f1b":
        # Schedule1F1B runs its own loop; the order it reports is not what runs (in torch
        # 2.13 rank 1's forwards are numbered from 1), so the simulator models its loop instead
        raise ValueError("torch's pipeline_order of Schedule1F1B is not the order it runs: use _pipe_programs")
    cls_name, placement = SCHEDULES[schedule]
    cls = getattr(pipelining, cls_name)
    V = 1 if schedule in SINGLE else V
    rank_chunks = chunks_of(0, K, V, placement)
    stages = [_stand_in_stage(c, K * V, 0, K) for c in rank_chunks]
    sched = cls(stages[0] if V == 1 else stages, M, loss_fn=lambda out, y: out)
    order = sched.pipeline_order
    return tuple(tuple(a for action in order[r] for a in _flatten(action)) for r in range(K))


def chunk_owner(schedule: str, K: int, V: int) -> list[int]:
    """The rank of each of the K x V chunks under the schedule's placement."""
    placement = SCHEDULES[schedule][1]
    V = 1 if schedule in SINGLE else V
    return [owner(c, K, placement) for c in range(K * V)]
