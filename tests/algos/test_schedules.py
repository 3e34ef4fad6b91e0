"""The schedules as data: exact actions for small K, and the send/recv order NCCL needs."""

from __future__ import annotations

import pytest

from fr_dist.algos import ALGOS, PIPELINES, fr
from fr_dist.runtime.actions import eval_schedule, settle
from fr_dist.runtime.diagnostic import stepped_batches, with_passes
from tests.support import program

# gpipe and 1f1b bring their own communication (torch.distributed.pipelining).
P2P_ALGOS = sorted(ALGOS)


# Written out by hand from DESIGN section 1. L: load, Y: labels, Rx/Sx: receive/send
# activations, Pg: post gradient receive, F: forward, B: replay+backward,
# FB: last stage forward+loss+backward, Sg: send input gradient, U: update.
FR_BY_HAND = {
    (1, 3): [["L0 Y0 FB0 U0", "L1 Y1 FB1 U1", "L2 Y2 FB2 U2"]],
    (2, 3): [
        ["L0 F0 Sx0", "Pg0 L1 F1 Sx1 B0 U0", "Pg1 L2 F2 Sx2 B1 U1", "Pg2 B2 U2"],
        ["Rx0 Y0 FB0 Sg0 U0", "Rx1 Y1 FB1 Sg1 U1", "Rx2 Y2 FB2 Sg2 U2"],
    ],
    (3, 4): [
        ["L0 F0 Sx0", "L1 F1 Sx1", "Pg0 L2 F2 Sx2 B0 U0", "Pg1 L3 F3 Sx3 B1 U1", "Pg2 B2 U2", "Pg3 B3 U3"],
        ["Rx0 F0 Sx0", "Pg0 Rx1 F1 Sx1 B0 Sg0 U0", "Pg1 Rx2 F2 Sx2 B1 Sg1 U1", "Pg2 Rx3 F3 Sx3 B2 Sg2 U2",
         "Pg3 B3 Sg3 U3"],
        ["Rx0 Y0 FB0 Sg0 U0", "Rx1 Y1 FB1 Sg1 U1", "Rx2 Y2 FB2 Sg2 U2", "Rx3 Y3 FB3 Sg3 U3"],
    ],
    # Fewer batches than the pipeline is deep: stage 0 idles for one iteration.
    (4, 2): [
        ["L0 F0 Sx0", "L1 F1 Sx1", "", "Pg0 B0 U0", "Pg1 B1 U1"],
        ["Rx0 F0 Sx0", "Rx1 F1 Sx1", "Pg0 B0 Sg0 U0", "Pg1 B1 Sg1 U1"],
        ["Rx0 F0 Sx0", "Pg0 Rx1 F1 Sx1 B0 Sg0 U0", "Pg1 B1 Sg1 U1"],
        ["Rx0 Y0 FB0 Sg0 U0", "Rx1 Y1 FB1 Sg1 U1"],
    ],
    (4, 5): [
        ["L0 F0 Sx0", "L1 F1 Sx1", "L2 F2 Sx2", "Pg0 L3 F3 Sx3 B0 U0", "Pg1 L4 F4 Sx4 B1 U1",
         "Pg2 B2 U2", "Pg3 B3 U3", "Pg4 B4 U4"],
        ["Rx0 F0 Sx0", "Rx1 F1 Sx1", "Pg0 Rx2 F2 Sx2 B0 Sg0 U0", "Pg1 Rx3 F3 Sx3 B1 Sg1 U1",
         "Pg2 Rx4 F4 Sx4 B2 Sg2 U2", "Pg3 B3 Sg3 U3", "Pg4 B4 Sg4 U4"],
        ["Rx0 F0 Sx0", "Pg0 Rx1 F1 Sx1 B0 Sg0 U0", "Pg1 Rx2 F2 Sx2 B1 Sg1 U1", "Pg2 Rx3 F3 Sx3 B2 Sg2 U2",
         "Pg3 Rx4 F4 Sx4 B3 Sg3 U3", "Pg4 B4 Sg4 U4"],
        ["Rx0 Y0 FB0 Sg0 U0", "Rx1 Y1 FB1 Sg1 U1", "Rx2 Y2 FB2 Sg2 U2", "Rx3 Y3 FB3 Sg3 U3", "Rx4 Y4 FB4 Sg4 U4"],
    ],
}


