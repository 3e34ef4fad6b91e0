"""The GPT language model end to end: token ids through links and ring buffers, per-token loss, validation.

Every distributed run is compared with the single-process simulator (fr_dist/reference.py) or, for the
evaluation, with a plain loop over the validation windows written here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fr_dist import FRError
from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.data.text import read_corpus, windows
from fr_dist.reference import gradient_accumulation
from fr_dist.runtime import checkpoint
from tests.ranks import run_ranks
from tests.support import (COMMON, assert_one_clear_error, assert_states_equal, distributed, gpt_overrides,
                           reference, run_reference, simulation_inputs, write_corpus)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("K", [1, 2, 3])
def test_fr_on_gpt_equals_reference(K, corpus, tmp_path):
    """Bit for bit with dropout 0.1: the replay draws the forward's masks again (K = 1: plain backprop)."""
    overrides = gpt_overrides(corpus) + COMMON + ["algo=fr"]
    want_states, want_losses = reference(K, overrides)
    got_states, got_losses, summary = distributed(K, overrides, tmp_path)
    assert len(want_losses) == summary["steps"] > 2 * K
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    assert "test_acc" not in summary and summary["tokens_per_s"] == pytest.approx(summary["samples_per_s"] * 8,
                                                                                  rel=1e-3)


@pytest.mark.parametrize("algo", ["ddg", "dni"])
def test_baselines_on_gpt_equal_reference(algo, corpus, tmp_path):
    """DDG's stored graphs and DNI's per-position linear synthetic-gradient model on (N, T, D) features."""
    overrides = gpt_overrides(corpus) + COMMON + [f"algo={algo}"]
    want_states, want_losses = run_reference(algo, 2, overrides)
    got_states, got_losses, _ = distributed(2, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)


def test_1f1b_on_gpt_equals_gradient_accumulation(corpus, tmp_path):
    overrides = gpt_overrides(corpus) + COMMON + ["algo=1f1b", "microbatches=2", "model.dropout=0.0"]
    _, _, stages, batches, lr_of, make_optimizer, _, _ = simulation_inputs(2, overrides)
    torch.set_num_threads(1)
    want_losses = gradient_accumulation(nn.Sequential(*stages), batches, lr_of, make_optimizer, 2)
    got_states, got_losses, _ = distributed(2, overrides, tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, [s.state_dict() for s in stages])


