"""One message per failure, every rank stopping: at start-up and during training.

A user error (FRError) is printed by the rank that found it; a lost peer by the
first rank to notice, unless another rank already reported the failure that
took the peer down; a bug with the schedule around the failing action.
"""

from __future__ import annotations

import sys
import traceback

import torch.distributed

from fr_dist.errors import FRError
from fr_dist.runtime.groups import RECORD_TIMEOUT_S, Runtime, agree


class Stop(Exception):
    """The run stops; the rank that knows why already printed it.

    `aborted`: it stopped during training, where a peer may be dead or frozen:
    the process groups are aborted, not destroyed (runtime/groups.py shutdown).
    """

    def __init__(self, aborted: bool = False):
        super().__init__()
        self.aborted = aborted


class Preempted(Exception):
    """SIGTERM reached a rank: every rank wrote a checkpoint and stops."""


class NonFinite(Exception):
    """A loss or a parameter stopped being a finite number."""


def together(rt: Runtime, fn, *args):
    """Run a start-up step on every rank; if any rank fails, all stop together.

    Only the first failing rank prints, so a user sees one message.
    """
    error, result = None, None
    try:
        result = fn(*args)
    except FRError as e:
        error = str(e)
    errors = agree(rt, error)
    failed = [r for r, e in enumerate(errors) if e is not None]
    if failed:
        if rt.rank == failed[0]:
            print(f"[{rt.name}] error: {errors[rt.rank]}", file=sys.stderr, flush=True)
        raise Stop
    return result


def report(rt: Runtime, e: Exception, step: int, waiting_on: int | None, history, checkpoints) -> None:
    """Print this rank's one message for `e` (raised at iteration `step`), or nothing if it is not ours.

    A rank that loses a peer (a closed connection, or no answer within
    fail_timeout_s) speaks only if nobody reported a failure before it: then
    the peer died without a word (killed, out of memory). `waiting_on` is the
    peer of the transfer that was left unfinished, if any.
    """
    k, me = rt.rank, rt.name
    where = f"at step {step}"
    lost = isinstance(e, torch.distributed.DistError) or "Connection" in str(e) or "Timed out" in str(e)
    if lost:
        who = "a peer"
        if waiting_on is not None:
            who = f"stage {waiting_on}" + (f" replica {rt.replica}" if rt.replicas > 1 else "")
        mine = f"{me}: lost {who} {where}"
        held = rt.record("failure", mine, timeout_s=RECORD_TIMEOUT_S)
        # An unreachable store means its host is the rank that died or froze (a plain
        # launch: rank 0 serves it): then its lowest neighbour speaks for everyone.
        speak = held == mine or (held is None and k == (1 if rt.store_host == 0 else 0))
        if speak:
            print(f"[{me}] error: {who} failed or stopped responding {where} "
                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); stopping", file=sys.stderr, flush=True)
        return
    rt.record("failure", f"{me}: {e}", timeout_s=RECORD_TIMEOUT_S)
    if isinstance(e, (FRError, NonFinite)):
        print(f"[{me}] error: {e}; the last complete checkpoint is kept in {checkpoints}",
              file=sys.stderr, flush=True)
    else:  # a bug: show where, and the schedule around the failing action
        print(f"[{me}] internal error {where}: {e}\n[{me}] last actions: "
              f"{' '.join(map(str, history))}", file=sys.stderr, flush=True)
        traceback.print_exc()