@pytest.mark.parametrize("K,T", sorted(FR_BY_HAND))
def test_fr_schedule_exact(K, T):
    assert [program(fr, k, K, T) for k in range(K)] == FR_BY_HAND[(K, T)]


def test_eval_schedule_exact():
    assert [" ".join(map(str, eval_schedule(k, 3, 7))) for k in range(3)] == [
        "eL7 eF7 eSx7", "eRx7 eF7 eSx7", "eRx7 eY7 eS7"]


def test_diagnostic_passes_exact():
    """K = 3, iteration 4 of FR: every update computed, then one pass per stage, then the
    gradients that cross into the next iteration and the steps (d<j>: the pass for stage j)."""
    assert [" ".join(map(str, with_passes(fr, k, 3, 4, 10))) for k in range(3)] == [
        "Pg2 L4 F4 Sx4 B2 d0L2 d0F2 d0Sx2 d0Pg2 d0B2 d1L3 d1F3 d1Sx3 d2L4 d2F4 d2Sx4 U2",
        "Pg3 Rx4 F4 Sx4 B3 d0Rx2 d0F2 d0Sx2 d0Pg2 d0B2 d0Sg2 d1Rx3 d1F3 d1Sx3 d1Pg3 d1B3 d2Rx4 d2F4 d2Sx4 "
        "Sg3 U3",
        "Rx4 Y4 FB4 d0Rx2 d0Y2 d0FB2 d0Sg2 d1Rx3 d1Y3 d1FB3 d1Sg3 d2Rx4 d2Y4 d2FB4 Sg4 U4",
    ]


def test_pipelines_have_no_engine_schedule():
    """gpipe and 1f1b train through torch.distributed.pipelining: nothing crosses an iteration on the links."""
    for algo in PIPELINES.values():
        assert algo.iterations(1, 3, 5) == 5
        assert all(algo.schedule(k, 3, t, 5) == [] for k in range(3) for t in range(5))


def flat_program(algo, stage, K, T, steps_per_epoch, diag_every=0):
    """Every action of `stage` in order, as the loop runs them: the diagnostic's passes every
    `diag_every` iterations, at epoch ends a cut (settle) and an evaluation, one after the drain."""
    acts = []
    for t in range(algo.iterations(stage, K, T)):
        due = diag_every and (t + 1) % diag_every == 0 and t < T
        acts += with_passes(algo, stage, K, t, T) if due else algo.schedule(stage, K, t, T)
        if t < T - 1 and (t + 1) % steps_per_epoch == 0:
            acts += settle(algo, stage, K, t, T)
            acts += [a for e in range(2) for a in eval_schedule(stage, K, e)]
    return acts + [a for e in range(2) for a in eval_schedule(stage, K, e)]


def key(a):
    return a.batch, a.eval, a.diag


def gradient_receives(program) -> list:
    """The receives a stage's program issues on its error-gradient link, in order: a take_g receives
    at once; a post_g receives unless its gradient was taken at a cut (then its backward uses that)."""
    held, out = set(), []
    for a in program:
        if a.op == "take_g":
            held.add(key(a))
            out.append(key(a))
        elif a.op == "post_g" and key(a) not in held:
            out.append(key(a))
    return out


