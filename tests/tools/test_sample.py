"""Text from a trained language model (`python -m fr_dist.sample`), against a generation loop written here."""

from __future__ import annotations

import subprocess
import sys

import torch

from fr_dist.runtime import checkpoint
from fr_dist.tools import export, sample
from tests.support import COMMON, MLP, ROOT, distributed

PROMPT = "the quick "


def plain_greedy(model, prompt: bytes, tokens: int, window: int) -> str:
    """Each next byte the argmax of the last position's logits, the model seeing the last `window` bytes."""
    model.eval()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(tokens):
            ids.append(int(model(torch.tensor([ids[-window:]]))[0, -1].argmax()))
    return bytes(ids).decode("utf-8", errors="replace") + "\n"


def test_greedy_text_equals_a_plain_loop(gpt_run, capsys):
    """Over more bytes than the window (8): the context is cropped. Every way of naming the model agrees."""
    run_dir, _, _ = gpt_run
    model = export.plain_model(export.merge(checkpoint.latest(run_dir)))
    want = plain_greedy(model, PROMPT.encode(), 20, window=8)
    assert export.main([str(run_dir), "--out", str(run_dir / "model.pt")]) == 0
    capsys.readouterr()
    for path in (run_dir, checkpoint.latest(run_dir), run_dir / "model.pt"):
        assert sample.main([str(path), "--prompt", PROMPT, "--tokens", "20", "--temperature", "0"]) == 0
        assert capsys.readouterr().out == want, path
    # top-k 1 leaves the argmax only, whatever the temperature
    assert sample.main([str(run_dir), "--prompt", PROMPT, "--tokens", "20", "--top-k", "1", "--temperature", "2"]) == 0
    assert capsys.readouterr().out == want


def sampled(run_dir, capsys, *args: str) -> str:
    assert sample.main([str(run_dir), "--prompt", PROMPT, "--tokens", "40", *args]) == 0
    return capsys.readouterr().out


def test_the_seed_fixes_the_sampled_text(gpt_run, capsys):
    run_dir, _, _ = gpt_run
    first = sampled(run_dir, capsys, "--seed", "1")
    assert first.startswith(PROMPT)
    assert sampled(run_dir, capsys, "--seed", "1") == first
    assert sampled(run_dir, capsys, "--seed", "2") != first  # 40 bytes of a barely trained model
    assert sampled(run_dir, capsys, "--seed", "1", "--top-k", "5") == sampled(run_dir, capsys, "--seed", "1",
                                                                               "--top-k", "5")


def test_bad_arguments_are_one_line(gpt_run, tmp_path, capsys):
    run_dir, _, _ = gpt_run
    for args, match in [(["--tokens", "0"], "--tokens 0"), (["--prompt", ""], "--prompt is empty"),
                        (["--temperature", "-1"], "--temperature -1"), (["--top-k", "0"], "--top-k 0"),
                        (["--prompt", "\ud800"], "no text")]:
        assert sample.main([str(run_dir), *args]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("[sample] error: ") and match in err and err.count("\n") == 1, err
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    for path, match in [(tmp_path / "empty", "no complete checkpoint"), (tmp_path / "junk.pt", "cannot read")]:
        assert sample.main([str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("[sample] error: ") and match in err and err.count("\n") == 1, err


def test_a_classifier_is_refused(tmp_path):
    distributed(1, MLP + COMMON + ["algo=fr"], tmp_path)
    proc = subprocess.run([sys.executable, "-m", "fr_dist.sample", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[sample] error: "), proc.stderr
    assert "model=mlp model, not a language model" in lines[0]
