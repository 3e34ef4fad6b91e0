"""Timeline simulator: predict seconds per iteration (one batch) from measured costs.

Inputs: per-block (f, b) seconds (``fr_dist.partition.profile``: f = forward without graph,
f + b = forward with graph + backward) and link seconds (one number, or a list of
n+1 per-cut costs indexed by cut c, as in ``fr_dist.partition``).

Every algorithm is an event simulation of per-rank programs of four operations:
compute (a duration), send (arrives after the link's time; transfers on one link
go one after another; the sender does not wait unless the program says so),
receive (blocks until the matching send arrived) and wait-for-own-send.

- ``fr`` and ``bp`` (model-parallel, and K = 1: one worker) run the very action
  lists of ``fr_dist.algos.fr.schedule`` / ``bp.schedule``: forward = F_k, FR's
  backward (replay) = F_k + B_k, BP's backward (the graph is kept) = B_k, the
  last stage's loss = F_k + B_k, ``send_x`` waits for the previous send on its
  link (``dist.Link.send`` does), ``backward`` blocks until its gradient arrived.
- ``gpipe`` and ``1f1b`` run the orderings of ``torch.distributed.pipelining``'s
  ``ScheduleGPipe`` and ``Schedule1F1B`` (torch 2.13, read from its source: GPipe
  sends without waiting and waits for all sends at the end of each phase; 1F1B
  warms up with min(M, K-k) forwards and fuses each send with the next receive,
  waiting for both), with M micro-batches costing F_k/M and B_k/M (or measured
  micro-batch costs `mb_costs`) and link times L/M; with ``checkpoint=True`` a
  micro-batch's backward recomputes its forward: (F_k + B_k)/M. Each batch ends with the
  optimizer step, so batches do not overlap.
- ``interleaved1f1b``, ``zb``, ``zbv`` and ``dualpipev`` (V chunks per rank, K x V
  chunks cut uniformly as the runner cuts them) run the per-rank compute order that
  torch's own schedule class computes (``fr_dist.tools.schedule_order``): a forward
  waits for its input from the rank of the chunk before, a backward (full, or the
  input-gradient half I) for the gradient from the chunk after, sends go without
  waiting, one after another on a pair of ranks. A split backward prices I and W at
  half the chunk's backward each (``w_share``); DualPipeV's overlapped forward and
  backward run one after the other, as on a CPU. ``gpipe`` runs through the same path
  with ``torch_order=True``, a check of both (1F1B cannot: Schedule1F1B reports an
  order that is not the one its loop runs).

The steady-state period is the mean iteration time over the middle of a long
simulated run (warm-up and drain excluded), the largest over ranks. Not modelled:
cores shared by ranks, memory-bandwidth contention, the optimizer step and data
loading (``load_s`` adds a cost to stage 0's load), Python overheads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fr_dist.algos import bp as _bp, fr as _fr
from fr_dist.partition.cuts import _check, _link_at, pipeline_cuts, profiled_cuts, stage_cuts

VIRTUAL_ALGOS = ("interleaved1f1b", "zb", "zbv", "dualpipev")  # V chunks per rank, torch's own order
ALGOS = ("bp", "fr", "gpipe", "1f1b", *VIRTUAL_ALGOS)


@dataclass
class SimResult:
    period: float  # steady-state seconds per iteration (batch)
    busy: list[float]  # per rank: compute seconds per period / period (a predicted busy_frac)
    marks: list[list[float]]  # per rank: time at the end of each iteration
    timeline: list[list[tuple[float, float, str]]] = field(default_factory=list)  # (start, end, label) per rank


def run_programs(programs: list[list[tuple]], keep_timeline: bool = False):
    """Execute per-rank programs; (marks, busy seconds per rank, timeline).

    Ops: ("c", seconds, label), ("s", link, key, seconds, wait_previous), ("r", link, key),
    ("w", link, key) (wait until this rank's send of key arrived), ("m",) (iteration end).
    """
    R = len(programs)
    pc, clock = [0] * R, [0.0] * R
    busy = [0.0] * R
    marks: list[list[float]] = [[] for _ in range(R)]
    timeline: list[list] = [[] for _ in range(R)]
    arrived: dict = {}
    link_free: dict = {}
    remaining = sum(len(p) for p in programs)
    while remaining:
        progress = False
        for r in range(R):
            prog = programs[r]
            while pc[r] < len(prog):
                op = prog[pc[r]]
                kind = op[0]
                if kind == "c":
                    if keep_timeline and op[1] > 0:
                        timeline[r].append((clock[r], clock[r] + op[1], op[2]))
                    clock[r] += op[1]
                    busy[r] += op[1]
                elif kind == "s":
                    _, link, key, secs, wait_prev = op
                    free = link_free.get(link, 0.0)
                    if wait_prev:
                        clock[r] = max(clock[r], free)
                    arrival = max(clock[r], free) + secs
                    link_free[link] = arrival
                    arrived[(link, key)] = arrival
                elif kind in ("r", "w"):
                    t = arrived.get((op[1], op[2]))
                    if t is None:
                        break  # the sender has not got there yet
                    clock[r] = max(clock[r], t)
                elif kind == "m":
                    marks[r].append(clock[r])
                pc[r] += 1
                remaining -= 1
                progress = True
        if not progress:
            stuck = {r: programs[r][pc[r]] for r in range(R) if pc[r] < len(programs[r])}
            raise RuntimeError(f"simulated deadlock: ranks wait on {stuck}")
    return marks, busy, timeline


def _stage_sums(costs, cuts):
    return ([sum(c[0] for c in costs[a:b]) for a, b in zip(cuts, cuts[1:])],
            [sum(c[1] for c in costs[a:b]) for a, b in zip(cuts, cuts[1:])])


def _action_programs(algo, F, B, L, T, load_s, step_s, R=None):
    """Programs of fr / bp from their schedules. L[k]: link into stage k (L[0] unused);
    R[k]: FR's replay (default F[k] + B[k], the batch in one piece)."""
    module = _fr if algo == "fr" else _bp
    K = len(F)
    programs = []
    for k in range(K):
        prog = []
        for t in range(module.iterations(k, K, T)):
            for a in module.schedule(k, K, t, T):
                op = a.op
                if op == "load":
                    prog.append(("c", load_s, f"L{a.batch}"))
                elif op == "recv_x":
                    prog.append(("r", ("x", k), a.batch))
                elif op == "send_x":
                    prog.append(("s", ("x", k + 1), a.batch, L[k + 1], True))
                elif op == "forward":
                    prog.append(("c", F[k], f"F{a.batch}"))
                elif op == "backward":
                    prog.append(("r", ("g", k), a.batch))
                    if algo == "fr":  # replay: forward again, with a graph, then backward
                        prog.append(("c", R[k] if R else F[k] + B[k], f"R{a.batch}"))
                    else:
                        prog.append(("c", B[k], f"B{a.batch}"))
                elif op == "send_g":
                    prog.append(("s", ("g", k - 1), a.batch, L[k], True))
                elif op == "loss":
                    prog.append(("c", F[k] + B[k], f"FB{a.batch}"))
                elif op == "step":
                    prog.append(("c", step_s, f"U{a.batch}"))
                elif op in ("labels", "post_g"):
                    pass
                else:
                    raise ValueError(f"cannot simulate action {a}")
            prog.append(("m",))
        programs.append(prog)
    return programs


def _pipe_programs(algo, F, B, L, T, M, load_s, step_s):
    """Programs of torch.distributed.pipelining's GPipe / 1F1B (see the module docstring)."""
    K = len(F)
    programs = []
    for k in range(K):
        first, last = k == 0, k == K - 1
        Fm, Bm = F[k], B[k]  # already per micro-batch
        prog = []

        def fwd(t, i):
            if not first:
                prog.append(("r", ("x", k), (t, i)))
            prog.append(("c", Fm, f"F{t}.{i}"))

        def send_x(t, i):
            prog.append(("s", ("x", k + 1), (t, i), L[k + 1], False))

        def send_g(t, i):
            prog.append(("s", ("g", k - 1), (t, i), L[k], False))

        def bwd(t, i):
            if not last:
                prog.append(("r", ("g", k), (t, i)))
            prog.append(("c", Bm, f"B{t}.{i}"))

        for t in range(T):
            if first:
                prog.append(("c", load_s, f"L{t}"))
            if algo == "gpipe":
                for i in range(M):
                    fwd(t, i)
                    if not last:
                        send_x(t, i)
                if not last:
                    prog.extend(("w", ("x", k + 1), (t, i)) for i in range(M))
                for i in range(M):
                    bwd(t, i)
                    if not first:
                        send_g(t, i)
                if not first:
                    prog.extend(("w", ("g", k - 1), (t, i)) for i in range(M))
            else:  # 1f1b, as Schedule1F1B._step_microbatches
                W = min(M, K - k)
                fi = bi = 0
                work = None  # (link, key) of the send to wait for
                pending = None  # micro-batch whose forward send is deferred
                for _ in range(W):
                    fwd(t, fi)
                    if work:
                        prog.append(("w", *work))
                        work = None
                    if not last:
                        if fi != W - 1:
                            send_x(t, fi)
                            work = (("x", k + 1), (t, fi))
                        else:
                            pending = fi
                    fi += 1
                while True:
                    if pending is not None:
                        send_x(t, pending)
                        prog.append(("w", ("x", k + 1), (t, pending)))
                        pending = None
                    bwd(t, bi)
                    done_b = bi
                    bi += 1
                    if fi == M:
                        break
                    if not first:
                        send_g(t, done_b)
                        prog.append(("w", ("g", k - 1), (t, done_b)))
                    fwd(t, fi)
                    if not last:
                        pending = fi
                    fi += 1
                if work:
                    prog.append(("w", *work))
                work = None
                if not first:
                    send_g(t, done_b)
                    work = (("g", k - 1), (t, done_b))
                while bi < M:
                    bwd(t, bi)
                    if work:
                        prog.append(("w", *work))
                    send_g(t, bi)
                    work = (("g", k - 1), (t, bi))
                    bi += 1
                if work:
                    prog.append(("w", *work))
            prog.append(("c", step_s, f"U{t}"))
            prog.append(("m",))
        programs.append(prog)
    return programs


def _order_programs(algo, F, B, L, T, M, K, V, load_s, step_s, w_share):
    """Programs of a schedule from torch's own compute order (see the module docstring).

    F, B, L: per chunk (K x V of them, per micro-batch); L[s] is the link into chunk s.
    """
    from fr_dist.tools.schedule_order import chunk_owner, pipeline_order

    order = pipeline_order(algo, K, V, M)
    rank_of = chunk_owner(algo, K, V)
    S = len(rank_of)
    cost = {"F": F, "B": B, "I": [b * (1 - w_share) for b in B], "W": [b * w_share for b in B]}
    programs = []
    for r in range(K):
        prog = []
        for t in range(T):
            if r == rank_of[0]:
                prog.append(("c", load_s, f"L{t}"))
            for kind, s, i in order[r]:
                # the neighbour a forward reads from and writes to; a backward the other way round
                src, dst = (s - 1, s + 1) if kind == "F" else (s + 1, s - 1)
                link = "x" if kind == "F" else "g"
                if kind != "W" and 0 <= src < S and rank_of[src] != r:
                    prog.append(("r", (link, rank_of[src], r), (t, s, i)))
                prog.append(("c", cost[kind][s], f"{kind}{s}:{t}.{i}"))
                if kind != "W" and 0 <= dst < S and rank_of[dst] != r:
                    prog.append(("s", (link, r, rank_of[dst]), (t, dst, i), L[max(s, dst)], False))
            prog.append(("c", step_s, f"U{t}"))
            prog.append(("m",))
        programs.append(prog)
    return programs


def simulate(costs, K: int, link_s=0.0, algo: str = "fr", M: int = 4, cuts=None, mb_costs=None,
             checkpoint: bool = False, T: int | None = None, load_s: float = 0.0, step_s: float = 0.0,
             keep_timeline: bool = False, V: int = 2, torch_order: bool = False,
             w_share: float = 0.5, replay_chunks: int = 1) -> SimResult:
    """Event-simulate `algo` with K stages on boundaries `cuts` (default: the best for the algorithm).

    FR with `replay_chunks` > 1 replays the batch in that many slices, each costing a
    slice's forward and backward (`mb_costs`, measured at the slice's size, or the batch's
    costs scaled down). The schedules of VIRTUAL_ALGOS cut K x V chunks (`cuts` has K x V + 1 entries; default
    uniform, as the runner cuts them). Raises ValueError where torch refuses the schedule
    for this K, V and M.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
    virtual = algo in VIRTUAL_ALGOS
    chunks = K * V if virtual else K
    n = _check(costs, chunks)
    if cuts is None:
        cuts = (stage_cuts(n, chunks, "uniform") if virtual else
                profiled_cuts(costs, K, link_s) if algo == "fr" else pipeline_cuts(costs, K, link_s))
    cuts = list(cuts)
    if len(cuts) != chunks + 1 or cuts[0] != 0 or cuts[-1] != n:
        raise ValueError(f"cuts {cuts} do not split {n} blocks into {chunks} chunks")
    L = [_link_at(link_s, c, n) for c in cuts[:-1]]
    L.append(0.0)
    T = T or max(48, 12 * K)
    if algo in ("fr", "bp"):
        F, B = _stage_sums(costs, cuts)
        R = None
        if algo == "fr" and replay_chunks > 1:  # the replay in slices: M x a slice's forward and backward
            Fs, Bs = _stage_sums(mb_costs, cuts) if mb_costs is not None else (
                [f / replay_chunks for f in F], [b / replay_chunks for b in B])
            R = [replay_chunks * (f + b) for f, b in zip(Fs, Bs)]
        programs = _action_programs(algo, F, B, L, T, load_s, step_s, R)
    else:
        if mb_costs is not None:
            F, B = _stage_sums(mb_costs, cuts)
        else:
            F, B = _stage_sums(costs, cuts)
            F, B = [f / M for f in F], [b / M for b in B]
        if checkpoint:
            B = [f + b for f, b in zip(F, B)]
        L = [l / M for l in L]  # a micro-batch's features are 1/M of the batch's
        if virtual or torch_order:
            programs = _order_programs(algo, F, B, L, T, M, K, V if virtual else 1, load_s, step_s, w_share)
        else:
            programs = _pipe_programs(algo, F, B, L, T, M, load_s, step_s)
    marks, busy, timeline = run_programs(programs, keep_timeline)
    lo, hi = T // 4, (3 * T) // 4
    period = max((m[hi] - m[lo]) / (hi - lo) for m in marks)
    # busy per period: compute seconds in the window / window length
    busy_frac = []
    for r in range(len(marks)):
        total = sum(op[1] for op in programs[r] if op[0] == "c")
        busy_frac.append(min(1.0, total / max(marks[r][-1], 1e-12)))
    return SimResult(period, busy_frac, marks, timeline)


def predict(costs, K: int, link_s=0.0, algo: str = "fr", M: int = 4, cuts=None, **options) -> float:
    """Steady-state seconds per iteration (batch) of `algo` with K stages.

    algo: "bp" (K = 1: one worker, sum of f + b; K > 1: model-parallel BP),
    "fr", "gpipe", "1f1b" (M micro-batches; options: mb_costs, checkpoint), and the
    VIRTUAL_ALGOS (options also V, w_share). `cuts` default to the best boundaries
    for the algorithm (FR's cost model for fr, the largest f + b for gpipe and
    1f1b, uniform for the K x V chunks of the others).
    """
    return simulate(costs, K, link_s, algo, M, cuts, **options).period


def scaling_table(costs, link_s=0.0, Ks=range(1, 9), Ms=(1, 2, 4), mb_costs_of=None) -> list[dict]:
    """Predicted seconds per batch and speedups over one-worker BP for each K.

    FR uses its best (profiled) partition; GPipe / 1F1B their own best, with M =
    m * K micro-batches for m in `Ms`. Rows: K, fr_cuts, fr_s, fr_speedup,
    ideal_speedup ((3K+1)/4, DESIGN.md section 6 with b = 2f), mp_bp_s,
    gpipe_M{M}_s and 1f1b_M{M}_s with their speedups.
    """
    bp1 = sum(f + b for f, b in costs)
    rows = []
    for K in Ks:
        if K > len(costs):
            break
        cuts = profiled_cuts(costs, K, link_s)
        fr_s = predict(costs, K, link_s, "fr", cuts=cuts)
        row = {"K": K, "fr_cuts": cuts[1:-1], "fr_s": fr_s, "fr_speedup": bp1 / fr_s,
               "ideal_speedup": (3 * K + 1) / 4, "bp_s": bp1,
               "mp_bp_s": predict(costs, K, link_s, "bp")}
        for m in Ms:
            M = m * K
            mb = mb_costs_of(M) if mb_costs_of else None
            for algo in ("gpipe", "1f1b"):
                s = predict(costs, K, link_s, algo, M=M, mb_costs=mb)
                row[f"{algo}_M{M}_s"] = s
                row[f"{algo}_M{M}_speedup"] = bp1 / s
        rows.append(row)
    return rows


def format_scaling(rows: list[dict], title: str = "") -> str:
    """A markdown table of `scaling_table` rows (GPipe / 1F1B: speedups for M = K, 2K, 4K)."""
    lines = [title] if title else []
    lines += ["| K | FR cuts | FR s/batch | FR speedup vs BP | (3K+1)/4 | model-parallel BP s | GPipe M=K/2K/4K "
              "| 1F1B M=K/2K/4K |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        K = r["K"]

        def cell(algo):
            vals = [r.get(f"{algo}_M{m * K}_speedup") for m in (1, 2, 4)]
            return "/".join("" if v is None else f"{v:.2f}" for v in vals) + "x"

        lines.append(f"| {K} | {r['fr_cuts']} | {r['fr_s']:.3f} | {r['fr_speedup']:.2f}x | "
                     f"{r['ideal_speedup']:.2f}x | {r['mp_bp_s']:.3f} | {cell('gpipe')} | {cell('1f1b')} |")
    return "\n".join(lines) + "\n"


def allreduce_seconds(nbytes: int, replicas: int, latency_s: float, bytes_per_s: float) -> float:
    """A ring all-reduce of `nbytes` over `replicas` ranks: 2 (D-1) steps, each moving nbytes / D."""
    D = replicas
    return 0.0 if D <= 1 else 2 * (D - 1) * (latency_s + nbytes / D / bytes_per_s)


def predict_replicas(costs, K: int, D: int, grad_bytes: list[int], latency_s: float, bytes_per_s: float,
                     link_s=0.0, cuts=None) -> float:
    """Seconds per global batch (D x batch_size samples) of FR with K stages x D replicas.

    Each stage's all-reduce starts after it sent its input gradient and ends
    before its step, so nothing hides it: a stage's compute per iteration grows
    by it, and the period is the larger of the single pipeline's and the
    slowest stage's compute plus its all-reduce. `grad_bytes[k]`: bytes of
    stage k's gradients.
    """
    sim = simulate(costs, K, link_s, "fr", cuts=cuts)
    slowest = max(b * sim.period + allreduce_seconds(n, D, latency_s, bytes_per_s)
                  for b, n in zip(sim.busy, grad_bytes))
    return max(sim.period, slowest)