def simulate(programs):
    """Run per-rank programs with blocking receives and buffered sends.

    recv_x and take_g block until the matching send happened; backward blocks
    until the posted gradient was sent (or uses the one taken at a cut).
    Returns the per-link message sequences; fails on a deadlock or on a receive
    that gets another batch than it expects.
    """
    K = len(programs)
    pc = [0] * K
    sent = {}  # (src, dst) -> [(batch, eval, diag)] in send order
    taken = {}  # (src, dst) -> how many were received
    posted = [[] for _ in range(K)]
    held = [set() for _ in range(K)]
    while any(pc[k] < len(programs[k]) for k in range(K)):
        progress = False
        for k in range(K):
            while pc[k] < len(programs[k]):
                a = programs[k][pc[k]]
                if a.op in ("send_x", "send_g"):
                    dst = k + 1 if a.op == "send_x" else k - 1
                    sent.setdefault((k, dst), []).append(key(a))
                elif a.op == "backward" and key(a) in held[k]:
                    assert posted[k] and posted[k][0] == key(a), f"stage {k}: backward {a} without its post"
                    held[k].remove(key(a))
                    posted[k].pop(0)
                elif a.op in ("recv_x", "backward", "take_g"):
                    src = k - 1 if a.op == "recv_x" else k + 1
                    if a.op == "backward":
                        assert posted[k] and posted[k][0] == key(a), f"stage {k}: backward {a} without its post"
                    n = taken.get((src, k), 0)
                    if n >= len(sent.get((src, k), [])):
                        break  # blocked: the message is not there yet
                    assert sent[(src, k)][n] == key(a), f"stage {k}: {a} got {sent[(src, k)][n]}"
                    taken[(src, k)] = n + 1
                    if a.op == "backward":
                        posted[k].pop(0)
                    if a.op == "take_g":
                        held[k].add(key(a))
                elif a.op == "post_g":
                    posted[k].append(key(a))
                pc[k] += 1
                progress = True
        assert progress, "deadlock at " + ", ".join(
            f"stage {k}: {programs[k][pc[k]]}" for k in range(K) if pc[k] < len(programs[k]))
    assert all(taken.get(link, 0) == len(msgs) for link, msgs in sent.items()), "a message was never received"
    assert not any(held), "a gradient taken at a cut was never replayed"
    return sent


def test_a_cut_takes_what_crosses_it():
    """FR K = 3 after iteration 4: stage k takes the gradient stage k+1 sent in iteration 4, the one
    it replays in iteration 5; the last stage takes nothing."""
    assert [" ".join(map(str, settle(fr, k, 3, 4, 10))) for k in range(3)] == ["Tg3", "Tg4", ""]
    assert [" ".join(map(str, settle(fr, k, 2, 10, 10))) for k in range(2)] == ["", ""]  # the drain


def sends_cross_a_cut(programs, K) -> bool:
    """Some transfer is started before an evaluation and received after it."""
    for k in range(K - 1):
        program = programs[k]
        first_eval = next((i for i, a in enumerate(program) if a.eval), None)
        if first_eval is None:
            continue
        before = [key(a) for a in programs[k + 1][:next(i for i, a in enumerate(programs[k + 1]) if a.eval)]
                  if a.op == "send_g"]
        received = [key(a) for a in program[:first_eval] if a.op in ("take_g", "backward")]
        if set(before) - set(received):
            return True
    return False


@pytest.mark.parametrize("name", P2P_ALGOS)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("T", [1, 2, 3, 7])
@pytest.mark.parametrize("diag_every", [0, 1, 2])
def test_sends_match_receives_in_order(name, K, T, diag_every):
    """For every neighbour pair, one side's sends equal the other's receives, in order,
    through training, evaluations, the diagnostic's passes and the drain."""
    algo = ALGOS[name]
    programs = [flat_program(algo, k, K, T, steps_per_epoch=3, diag_every=diag_every) for k in range(K)]
    sent = simulate(programs)
    for k in range(K - 1):
        recv_x = [(a.batch, a.eval, a.diag) for a in programs[k + 1] if a.op == "recv_x"]
        assert sent[(k, k + 1)] == recv_x
        assert sent[(k + 1, k)] == gradient_receives(programs[k])
        training = [b for b, e, d in sent[(k, k + 1)] if not e and d is None]
        assert training == list(range(T))  # every batch once, in order
    # The last stage's labels are those of the batches stage 0 loaded, in order.
    loads = [(a.batch, a.eval, a.diag) for a in programs[0] if a.op == "load"]
    labels = [(a.batch, a.eval, a.diag) for a in programs[-1] if a.op == "labels"]
    assert loads == labels
    assert not sends_cross_a_cut(programs, K)  # evaluations run with nothing in flight
    if diag_every:  # a pass per stage that steps, in every due iteration
        passes = {(a.diag, a.batch) for a in programs[-1] if a.diag is not None}
        want = {(j, b) for t in range(T) if (t + 1) % diag_every == 0
                for j, b in stepped_batches(algo, K, t, T).items()}
        assert passes == want


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_every_batch_applied_once_per_stage(K):
    T = 6
    for k in range(K):
        steps = [a.batch for t in range(fr.iterations(k, K, T)) for a in fr.schedule(k, K, t, T) if a.op == "step"]
        assert steps == list(range(T))