def test_validation_loss_is_the_mean_over_validation_tokens(corpus, tmp_path):
    """val_loss after training (eval_batches caps the windows scored) against a plain loop over the same
    windows with the reference's final weights; every eval_every_steps steps there is a row."""
    overrides = gpt_overrides(corpus) + COMMON + ["algo=fr", "eval_every_steps=4", "eval_batches=2"]
    c, _, stages, batches, lr_of, make_optimizer, _, seeds = simulation_inputs(2, overrides)
    want_states, _ = reference(2, overrides)
    _, _, summary = distributed(2, overrides, tmp_path)
    model = nn.Sequential(*stages)
    for stage, state in zip(stages, want_states):
        stage.load_state_dict(state)
    model.eval()
    x, y = windows(read_corpus(str(corpus))[1], 8)
    n = 2 * c.batch_size  # two batches of windows
    with torch.no_grad():
        logits = model(x[:n].long())
    want = F.cross_entropy(logits.reshape(-1, 256), y[:n].long().reshape(-1)).item()
    assert summary["val_loss"] == pytest.approx(want, rel=1e-6)
    assert summary["best_val_loss"] <= summary["val_loss"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "val_loss" in r]
    T = summary["steps"]
    assert steps == sorted(set(range(4, T, 4)) | {T // 2, T}), steps  # every 4 steps, each epoch, the end


def test_corpus_split_and_windows(tmp_path):
    """Sorted files, the last of every 20 counted from the end is validation; targets shift by one byte."""
    for name, text in [("b.txt", "BBBB"), ("a.txt", "AAAA"), ("sub/c.txt", "CCCCCC")]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    train, val = read_corpus(str(tmp_path))
    assert bytes(train) == b"AAAABBBB" and bytes(val) == b"CCCCCC"  # sorted: a.txt, b.txt, sub/c.txt
    x, y = windows(train, 3)
    assert [bytes(r) for r in x] == [b"AAA", b"ABB"] and [bytes(r) for r in y] == [b"AAA", b"BBB"]


@pytest.mark.parametrize("case,match", [
    ("missing", "no text corpus at"),
    ("binary", "is not UTF-8 text (byte 2): the corpus is damaged"),
    ("empty", "the validation files of the text corpus"),
])
def test_bad_corpus_is_one_clear_error(case, match, tmp_path):
    root = tmp_path / "corpus"
    if case != "missing":
        write_corpus(root)
        last = sorted(root.glob("*.txt"))[-1]
        last.write_bytes(b"ok\xff\xfe" if case == "binary" else b"")
    overrides = gpt_overrides(root) + COMMON + ["algo=fr", f"hydra.run.dir={tmp_path / 'run'}"]
    assert_one_clear_error(run_ranks(2, overrides), match)


@pytest.mark.parametrize("overrides,match", [
    (["model=mlp"], "model=mlp takes float features, but the data are token ids: use model=gpt"),
    (["data.seq_len=16"], "windows of data.seq_len=16 tokens are longer than model.block_size=8"),
    (["model.n_head=3"], "model.n_embd=16 must be a multiple of model.n_head=3"),
    (["data=synthetic", "data.shape=[8]"], "model=gpt reads token ids, but the data are float features"),
    (["data.augment=true"], "text has none: set data.augment=false"),
])
def test_gpt_refusals(overrides, match, corpus):
    group = overrides[0].split("=")[0]  # model=mlp, data=synthetic: the GPT's keys of that group go with it
    base = [o for o in gpt_overrides(corpus) if "." in group or not o.startswith(group + ".")]
    with pytest.raises(FRError, match=match.replace("(", r"\(").replace(")", r"\)")):
        validate(compose(base + overrides), world_size=1)


def test_seq_len_is_refused_for_images():
    with pytest.raises(FRError, match="data.seq_len=16 applies to data=python_docs only"):
        validate(compose(["data=synthetic", "+data.seq_len=16"]), world_size=1)


def test_resume_on_gpt_equals_uninterrupted(corpus, tmp_path):
    """Stop at step 6 of 18, resume: the ring's token ids, dropout RNG states, AdamW's moments and the
    clipping all continue exactly (parameters and per-step losses bit for bit)."""
    overrides = gpt_overrides(corpus) + COMMON + ["algo=fr", "optim=adamw", "optim.lr=0.01", "optim.clip_grad_norm=0.5",
                                                   "ckpt_every=3", "ckpt_keep=10"]
    straight = tmp_path / "straight"
    want_states, want_losses, _ = distributed(2, overrides, straight)
    resumed = tmp_path / "resumed"
    got_states, got_losses, summary = distributed(2, [*overrides, f"resume={checkpoint.step_dir(straight, 6)}"],
                                                  resumed)
    assert_states_equal(got_states, want_states)
    assert got_losses == want_losses[6:] and summary["status"] == "ok"


def test_bf16_fr_with_the_diagnostic_on_gpt_equals_reference(corpus, tmp_path):
    """bf16 links carry the (N, T, D) features, stage 0 keeps int64 ids; the diagnostic's passes (every 3
    steps) run on the transformer and leave training as the bf16 reference computes it."""
    overrides = gpt_overrides(corpus) + COMMON + ["algo=fr", "precision=bf16"]
    want_states, want_losses = reference(2, overrides)
    got_states, got_losses, _ = distributed(2, overrides + ["diag_every=3"], tmp_path)
    assert got_losses == want_losses
    assert_states_equal(got_states, want_states)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    sigmas = [r["sigma"] for r in rows if "sigma" in r]
    assert len(sigmas) == len(want_losses) // 3 and all(math.isfinite(s) for s in sigmas)


def test_a_users_token_dataset_trains_like_the_built_in_corpus(corpus, tmp_path):
    """data=custom whose samples are token windows with a target per position: the same GPT run as
    data=python_docs over the same windows (DataLoader workers against the in-memory path), bit for bit,
    and evaluated per token."""
    overrides = gpt_overrides(corpus) + COMMON + ["algo=fr"]
    custom = [o for o in overrides if not o.startswith("data")] + [
        "data=custom", "data._target_=tests.data.userdata.text", "data.classes=256", f"+data.args.root={corpus}",
        "+data.args.seq_len=8", "data.workers=1"]
    want_states, want_losses, want = distributed(2, overrides, tmp_path / "builtin")
    got_states, got_losses, got = distributed(2, custom, tmp_path / "custom")
    assert_states_equal(got_states, want_states)
    assert got_losses == want_losses and got["val_loss"] == want["val_loss"] and "test_acc" not in got
