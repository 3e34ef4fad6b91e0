"""The action vocabulary every schedule speaks, and the schedules every algorithm shares.

A schedule is a pure function that returns, for one stage and one iteration,
a list of actions; the engine (runtime/engine.py) executes them. Printed, an
action is a short code and a batch: ``F3`` forwards batch 3, ``eF0``
forwards evaluation batch 0.
"""

from __future__ import annotations

from dataclasses import dataclass

# Action ops. Communication: recv_x (activations from stage k-1, needed now),
# send_x (to k+1, non-blocking), post_g (post the receive of an error gradient
# from k+1), send_g (input gradient to k-1, non-blocking). Data: load (stage 0's
# input), labels (last stage's targets). Compute: forward, backward (consumes
# the posted gradient), local_backward (a backward with a gradient the stage
# makes itself, e.g. a synthetic one), loss (last stage: forward, loss, backward),
# step, score (last stage, evaluation: count correct predictions). At an evaluation
# or checkpoint cut: take_g (receive an error gradient now, ahead of its replay; its
# later post_g receives nothing and its backward uses the held copy).
OPS = ("load", "labels", "recv_x", "send_x", "post_g", "take_g", "send_g", "forward", "backward", "local_backward",
       "loss", "step", "score")
_CODE = {"load": "L", "labels": "Y", "recv_x": "Rx", "send_x": "Sx", "post_g": "Pg", "take_g": "Tg", "send_g": "Sg",
         "forward": "F", "backward": "B", "local_backward": "BL", "loss": "FB", "step": "U", "score": "S"}


@dataclass(frozen=True)
class Action:
    """One step of a stage's program.

    `eval`: an evaluation batch (forward only, current weights). `diag`: a pass
    of the sufficient-direction diagnostic (runtime/diagnostic.py) that computes
    stage `diag`'s true gradient for training batch `batch`.
    """

    op: str
    batch: int  # training batch id, or evaluation batch index when eval
    eval: bool = False
    diag: int | None = None

    def __str__(self) -> str:
        prefix = "e" if self.eval else "" if self.diag is None else f"d{self.diag}"
        return prefix + _CODE[self.op] + str(self.batch)

    @property
    def link_id(self) -> int:
        """The batch id a link carries for this action: training ids are >= 0, the others never collide."""
        if self.eval:
            return -1 - self.batch
        if self.diag is not None:
            return -1_000_000_000 * (self.diag + 1) - self.batch
        return self.batch


def source(stage: int, t: int, eval: bool = False, diag: int | None = None) -> Action:
    """Where stage's input for batch t comes from: the data on stage 0, else stage k-1."""
    return Action("load" if stage == 0 else "recv_x", t, eval, diag)


def last_stage(stage: int, t: int) -> list[Action]:
    """The last stage in every algorithm: plain forward, loss and backward of batch t."""
    acts = [source(stage, t), Action("labels", t), Action("loss", t)]
    if stage > 0:
        acts.append(Action("send_g", t))
    return acts + [Action("step", t)]


def eval_schedule(stage: int, K: int, e: int) -> list[Action]:
    """Evaluation batch e: a forward-only pipeline with the current weights."""
    acts = [source(stage, e, eval=True)]
    if stage < K - 1:
        return acts + [Action("forward", e, True), Action("send_x", e, True)]
    return acts + [Action("labels", e, True), Action("score", e, True)]


def settle(algo, k: int, K: int, t: int, T: int) -> list[Action]:
    """Stage k at a cut after iteration t: take the error gradients stage k+1 sent in t.

    Evaluations and checkpoints then leave no transfer unmatched: nothing is in
    flight while they run, however long they take.
    """
    return [Action("take_g", b) for b in in_flight(algo, k + 1, K, t, T)] if k < K - 1 else []


def in_flight(algo, k: int, K: int, t: int, T: int) -> list[int]:
    """Error gradients stage k sent in iteration t that stage k-1 receives only in t+1."""
    if k == 0 or t >= algo.iterations(k, K, T):
        return []
    sent = [a.batch for a in algo.schedule(k, K, t, T) if a.op == "send_g"]
    taken = ({a.batch for a in algo.schedule(k - 1, K, t, T) if a.op == "backward"}
             if t < algo.iterations(k - 1, K, T) else set())
    return [b for b in sent if b not in taken]
